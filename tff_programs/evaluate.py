"""Evaluates a saved speech model on LibriSpeech-layout splits and prints the WER table.

  bazel run //tff_programs:evaluate -- --model_dir=runs/exp1/final_model \\
      --data_dir=data/embedded_corpus --splits=dev-clean,test-clean
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import json

from absl import app
from absl import flags

from fl_compression.data import librispeech
from fl_compression.evaluation import speech_eval
from fl_compression.models import asr
from fl_compression.models import checkpoint
from tff_programs import flag_utils
from tff_programs import program_main

_MODEL_DIR = flags.DEFINE_string('model_dir', None, 'Saved model (config.json + weights.npz).')
_DATA_DIR = flags.DEFINE_string('data_dir', 'data/embedded_corpus',
                                'LibriSpeech-layout directory holding the splits.')
_SPLITS = flags.DEFINE_list('splits', ['dev-clean', 'test-clean'], 'Splits to evaluate.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Utterances per inference batch.')
_STRICT_DATA = flags.DEFINE_bool('strict_data', False, 'Fail on the first bad utterance.')
_OUTPUT_JSON = flags.DEFINE_string('output_json', None, 'Also write the table as JSON here.')


def run() -> None:
  if not _MODEL_DIR.value:
    raise flag_utils.FlagError('--model_dir is required')
  flag_utils.require_positive('batch_size', _BATCH_SIZE.value)
  model_dir = flag_utils.resolve_path(_MODEL_DIR.value)
  data_dir = flag_utils.resolve_path(_DATA_DIR.value)
  try:
    model, config = checkpoint.load_keras_model(model_dir)
  except (OSError, ValueError) as e:
    raise flag_utils.FlagError(f'--model_dir={_MODEL_DIR.value}: {e}') from None
  if config['model'].get('name') not in asr.SPEECH_MODELS:
    raise flag_utils.FlagError(f'--model_dir={_MODEL_DIR.value} holds a '
                               f'{config["model"].get("name")!r} model, not a speech model')
  try:
    results = speech_eval.evaluate_splits(model, data_dir, _SPLITS.value,
                                          batch_size=_BATCH_SIZE.value,
                                          strict=_STRICT_DATA.value)
  except librispeech.CorpusError as e:
    raise flag_utils.FlagError(f'--data_dir={_DATA_DIR.value}: {e}') from None
  print(f'Model {model_dir} (round {config.get("round", "?")}, '
        f'{config.get("algorithm", config.get("mode", "?"))})')
  print(speech_eval.format_table(results), flush=True)
  if _OUTPUT_JSON.value:
    with open(flag_utils.resolve_path(_OUTPUT_JSON.value), 'w') as f:
      json.dump({split: r.as_dict() for split, r in results.items()}, f, indent=2)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
