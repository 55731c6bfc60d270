"""Exports a saved speech model to a TFLite handoff bundle with on-device training signatures.

  bazel run //tflite_export:export -- --model_dir=runs/exp1/final_model \\
      --output_dir=runs/exp1/tflite [--quantize=int8] [--trainable=last_blocks:2] \\
      [--sparse_training=0.9 --mask_ratio=0.2]

Writes model.tflite (train/infer/transcribe/save/restore), vocab.txt, manifest.json and, with
--quantize=int8 or for a FedAQT model, model_int8.tflite; then checks the bundle against the
Keras model (see tflite_export/verify.py) and prints what it wrote.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app
from absl import flags

from fl_compression.importance import targets
from fl_compression.models import checkpoint
from tff_programs import flag_utils
from tff_programs import program_main
from tflite_export import bundle
from tflite_export import signatures
from tflite_export import verify

_MODEL_DIR = flags.DEFINE_string('model_dir', None,
                                 'Saved model to export (config.json + weights.npz).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Bundle directory (replaced if it holds '
                                  'an earlier bundle).')
_TRAINABLE = flags.DEFINE_string(
    'trainable', 'all', 'What `train` updates: all, last_blocks:N (the last N encoder blocks '
    'and the output layers), critical:N or ambient:N (the N most critical or ambient encoder '
    'blocks of --ranking), blocks:i,j,..., or a regular expression over variable names.')
_RANKING = flags.DEFINE_string('ranking', '', 'ranking.json of //tff_programs:layer_importance '
                               'for the model (for --trainable=critical:N or ambient:N).')
_OPTIMIZER = flags.DEFINE_enum('optimizer', 'adam', list(signatures.OPTIMIZERS),
                               'Optimizer of the train signature.')
_LEARNING_RATE = flags.DEFINE_float('learning_rate', 2e-4, 'Learning rate of `train`.')
_SPARSE_TRAINING = flags.DEFINE_float(
    'sparse_training', 0.0, 'ZeroFL: sparsity of the SWAT layers\' kernels in `train` and '
    '`infer` (top-k entries kept), in [0, 1); adds the `sparse_update` signature. 0: dense.')
_MASK_RATIO = flags.DEFINE_float('mask_ratio', 0.0, 'ZeroFL: `sparse_update` sends the top '
                                 '1 - sparse_training + mask_ratio of each SWAT kernel.')
_QUANTIZE = flags.DEFINE_string('quantize', 'none', 'int8: also write model_int8.tflite '
                                '(inference signatures, int8 weights).')
_DATA_DIR = flags.DEFINE_string('data_dir', 'data/embedded_corpus',
                                'Corpus whose test-clean utterances verify the bundle '
                                '(random inputs if absent).')
_VERIFY = flags.DEFINE_bool('verify', True, 'Check the bundle against the Keras model.')
_MEASURE_MEMORY = flags.DEFINE_bool('measure_memory', True,
                                    'Measure one train step in the interpreter.')


def _summary(manifest: dict, output_dir: str) -> str:
  lines = [f'Bundle {output_dir}']
  for name, entry in manifest['files'].items():
    lines.append(f'  {name:<18} {entry["bytes"]:>12,} bytes')
  lines.append('Signatures (Flex ops need the select-TF-ops runtime)')
  for name, sig in manifest['signatures'].items():
    inputs = ', '.join(f'{i["name"]} {i["dtype"]}{i["shape"]}' for i in sig['inputs'])
    flex = ', '.join(sig['flex_ops']) or 'none (builtins only)'
    lines.append(f'  {name:<10} ({inputs})\n             flex: {flex}')
  memory = manifest.get('memory')
  if memory:
    batch = memory['train_batch']
    lines.append(f'train step in the TFLite interpreter, batch {batch[0]} x {batch[1]} frames: '
                 f'{memory["train_step_seconds"]:.3f} s, peak RSS '
                 f'{memory["train_step_peak_rss_bytes"] / 2**20:,.0f} MiB, '
                 f'{(memory["train_step_peak_rss_bytes"] - memory["rss_loaded_bytes"]) / 2**20:,.0f}'
                 ' MiB above the loaded model (the rest is the Python process with TensorFlow); '
                 f'infer of {memory["infer_audio_seconds"]:.0f} s of audio: '
                 f'{memory["infer_seconds"]:.3f} s')
  verification = manifest.get('verification')
  if verification:
    lines.append(f'Verification on {verification["utterances"]} {verification["split"]} '
                 'utterances: all checks passed')
    for name, check in verification['checks'].items():
      lines.append(f'  {name:<34} {check["value"]:<12.4g} limit {check["limit"]:g}')
    for name in ('keras', 'tflite', 'int8'):
      if f'{name}_wer' in verification:
        lines.append(f'  WER {name:<30} {100 * verification[f"{name}_wer"]:.2f}%')
  return '\n'.join(lines)


def _trainable_spec(model_dir: str) -> str:
  """--trainable, with critical:N / ambient:N resolved to blocks:i,j of --ranking."""
  kind = _TRAINABLE.value.split(':', 1)[0]
  if kind not in ('critical', 'ambient'):
    if _RANKING.value:
      raise flag_utils.FlagError('--ranking applies to --trainable=critical:N or ambient:N')
    return _TRAINABLE.value
  try:
    config = checkpoint.load_config(model_dir)['model']
  except (OSError, ValueError) as e:
    raise flag_utils.FlagError(f'--model_dir={_MODEL_DIR.value}: {e}') from None
  try:
    ranking = (targets.load_ranking(flag_utils.resolve_path(_RANKING.value), config, 'ranking')
               if _RANKING.value else None)
    blocks = targets.target_blocks(_TRAINABLE.value,
                                   config.get('encoder', {}).get('num_blocks', 0), ranking,
                                   'trainable', 'ranking')
  except targets.TargetError as e:
    raise flag_utils.FlagError(str(e)) from None
  return 'blocks:' + ','.join(str(b) for b in sorted(blocks))


def run() -> None:
  for name in ('model_dir', 'output_dir'):
    if not flags.FLAGS[name].value:
      raise flag_utils.FlagError(f'--{name} is required')
  model_dir = flag_utils.resolve_path(_MODEL_DIR.value)
  output_dir = flag_utils.resolve_path(_OUTPUT_DIR.value)
  trainable = _trainable_spec(model_dir)
  try:
    options = bundle.ExportOptions(
        training=signatures.TrainingOptions(optimizer=_OPTIMIZER.value,
                                            learning_rate=_LEARNING_RATE.value,
                                            trainable=trainable,
                                            sparse_training=_SPARSE_TRAINING.value,
                                            mask_ratio=_MASK_RATIO.value),
        quantize=_QUANTIZE.value, measure_memory=_MEASURE_MEMORY.value,
        data_dir=flag_utils.resolve_path(_DATA_DIR.value))

    def verifier(bundle_dir, reference, int8_path, int8_reference):
      return verify.verify(bundle_dir, reference, options.data_dir, int8_path=int8_path,
                           int8_reference=int8_reference)

    manifest = bundle.export_bundle(model_dir, output_dir, options,
                                    log=lambda line: print(line, flush=True),
                                    verifier=verifier if _VERIFY.value else None)
  except signatures.ExportError as e:
    raise flag_utils.FlagError(str(e)) from None
  print(_summary(manifest, output_dir), flush=True)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
