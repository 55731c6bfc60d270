"""Evaluates a saved speech model on LibriSpeech-layout splits and prints the WER table;
with a baseline model, also the paired comparison on the same utterances.

  bazel run //tff_programs:evaluate -- --model_dir=runs/exp1/final_model \\
      --data_dir=data/embedded_corpus --domain=main \\
      --baseline_model_dir=checkpoints/conformer_ctc_tiny

`--domain` picks the embedded corpus's dev and test splits (main: dev-clean, test-clean;
short-form: dev-short, test-short); `--splits` names splits directly. `--output_json` gets the
table with every utterance's word errors (and the comparison, with a baseline).
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import json

from absl import app
from absl import flags

from fl_compression.data import corpus
from fl_compression.data import librispeech
from fl_compression.evaluation import bootstrap
from fl_compression.evaluation import speech_eval
from fl_compression.models import asr
from fl_compression.models import checkpoint
from tff_programs import flag_utils
from tff_programs import program_main

_MODEL_DIR = flags.DEFINE_string('model_dir', None, 'Saved model (config.json + weights.npz).')
_BASELINE_MODEL_DIR = flags.DEFINE_string(
    'baseline_model_dir', None, 'Optional: a second saved model; its WER is compared with '
    '--model_dir\'s on the same utterances (paired bootstrap 95% interval).')
_DATA_DIR = flags.DEFINE_string('data_dir', 'data/embedded_corpus',
                                'LibriSpeech-layout directory holding the splits.')
_DOMAIN = flags.DEFINE_enum('domain', corpus.MAIN, list(corpus.DOMAINS),
                            'Embedded corpus domain whose dev and test splits are evaluated.')
_SPLITS = flags.DEFINE_list('splits', None, 'Splits to evaluate (default: the --domain\'s dev '
                            'and test splits).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Utterances per inference batch.')
_STRICT_DATA = flags.DEFINE_bool('strict_data', False, 'Fail on the first bad utterance.')
_NUM_RESAMPLES = flags.DEFINE_integer('num_resamples', bootstrap.DEFAULT_RESAMPLES,
                                      'Bootstrap resamples of the comparison.')
_OUTPUT_JSON = flags.DEFINE_string('output_json', None, 'Also write the table as JSON here.')


def _load(flag) -> tuple:
  model_dir = flag_utils.resolve_path(flag.value)
  try:
    model, config = checkpoint.load_keras_model(model_dir)
  except (OSError, ValueError) as e:
    raise flag_utils.FlagError(f'--{flag.name}={flag.value}: {e}') from None
  if config['model'].get('name') not in asr.SPEECH_MODELS:
    raise flag_utils.FlagError(f'--{flag.name}={flag.value} holds a '
                               f'{config["model"].get("name")!r} model, not a speech model')
  return model_dir, model, config


def _evaluate(model, data_dir: str, splits: list[str]):
  try:
    return speech_eval.evaluate_splits(model, data_dir, splits, batch_size=_BATCH_SIZE.value,
                                       strict=_STRICT_DATA.value)
  except librispeech.CorpusError as e:
    raise flag_utils.FlagError(f'--data_dir={_DATA_DIR.value}: {e}') from None


def run() -> None:
  if not _MODEL_DIR.value:
    raise flag_utils.FlagError('--model_dir is required')
  flag_utils.require_positive('batch_size', _BATCH_SIZE.value)
  flag_utils.require_positive('num_resamples', _NUM_RESAMPLES.value)
  model_dir, model, config = _load(_MODEL_DIR)
  baseline = _load(_BASELINE_MODEL_DIR) if _BASELINE_MODEL_DIR.value else None
  data_dir = flag_utils.resolve_path(_DATA_DIR.value)
  domain = corpus.domain(_DOMAIN.value)
  splits = _SPLITS.value or [domain.dev_split, domain.test_split]
  results = _evaluate(model, data_dir, splits)
  print(f'Model {model_dir} (round {config.get("round", "?")}, '
        f'{config.get("algorithm", config.get("mode", "?"))})')
  print(speech_eval.format_table(results), flush=True)
  output = {split: dict(r.as_dict(), utterances=r.utterances.as_dict())
            for split, r in results.items()}
  if baseline is not None:
    baseline_dir, baseline_model, _ = baseline
    baseline_results = _evaluate(baseline_model, data_dir, splits)
    comparisons = {split: bootstrap.paired_bootstrap(
        baseline_results[split].utterances, results[split].utterances,
        num_resamples=_NUM_RESAMPLES.value) for split in splits}
    print(f'\nAgainst the baseline {baseline_dir} (same utterances; paired bootstrap, '
          f'{_NUM_RESAMPLES.value} resamples, 95% interval)')
    print(format_comparisons(comparisons), flush=True)
    for split, comparison in comparisons.items():
      output[split]['baseline'] = dict(
          baseline_results[split].as_dict(),
          utterances=baseline_results[split].utterances.as_dict())
      output[split]['comparison'] = comparison.as_dict()
  if _OUTPUT_JSON.value:
    with open(flag_utils.resolve_path(_OUTPUT_JSON.value), 'w') as f:
      json.dump(output, f, indent=1)


def format_comparisons(comparisons: dict[str, bootstrap.WerComparison]) -> str:
  lines = [f'{"split":<16} {"baseline WER":>12} {"WER":>7} {"absolute":>9} '
           f'{"relative [95% CI]":>28}']
  for split, c in comparisons.items():
    lines.append(f'{split:<16} {100 * c.baseline_wer:>11.2f}% {100 * c.system_wer:>6.2f}% '
                 f'{100 * c.absolute:>+8.2f}  {c.describe_relative():>28}')
  return '\n'.join(lines)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
