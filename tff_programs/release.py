"""Release managers of the training program: progress display, per-utterance errors and
final-model output."""

import json
import os
import time
from typing import Any, Callable, Optional

import tensorflow_federated as tff

from fl_compression.models import checkpoint


def flatten_metrics(value: Any) -> dict[str, Any]:
  """Flattens nested metrics into `{'a/b/c': leaf}`, as TFF's CSV release manager names them."""
  return dict(tff.program.structure_utils.flatten_with_name(value))


class ProgressReleaseManager(tff.program.ReleaseManager):
  """Prints one line per released round: round, chosen metrics, elapsed and estimated remaining.

  The estimate uses the mean wall time of the rounds this run has released so far, so a resumed
  run does not count the rounds it skipped.
  """

  def __init__(self, total_rounds: int, fields: dict[str, str],
               print_fn: Callable[[str], None] = print):
    self._total_rounds = total_rounds
    self._fields = fields
    self._print = print_fn
    self._start = time.monotonic()
    self._first_key: Optional[int] = None

  async def release(self, value, key: int) -> None:
    value = await tff.program.materialize_value(value)
    flat = flatten_metrics(value)
    if self._first_key is None:
      self._first_key = key - 1
    elapsed = time.monotonic() - self._start
    done = key - self._first_key
    remaining = (self._total_rounds - key) * elapsed / max(done, 1)
    parts = [f'round {key:>{len(str(self._total_rounds))}}/{self._total_rounds}']
    for label, name in self._fields.items():
      if name in flat:
        parts.append(f'{label} {float(flat[name]):.4g}')
    parts.append(f'elapsed {_duration(elapsed)}')
    parts.append(f'remaining ~{_duration(remaining)}')
    self._print(' | '.join(parts))


class EvaluationLineReleaseManager(tff.program.ReleaseManager):
  """Prints one line per evaluation: held-out loss, and WER/CER per split for speech tasks."""

  def __init__(self, print_fn: Callable[[str], None] = print):
    self._print = print_fn

  async def release(self, value, key: int) -> None:
    flat = flatten_metrics(await tff.program.materialize_value(value))
    parts = ['evaluation ' + ('of the initial model' if key == 0 else f'after round {key}')]
    if 'eval/loss' in flat:
      parts.append(f'held-out loss {float(flat["eval/loss"]):.4g}')
    splits = dict.fromkeys(n.split('/')[1] for n in flat if n.startswith('transcription/'))
    for split in splits:
      for kind in ('wer', 'cer'):
        rate = float(flat[f'transcription/{split}/{kind}'])
        parts.append(f'{kind.upper()} {split} {100 * rate:.2f}%')
    self._print(' | '.join(parts))


class JsonFileReleaseManager(tff.program.ReleaseManager):
  """Writes each released value as `<directory>/round_<key>.json` (replaced atomically).

  The training program releases per-utterance word errors here, for paired comparisons.
  """

  def __init__(self, directory: str):
    self._directory = directory

  async def release(self, value, key: int) -> None:
    value = await tff.program.materialize_value(value)
    os.makedirs(self._directory, exist_ok=True)
    path = os.path.join(self._directory, f'round_{int(key):04d}.json')
    with open(path + '.tmp', 'w') as f:
      json.dump(value, f, default=_json_scalar)
    os.replace(path + '.tmp', path)

  def read(self) -> dict[int, Any]:
    """Every released value by key."""
    if not os.path.isdir(self._directory):
      return {}
    found = {}
    for name in sorted(os.listdir(self._directory)):
      if name.startswith('round_') and name.endswith('.json'):
        with open(os.path.join(self._directory, name)) as f:
          found[int(name[len('round_'):-len('.json')])] = json.load(f)
    return found


def _json_scalar(value):
  if hasattr(value, 'item'):
    return value.item()
  raise TypeError(f'not JSON serializable: {value!r}')


class ModelDirReleaseManager(tff.program.ReleaseManager):
  """Writes released `ModelWeights` as a model directory (config.json + weights.npz), with
  `initial_weights` as initial_weights.npz when the released model has their shapes."""

  def __init__(self, model_dir: str, model_config: dict[str, Any],
               metadata: Optional[dict[str, Any]] = None, initial_weights=None):
    self._model_dir = model_dir
    self._model_config = model_config
    self._metadata = dict(metadata or {})
    self._initial_weights = initial_weights

  async def release(self, value, key: int) -> None:
    """`value`: ModelWeights of the configured model, or `(model_config, weights)`."""
    model_config = self._model_config
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], dict):
      model_config, value = value
    weights = await tff.program.materialize_value(value)
    if not isinstance(weights, tff.learning.models.ModelWeights):
      weights = tff.learning.models.ModelWeights(*weights)
    initial = self._initial_weights
    shapes = lambda w: [tuple(getattr(v, 'shape', ())) for v in  # noqa: E731
                        list(w.trainable) + list(w.non_trainable)]
    if initial is not None and shapes(initial) != shapes(weights):
      initial = None  # A reduced (pruned) model: its initial weights are not the dense ones.
    checkpoint.save_model(self._model_dir, model_config, weights,
                          metadata={**self._metadata, 'round': int(key)},
                          initial_weights=initial)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  minutes, seconds = divmod(seconds, 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m{seconds:02d}s' if hours else f'{minutes}m{seconds:02d}s'
