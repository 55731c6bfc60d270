"""Ranks a trained Conformer's encoder blocks: ambient (resettable) or critical.

  bazel run //tff_programs:layer_importance -- --model_dir=checkpoints/conformer_ctc_tiny \\
      --data_dir=$PWD/data/embedded_corpus --output_dir=$PWD/runs/importance

Evaluates the model intact, then with each encoder block reset to its initial values
(re-initialization; the model directory must hold `initial_weights.npz`) and to fresh draws
from its initializers (`--draws` re-randomizations), and with each module of each block
re-initialized alone, without retraining (`fl_compression/importance/`). Writes `ranking.json`,
`ranking.csv`, `heatmap.png`, `signatures.png` (how far each module of each block moved from
its initial weights) and `report.md`. Evaluations are kept in `ablation_state.json` as they are
made: a killed run started again continues.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import hashlib
import json
import sys

from absl import app
from absl import flags
import numpy as np

from fl_compression.data import features
from fl_compression.data import librispeech
from fl_compression.evaluation import speech_eval
from fl_compression.importance import layers
from fl_compression.importance import ranking
from fl_compression.importance import signatures
from fl_compression.models import checkpoint
from fl_compression.models import registry
from tff_programs import flag_utils
from tff_programs import program_main

_MODEL_DIR = flags.DEFINE_string('model_dir', None, 'Trained model with initial_weights.npz.')
_DATA_DIR = flags.DEFINE_string('data_dir', 'data/embedded_corpus', 'LibriSpeech-layout corpus.')
_SPLIT = flags.DEFINE_string('split', 'dev-clean', 'Split the resets are evaluated on.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where the ranking and report go.')
_DRAWS = flags.DEFINE_integer('draws', 3, 'Re-randomization draws per block.')
_MAX_UTTERANCES = flags.DEFINE_integer('max_utterances', 0,
                                       'Evaluate on the split\'s first N utterances (0: all).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Utterances per inference batch.')


def _load_model(model_dir: str):
  """(config, trained values, initial values); one-line errors name --model_dir."""
  try:
    config = checkpoint.load_config(model_dir)
    trained = checkpoint.load_weights(model_dir)
  except (OSError, ValueError) as e:
    raise flag_utils.FlagError(f'--model_dir={_MODEL_DIR.value}: {e}') from None
  try:
    initial = checkpoint.load_weights(model_dir, checkpoint.INITIAL_WEIGHTS_FILE)
  except OSError:
    raise flag_utils.FlagError(
        f'--model_dir={_MODEL_DIR.value}: {checkpoint.INITIAL_WEIGHTS_FILE} is missing; '
        're-initialization needs the exact initial weights (pretraining saves them)') from None
  return config['model'], trained, initial


def run() -> None:
  for flag in ('model_dir', 'output_dir'):
    if not flags.FLAGS[flag].value:
      raise flag_utils.FlagError(f'--{flag} is required')
  flag_utils.require_positive('draws', _DRAWS.value)
  flag_utils.require_positive('batch_size', _BATCH_SIZE.value)
  if _MAX_UTTERANCES.value < 0:
    raise flag_utils.FlagError(f'--max_utterances must be 0 (all) or positive, got '
                               f'{_MAX_UTTERANCES.value}')
  model_dir = flag_utils.resolve_path(_MODEL_DIR.value)
  output_dir = flag_utils.check_writable_dir('output_dir',
                                             flag_utils.resolve_path(_OUTPUT_DIR.value))
  config, trained, initial = _load_model(model_dir)
  model = registry.build_keras_model(config)
  variables = model.trainable_variables + model.non_trainable_variables
  names = [v.name for v in variables]
  values = list(trained.trainable) + list(trained.non_trainable)
  initial_values = list(initial.trainable) + list(initial.non_trainable)
  for label, found in (('weights.npz', values), (checkpoint.INITIAL_WEIGHTS_FILE, initial_values)):
    if [tuple(v.shape) for v in variables] != [tuple(np.shape(w)) for w in found]:
      raise flag_utils.FlagError(f'--model_dir={_MODEL_DIR.value}: {label} does not fit the '
                                 'model config')
  try:
    count = layers.num_blocks(names)
  except layers.LayerError as e:
    raise flag_utils.FlagError(f'--model_dir={_MODEL_DIR.value}: {e}') from None
  if not count:
    raise flag_utils.FlagError(f'--model_dir={_MODEL_DIR.value} holds a '
                               f'{config.get("name")!r} model with no encoder blocks to rank')
  data_dir = flag_utils.resolve_path(_DATA_DIR.value)
  split_dir = os.path.join(data_dir, _SPLIT.value)
  try:
    utterances = librispeech.scan_split(
        split_dir, features.CharTokenizer().alphabet,
        decoded_stamps=librispeech.decoded_stamps_dir(data_dir)).utterances
  except librispeech.CorpusError as e:
    raise flag_utils.FlagError(f'--data_dir={_DATA_DIR.value}: {e}') from None
  if not utterances:
    raise flag_utils.FlagError(f'--data_dir={_DATA_DIR.value}: {split_dir} has no usable '
                               'utterances')
  if _MAX_UTTERANCES.value:
    utterances = utterances[:_MAX_UTTERANCES.value]
  flag_utils.ensure_writable_dir('output_dir', output_dir)

  tokenizer = features.CharTokenizer()
  dataset = speech_eval.utterance_dataset(utterances, features.FeatureConfig(),
                                          _BATCH_SIZE.value).cache()

  def evaluate(candidate):
    for variable, value in zip(variables, candidate):
      variable.assign(value)
    hypotheses = speech_eval.transcribe(model, dataset, tokenizer)
    return speech_eval.score(utterances, hypotheses).utterances

  seed = int(config.get('seed', 0))
  rerandomized = []
  for k in range(_DRAWS.value):
    # The same initializers with other seeds: fresh draws of every variable.
    draw = registry.build_keras_model(dict(config, seed=seed + 1000 + k))
    rerandomized.append([v.numpy() for v in draw.trainable_variables + draw.non_trainable_variables])
  with open(os.path.join(model_dir, checkpoint.WEIGHTS_FILE), 'rb') as f:
    weights_hash = hashlib.sha256(f.read()).hexdigest()[:16]
  settings = {'weights': weights_hash, 'split': _SPLIT.value, 'draws': _DRAWS.value,
              'utterances': len(utterances)}
  try:
    ablation = ranking.run(names, values, initial_values, rerandomized, evaluate,
                           state_path=os.path.join(output_dir, 'ablation_state.json'),
                           settings=settings, log=lambda line: print(line, flush=True))
  except ValueError as e:
    raise flag_utils.FlagError(f'--output_dir={_OUTPUT_DIR.value}: {e}') from None
  result = ranking.ranking(ablation, signatures.signatures(names, values, initial_values))
  result['model'] = config  # Users of the ranking check that it is of their model.
  with open(os.path.join(output_dir, 'ranking.json'), 'w') as f:
    json.dump(result, f, indent=1)
  ranking.write_csv(os.path.join(output_dir, 'ranking.csv'), result)
  figures = ranking.plot(result, output_dir)
  report = ranking.render(result, {
      'command': ' '.join(['bazel run //tff_programs:layer_importance --'] + sys.argv[1:]),
      'model_dir': _MODEL_DIR.value, 'split': _SPLIT.value, 'draws': _DRAWS.value}, figures)
  with open(os.path.join(output_dir, 'report.md'), 'w') as f:
    f.write(report)
  print(f'\n{report}\nranking: {os.path.join(output_dir, "ranking.json")}', flush=True)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
