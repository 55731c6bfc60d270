"""Converts an `OnDeviceModel` to TFLite: the training model and the int8 inference model.

- `to_tflite`: every signature, trainable variables as TFLite resource variables, builtins
  where TFLite has them and select TF ops (Flex) for the rest. Variables no signature assigns
  (the frozen part of the model) become constants of the file.
- `to_int8_inference`: `infer` and `transcribe` only, builtins only, weights stored as int8 by
  TFLite's dynamic-range quantization (hybrid kernels quantize activations on the fly).
  `snap_to_aqt_grid` first puts a FedAQT model's weight matrices on the integer grid its
  clients trained on: at 8 bits TFLite's symmetric per-channel scale (max|w| / 127) is the
  FedAQT scale, so the stored codes are the FedAQT codes.
"""

import tempfile

import tensorflow as tf

from fl_compression.compression import aqt
from fl_compression.compression import omc
from tflite_export import signatures


def _converter(module: tf.Module, names) -> tuple[tf.lite.TFLiteConverter, str]:
  directory = tempfile.mkdtemp(prefix='tflite_export_')
  tf.saved_model.save(module, directory, signatures={
      name: getattr(module, name).get_concrete_function() for name in names})
  return tf.lite.TFLiteConverter.from_saved_model(directory), directory


def _convert(converter: tf.lite.TFLiteConverter, directory: str) -> bytes:
  try:
    return converter.convert()
  finally:
    tf.io.gfile.rmtree(directory)


def to_tflite(module: signatures.OnDeviceModel, names=signatures.SIGNATURES) -> bytes:
  converter, directory = _converter(module, names)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                         tf.lite.OpsSet.SELECT_TF_OPS]
  converter.experimental_enable_resource_variables = True
  return _convert(converter, directory)


def to_int8_inference(module: signatures.OnDeviceModel) -> bytes:
  converter, directory = _converter(module, signatures.INFERENCE_SIGNATURES)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  return _convert(converter, directory)


def snap_to_aqt_grid(model: tf.keras.Model, bits: int) -> int:
  """Replaces each trainable weight matrix (rank >= 2) by its FedAQT `bits`-bit values
  (symmetric, per output channel); returns how many variables changed."""
  count = 0
  for variable in model.trainable_variables:
    if omc.is_weight_matrix(variable.shape):
      variable.assign(aqt.dequantize(aqt.quantize(variable, bits)))
      count += 1
  return count
