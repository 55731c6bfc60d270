"""Seconds to build every computation of a run's stages, in this (fresh) process.

  .venv/bin/python tools/build_time.py ALGORITHM MODEL [ROUNDS]

ALGORITHM is `fedavg` or `fp` (50% column pruning by magnitude); MODEL a named model
(`tiny`, `conformer_s`, ...) at its initialization, on the embedded corpus's main domain
(`data/embedded_corpus`, generated first by `bazel run //tff_programs:corpus`). Prints one JSON
line: the algorithm's `staged()` and each stage's `build_stage` in seconds, and their total
(what a run pays in its first round and at its stage changes). Pair two with `farm-bench`.
"""
import json
import os
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

from fl_compression.learning import algorithms  # pylint: disable=g-import-not-at-top
from tff_programs import backends  # pylint: disable=g-import-not-at-top
from tff_programs import experiment_runs  # pylint: disable=g-import-not-at-top

backends.disable_unmanaged_default_context()
_OPTIONS = {'fedavg': {}, 'fp': {'pattern': 'column', 'importance': 'magnitude',
                                 'sparsity': 0.5}}


def main(algorithm: str, model: str, rounds: int = 3) -> dict:
  task, _ = experiment_runs.load_speech_task(
      '', os.path.join(_ROOT, 'data', 'embedded_corpus'), 8, 0, model)
  started = time.monotonic()
  training = algorithms.get(algorithm).staged(algorithms.BuildContext(
      model_config=task.model_config, make_model_fn=task.make_model_fn,
      hparams=algorithms.Hyperparameters(client_optimizer='adam', client_learning_rate=2e-4),
      total_rounds=rounds, options=_OPTIONS[algorithm]))
  seconds = {'staged': time.monotonic() - started}
  keys = []
  for round_num in range(1, rounds + 1):
    if training.stage_key(round_num) not in keys:
      keys.append(training.stage_key(round_num))
  for i, key in enumerate(keys):
    stage_started = time.monotonic()
    training.build_stage(key)
    seconds[f'stage {i}'] = time.monotonic() - stage_started
  seconds['total'] = time.monotonic() - started
  return {'algorithm': algorithm, 'model': model, 'seconds': seconds}


if __name__ == '__main__':
  if len(sys.argv) not in (3, 4) or sys.argv[1] not in _OPTIONS:
    sys.exit(f'usage: {sys.argv[0]} {{{",".join(_OPTIONS)}}} MODEL [ROUNDS]')
  print(json.dumps(main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))), flush=True)
