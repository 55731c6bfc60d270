"""Converts an `OnDeviceModel` to TFLite: the training model and the int8 inference model.

- `to_tflite`: every signature, trainable variables as TFLite resource variables, builtins
  where TFLite has them and select TF ops (Flex) for the rest. Variables no signature assigns
  (the frozen part of the model) become constants of the file.
- `to_int8_inference`: `infer` and `transcribe` only, builtins only, weight matrices stored as
  int8 codes with per-channel scales (FedAQT's quantizer at 8 bits, or at a FedAQT model's own
  bit width, so the codes are those its clients trained with), float32 computation.

`python -m tflite_export.convert '{"model_dir": ..., "output_path": ...}'` converts a saved
model with the default training options in a fresh process (`convert_in_subprocess`): the
converter's peak memory (about 19 GB for `conformer_s`) is returned to the system when it
exits.
"""

import contextlib
import json
import sys
import tempfile

import tensorflow as tf

try:  # Keras 2.14's switch for its SavedModel extras (what `model.save(save_traces=False)` sets).
  from keras.src.saving.legacy.saved_model import utils as keras_saved_model_utils
  _without_keras_traces = lambda: keras_saved_model_utils.keras_option_scope(  # noqa: E731
      save_traces=False)
except ImportError:  # Another Keras: saving traces the layers too (slower, same file).
  _without_keras_traces = contextlib.nullcontext

from fl_compression.benchmarks import fresh_process
from fl_compression.compression import aqt
from fl_compression.compression import omc
from tflite_export import signatures
from tflite_export import weight_quantization


def _converter(module: tf.Module, names) -> tuple[tf.lite.TFLiteConverter, str]:
  directory = tempfile.mkdtemp(prefix='tflite_export_')
  # The converter reads the signatures only. Without the scope, saving also traces the call
  # functions of every Keras layer the module holds (Keras's own SavedModel extras): about
  # two thirds of a conversion's time, for nothing the file contains.
  with _without_keras_traces():
    tf.saved_model.save(module, directory, signatures={
        name: getattr(module, name).get_concrete_function() for name in names})
  return tf.lite.TFLiteConverter.from_saved_model(directory), directory


def _convert(converter: tf.lite.TFLiteConverter, directory: str) -> bytes:
  try:
    return converter.convert()
  finally:
    tf.io.gfile.rmtree(directory)


def to_tflite(module: signatures.OnDeviceModel, names=None) -> bytes:
  """Every signature of `module` (`module.signature_names`), or `names`."""
  converter, directory = _converter(module, names or module.signature_names)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                         tf.lite.OpsSet.SELECT_TF_OPS]
  converter.experimental_enable_resource_variables = True
  return _convert(converter, directory)


def to_int8_inference(module: signatures.OnDeviceModel, bits: int = 8) -> tuple[bytes, dict]:
  """`infer` and `transcribe` with the weight matrices stored as `bits`-bit codes (int8
  storage, per-channel float32 scales; `weight_quantization`). Snaps the module's model to that
  grid first (`snap_to_aqt_grid`), so the float model it leaves is the one the file computes."""
  snap_to_aqt_grid(module.model, bits)
  converter, directory = _converter(module, signatures.INFERENCE_SIGNATURES)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  kernels = [v.numpy() for v in module.model.trainable_variables
             if omc.is_weight_matrix(v.shape)]
  return weight_quantization.quantize_weights(_convert(converter, directory), kernels, bits)


def snap_to_aqt_grid(model: tf.keras.Model, bits: int) -> int:
  """Replaces each trainable weight matrix (rank >= 2) by its FedAQT `bits`-bit values
  (symmetric, per output channel); returns how many variables changed."""
  count = 0
  for variable in model.trainable_variables:
    if omc.is_weight_matrix(variable.shape):
      variable.assign(aqt.dequantize(aqt.quantize(variable, bits)))
      count += 1
  return count


def convert_saved_model(model_dir: str, output_path: str) -> dict:
  """Converts `model_dir` (default `TrainingOptions`) to `output_path`; returns timings."""
  import time  # pylint: disable=g-import-not-at-top

  from fl_compression.models import checkpoint  # pylint: disable=g-import-not-at-top

  model, _ = checkpoint.load_keras_model(model_dir)
  module = signatures.OnDeviceModel(model)
  started = time.perf_counter()
  content = to_tflite(module)
  seconds = time.perf_counter() - started
  with open(output_path, 'wb') as f:
    f.write(content)
  return {'conversion_seconds': seconds, 'num_mel_bins': module.num_mel_bins}


def convert_in_subprocess(model_dir: str, output_path: str, timeout: float = 3600) -> dict:
  return fresh_process.run_module(
      'tflite_export.convert', {'model_dir': model_dir, 'output_path': output_path},
      timeout=timeout, what=f'conversion of {model_dir}')

if __name__ == '__main__':
  from fl_compression.models import asr  # pylint: disable=g-import-not-at-top,unused-import
  print(json.dumps(convert_saved_model(**json.loads(sys.argv[1]))), flush=True)
