"""Ships a pretraining run's best model under checkpoints/ with its model card.

  bazel run //tff_programs:ship_model -- --run_dir=$PWD/runs/pretrain_tiny \\
      --output_dir=$PWD/checkpoints/conformer_ctc_tiny --name=conformer_ctc_tiny

Copies the run's `final_model/` (config.json, weights.npz, initial_weights.npz), `curve.csv`,
`signatures.csv` and `movement.csv`, evaluates the model on the main domain's dev and test
splits, and writes `MODEL_CARD.md`: the model, its training data and budget (steps, minutes,
the plateau rule and whether it stopped on it), the curve's milestones, the WER table and the
files' checksums.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import csv
import hashlib
import shutil

from absl import app
from absl import flags

from fl_compression.data import corpus
from fl_compression.evaluation import speech_eval
from fl_compression.models import checkpoint
from fl_compression.evaluation import plateau as plateau_lib
from tff_programs import flag_utils
from tff_programs import program_main

_RUN_DIR = flags.DEFINE_string('run_dir', None, 'A //tff_programs:pretrain --root_output_dir.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where the shipped model goes.')
_NAME = flags.DEFINE_string('name', None, 'The model\'s name in its card.')
_DATA_DIR = flags.DEFINE_string('data_dir', 'data/embedded_corpus', 'The corpus it trained on.')
_COMMAND = flags.DEFINE_string('command', '', 'The pretraining command, for the card.')


def _shown_path(path: str) -> str:
  """`path` relative to the directory `bazel run` was started from."""
  return os.path.relpath(path, os.environ.get('BUILD_WORKING_DIRECTORY', os.getcwd()))


def _sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def run() -> None:
  for flag in ('run_dir', 'output_dir', 'name'):
    if not flags.FLAGS[flag].value:
      raise flag_utils.FlagError(f'--{flag} is required')
  run_dir = flag_utils.resolve_path(_RUN_DIR.value)
  model_dir = os.path.join(run_dir, 'final_model')
  curve_path = os.path.join(run_dir, 'curve.csv')
  for path in (model_dir, curve_path,
               os.path.join(model_dir, checkpoint.INITIAL_WEIGHTS_FILE)):
    if not os.path.exists(path):
      raise flag_utils.FlagError(f'--run_dir={_RUN_DIR.value}: {path} is missing (not a '
                                 'finished pretraining run)')
  with open(curve_path) as f:
    curve = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
  model, config = checkpoint.load_keras_model(model_dir)
  data_dir = flag_utils.resolve_path(_DATA_DIR.value)
  domain = corpus.domain(corpus.MAIN)
  results = speech_eval.evaluate_splits(model, data_dir, [domain.dev_split, domain.test_split])
  output_dir = flag_utils.ensure_writable_dir('output_dir',
                                              flag_utils.resolve_path(_OUTPUT_DIR.value))
  for name in (checkpoint.CONFIG_FILE, checkpoint.WEIGHTS_FILE, checkpoint.INITIAL_WEIGHTS_FILE):
    shutil.copy(os.path.join(model_dir, name), os.path.join(output_dir, name))
  for name in ('curve.csv', 'signatures.csv', 'movement.csv'):
    if os.path.exists(os.path.join(run_dir, name)):
      shutil.copy(os.path.join(run_dir, name), os.path.join(output_dir, name))
  manifest = corpus.read_manifest(data_dir) or {}
  main = manifest.get('domains', {}).get(corpus.MAIN, {})
  card = _card(config, model.count_params(), curve, results, main, output_dir)
  with open(os.path.join(output_dir, 'MODEL_CARD.md'), 'w') as f:
    f.write(card)
  print(card, flush=True)


def _card(config, parameters, curve, results, main, output_dir) -> str:
  encoder = config['model']['encoder']
  best = min(curve, key=lambda r: r['dev_wer'])
  last = curve[-1]
  milestones = [curve[i] for i in sorted({0, len(curve) // 4, len(curve) // 2,
                                          (3 * len(curve)) // 4, len(curve) - 1})]
  train = main.get('train_speakers')
  utterances = main.get('utterances', {}).get(corpus.TRAIN_SPLIT)
  lines = [
      f'# {_NAME.value}', '',
      f'A Conformer-CTC of {encoder["num_blocks"]} blocks of dimension {encoder["model_dim"]} '
      f'({encoder["num_heads"]} heads, convolution kernel {encoder["conv_kernel_size"]}, '
      f'GroupNorm with {encoder["num_groups"]} groups; {parameters:,} parameters, character '
      f'vocabulary of {config["model"]["vocab_size"]} symbols with blank = 0), trained '
      '**centrally on the server** on the embedded corpus\'s main domain `train-clean-100` '
      + (f'({len(train)} speakers, {utterances:,} utterances; corpus fingerprint '
         f'`{main.get("fingerprint")}`)' if train else '') + '. It is the dense starting point '
      'of the federated methods.', '',
      'Files: `config.json`, `weights.npz` and `initial_weights.npz` (the weights training '
      'started from, same keys; `fl_compression.models.checkpoint`), `curve.csv` (step, mean '
      'loss, dev WER/CER, cumulative seconds), `signatures.csv` (numerical signatures of '
      'each module and block at each evaluation) and, where training wrote it, `movement.csv` '
      '(how far each block moved from its initial weights, relative to their norm).', '',
      '| file | sha256 |', '| --- | --- |']
  for name in sorted(os.listdir(output_dir)):
    if name != 'MODEL_CARD.md' and os.path.isfile(os.path.join(output_dir, name)):
      lines.append(f'| `{name}` | `{_sha256(os.path.join(output_dir, name))}` |')
  points = [(int(r['step']), r['dev_wer']) for r in curve]
  plateaued = plateau_lib.plateau_reached(points)
  stop = ('it stopped on the dev plateau rule: over the last quarter of the steps, the best '
          'dev WER improved on the best before them by less than 1% relative' if plateaued else
          'the plateau rule (the best dev WER of the last quarter of the steps less than 1% '
          'relative below the best before them) had not been met when its budget ended')
  lines += ['', f'Trained {int(last["step"]):,} steps in {last["elapsed_seconds"] / 60:.0f} '
            'minutes of wall time on 2 CPU cores (summed over resumed invocations); '
            f'{stop}. The shipped weights are those of step {int(best["step"]):,}, the lowest '
            f'dev WER ({100 * best["dev_wer"]:.2f}%). Produced by:', '', '```sh',
            _COMMAND.value or '(command not recorded)', '```', '',
            'Dev WER over training: ' + ', '.join(
                f'{100 * r["dev_wer"]:.2f}% (step {int(r["step"]):,}, '
                f'{r["elapsed_seconds"] / 60:.0f} min)' for r in milestones) + '.', '',
            'Word error rates of the shipped weights (`bazel run //tff_programs:evaluate -- '
            f'--model_dir={_shown_path(output_dir)}`):', '', '```',
            speech_eval.format_table(results), '```', '',
            '`dev-clean` has the training speakers with new sentences; `test-clean` has '
            'speakers who never appear in training.', '']
  return '\n'.join(lines)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
