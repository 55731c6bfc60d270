"""TFLite benchmark: dense against 50% federated-pruned models, in the TFLite interpreter.

  bazel run //tflite_export:benchmark -- --output_dir=$PWD/runs/tflite_benchmark

For each pair (the shipped `tiny` model and its 50% column-pruned reduction; `conformer_s`
with random weights and its 50% reduction), converts the on-device model (all five
signatures, Adam) and measures in a fresh process per model (`tflite_export/memory.py`):
file size, stored weight bytes, `train` step time and steady-state peak RSS on a batch of
4 x 4 s, and `infer` and `transcribe` time on 10 s of audio. Reduced models are pruned once
by weight magnitude (`fl_compression.pruning.reduce.prune_once`), as the first round of
federated pruning prunes. Writes `results.json` and `report.md` with pruned/dense ratios; a
benchmark started again keeps the measurements in `results.json` and runs the rest.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import json

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.models import asr
from fl_compression.models import checkpoint
from fl_compression.models import registry
from fl_compression.pruning import reduce as reduce_lib
from tff_programs import flag_utils
from tff_programs import program_main
from tflite_export import convert
from tflite_export import flatbuffer
from tflite_export import memory

_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'runs/tflite_benchmark', 'Report directory.')
_TINY_MODEL_DIR = flags.DEFINE_string('tiny_model_dir', 'checkpoints/conformer_ctc_tiny',
                                      'The dense tiny model.')
_LARGE_MODEL = flags.DEFINE_string('large_model', 'conformer_s',
                                   'Named configuration of the second pair (empty: skip).')
_SPARSITY = flags.DEFINE_float('sparsity', 0.5, 'Sparsity of the reduced models.')
_PATTERN = flags.DEFINE_string('pattern', 'column', 'Pruning pattern of the reduced models.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 4, 'Utterances per train step.')
_SECONDS = flags.DEFINE_float('seconds', 4.0, 'Audio seconds per training utterance.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed train steps after the first.')

_METRICS = (  # key, header, format, scale
    ('parameters', 'parameters', '{:,.0f}', 1),
    ('file_bytes', 'file MB', '{:.2f}', 1e-6),
    ('weight_bytes', 'stored weights MB', '{:.2f}', 1e-6),
    ('train_step_seconds', 'train step s', '{:.3f}', 1),
    ('train_step_peak_rss_bytes', 'train step peak RSS MiB', '{:,.0f}', 2**-20),
    ('train_working_bytes', 'train working MiB', '{:,.0f}', 2**-20),
    ('infer_seconds', 'infer 10 s audio, s', '{:.3f}', 1),
    ('transcribe_seconds', 'transcribe 10 s audio, s', '{:.3f}', 1),
)


def _models():
  """(pair name, dense (config, weights), reduced (config, weights)) for each pair."""
  tiny_dir = flag_utils.resolve_path(_TINY_MODEL_DIR.value)
  sources = [('tiny', checkpoint.load_config(tiny_dir)['model'],
              checkpoint.load_weights(tiny_dir))]
  if _LARGE_MODEL.value:
    config = asr.named_config(_LARGE_MODEL.value)
    model = registry.build_keras_model(config)
    sources.append((_LARGE_MODEL.value, config, tff.learning.models.ModelWeights(
        [v.numpy() for v in model.trainable_variables],
        [v.numpy() for v in model.non_trainable_variables])))
    del model
  for name, config, weights in sources:
    reduced = reduce_lib.prune_once(config, weights, _PATTERN.value, _SPARSITY.value)
    yield name, (config, weights), reduced


def _measure(config, weights, directory: str, label: str) -> dict:
  model_dir = os.path.join(directory, label)
  checkpoint.save_model(model_dir, config, weights)
  path = os.path.join(directory, f'{label}.tflite')
  # Conversion and measurement each in a fresh process (the converter's memory peak).
  converted = convert.convert_in_subprocess(model_dir, path)
  with open(path, 'rb') as f:
    content = f.read()
  result = memory.measure_in_subprocess(
      path, batch_size=_BATCH_SIZE.value, seconds=_SECONDS.value, steps=_STEPS.value,
      vocab_size=int(config['vocab_size']), num_mel_bins=converted['num_mel_bins'])
  result.update(
      parameters=int(sum(np.prod(w.shape) for w in weights.trainable)),
      weight_bytes=flatbuffer.constant_bytes_by_type(content).get('FLOAT32', 0),
      conversion_seconds=converted['conversion_seconds'],
      flex_ops=sorted(flatbuffer.signature_ops(content)['train'].flex),
      train_working_bytes=result['train_step_peak_rss_bytes'] - result['rss_loaded_bytes'])
  return result


def _report(results: dict) -> str:
  lines = ['# TFLite export: dense against federated-pruned models', '',
           f'Command: `bazel run //tflite_export:benchmark -- --output_dir={_OUTPUT_DIR.value}`'
           f'  ', f'Machine: {os.cpu_count()} CPU cores; TFLite interpreter of TF '
           f'{tf.__version__} (Python), Flex delegate for the training ops.', '',
           f'Each model is one fresh process. Train: Adam on a batch of {_BATCH_SIZE.value} x '
           f'{_SECONDS.value:g} s (random features, 20 labels), median of {_STEPS.value} steps '
           'after the first; *peak RSS* is the high-water mark of those steps (reset after the '
           'first, allocating one), *working* is that peak minus the RSS with the model loaded '
           '(the Python process with TensorFlow imported is about 0.5 GB of the peak). Reduced '
           f'models: {_SPARSITY.value:.0%} {_PATTERN.value} sparsity, pruned once by weight '
           'magnitude. *Stored weights* are the float32 constants of the file (the initial '
           'values of the variables and of the Adam slots, identical zero slots stored once).',
           '']
  header = ['model', 'variant'] + [h for _, h, _, _ in _METRICS]
  lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for pair, runs in results.items():
    dense = runs['dense']
    for variant in ('dense', 'pruned'):
      run = runs[variant]
      cells = [pair, variant]
      for key, _, fmt, scale in _METRICS:
        value = run.get(key)
        cell = fmt.format(value * scale) if value is not None else '-'
        if variant == 'pruned' and value and dense.get(key):
          cell += f' ({value / dense[key]:.2f}x)'
        cells.append(cell)
      lines.append('| ' + ' | '.join(cells) + ' |')
  lines += ['', '`infer` after `train` in the same interpreter: ' + '; '.join(
      f'{pair} {variant}: {runs[variant].get("infer_after_train")}'
      for pair, runs in results.items() for variant in ('dense', 'pruned'))]
  lines += ['', 'Flex ops of `train`: ' + '; '.join(
      f'{pair} {variant}: {", ".join(runs[variant]["flex_ops"])}'
      for pair, runs in results.items() for variant in ('dense', 'pruned'))]
  return '\n'.join(lines) + '\n'


def run() -> None:
  output_dir = flag_utils.ensure_writable_dir('output_dir',
                                              flag_utils.resolve_path(_OUTPUT_DIR.value))
  results_path = os.path.join(output_dir, 'results.json')
  results = {}
  if os.path.isfile(results_path):  # A benchmark started again keeps what it measured.
    with open(results_path) as f:
      results = json.load(f)
  # The converted models stay in <output_dir>/models for inspection.
  directory = os.path.join(output_dir, 'models')
  os.makedirs(directory, exist_ok=True)
  for pair, dense, reduced in _models():
    results.setdefault(pair, {})
    for variant, (config, weights) in (('dense', dense), ('pruned', reduced)):
      if variant in results[pair]:
        continue
      print(f'{pair} {variant}: converting and measuring ...', flush=True)
      results[pair][variant] = _measure(config, weights, directory, f'{pair}_{variant}')
      run_result = results[pair][variant]
      print(f'  {run_result["file_bytes"] / 1e6:.2f} MB, train step '
            f'{run_result["train_step_seconds"]:.3f} s, peak '
            f'{run_result["train_step_peak_rss_bytes"] / 2**20:,.0f} MiB, infer 10 s '
            f'{run_result["infer_seconds"]:.3f} s; infer after train: '
            f'{run_result.get("infer_after_train")}', flush=True)
      with open(results_path, 'w') as f:
        json.dump(results, f, indent=2)
  report = _report(results)
  with open(os.path.join(output_dir, 'report.md'), 'w') as f:
    f.write(report)
  print(report)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
