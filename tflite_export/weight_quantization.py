"""Weight-only integer quantization of a converted TFLite model, with FedAQT's quantizer.

`quantize_weights(model_content, kernels, bits)` stores every constant weight of a matrix
operator (FULLY_CONNECTED, BATCH_MATMUL, CONV_2D, DEPTHWISE_CONV_2D) that is one of the model's
weight matrices as int8 codes with a float32 scale per output channel (symmetric, narrow range:
`fl_compression.compression.aqt.quantize`), read by a DEQUANTIZE op; computation stays float32.
Given weights already on a `bits`-bit FedAQT grid, the stored codes are exactly the codes the
FedAQT clients trained with (TFLite's own dynamic-range quantization scales dense weights per
tensor and quantizes activations too, so it can keep neither).

A constant is a model weight when its values equal one of `kernels` (or its transpose, or with
the output axis moved first, as TFLite lays out dense and convolution weights); other
constants (the mel filterbank, positional tables) stay float32. The file shrinks by about 3/4 of
the quantized weights; at run time DEQUANTIZE materializes float weights once.
"""

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from fl_compression.compression import aqt

# Operator -> index of its weight input.
_WEIGHT_INPUTS = {
    schema.BuiltinOperator.FULLY_CONNECTED: 1,  # [out, in]
    schema.BuiltinOperator.CONV_2D: 1,  # [out, h, w, in]
    schema.BuiltinOperator.DEPTHWISE_CONV_2D: 1,  # [1, h, w, out]
    schema.BuiltinOperator.BATCH_MATMUL: 1,  # [..., in, out]
}


def _layouts(kernel: np.ndarray):
  """(values as TFLite may store the TF kernel, codes in TF layout -> that layout, the axis
  that TF's last axis (FedAQT's channel axis) becomes, or None for one scale)."""
  layouts = [(kernel, lambda c: c, kernel.ndim - 1)]
  if kernel.ndim >= 2:
    layouts.append((np.moveaxis(kernel, -1, 0), lambda c: np.moveaxis(c, -1, 0), 0))
  if kernel.ndim == 3 and kernel.shape[-1] == 1:
    # DepthwiseConv1D [k, channels, 1] -> DEPTHWISE_CONV_2D [1, 1, k, channels]; FedAQT's
    # channel axis is the multiplier (size 1): one scale.
    shape = (1, 1, kernel.shape[0], kernel.shape[1])
    layouts.append((kernel.reshape(shape), lambda c, shape=shape: c.reshape(shape), None))
  return layouts


def _opcode_index(model, builtin: int) -> int:
  for i, code in enumerate(model.operatorCodes):
    if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
      return i
  code = schema.OperatorCodeT()
  code.builtinCode = builtin
  code.deprecatedBuiltinCode = min(builtin, 127)
  code.version = 1
  model.operatorCodes.append(code)
  return len(model.operatorCodes) - 1


def quantize_weights(model_content: bytes, kernels: list[np.ndarray], bits: int
                     ) -> tuple[bytes, dict]:
  """The model with its weight matrices int8 (see the module docstring), and a summary:
  {'quantized': count, 'kernels': len(kernels), 'bits': bits, 'names': [...]}."""
  model = flatbuffer_utils.convert_bytearray_to_object(model_content)
  by_shape: dict[tuple, list] = {}
  for kernel in kernels:
    kernel = np.asarray(kernel, np.float32)
    for values, transform, axis in _layouts(kernel):
      by_shape.setdefault(tuple(values.shape), []).append((values, kernel, transform, axis))
  dequantize = _opcode_index(model, schema.BuiltinOperator.DEQUANTIZE)
  quantized_buffers: dict[int, tuple] = {}  # float buffer -> scales, axis, int8 buffer
  names = []
  for subgraph in model.subgraphs:
    replacements: dict[int, int] = {}
    new_operators = []
    for operator in subgraph.operators or []:
      code = model.operatorCodes[operator.opcodeIndex]
      builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
      if builtin not in _WEIGHT_INPUTS:
        continue
      operator.inputs = [int(i) for i in operator.inputs]  # Unpacked as a read-only array.
      position = _WEIGHT_INPUTS[builtin]
      tensor_index = operator.inputs[position]
      if tensor_index in replacements:
        operator.inputs[position] = replacements[tensor_index]
        continue
      tensor = subgraph.tensors[tensor_index]
      buffer = model.buffers[tensor.buffer] if tensor.buffer else None
      if (tensor.type != schema.TensorType.FLOAT32 or buffer is None or buffer.data is None
          or tensor.quantization is not None and tensor.quantization.scale is not None):
        continue
      if tensor.buffer not in quantized_buffers:
        values = np.frombuffer(bytes(buffer.data), np.float32).reshape(tensor.shape)
        match = next((m for m in by_shape.get(tuple(values.shape), [])
                      if np.array_equal(values, m[0])), None)
        if match is None:
          continue
        _, kernel, transform, axis = match
        q = aqt.quantize(kernel, bits)  # FedAQT's quantizer in TF layout, then TFLite's.
        int8_buffer = schema.BufferT()
        int8_buffer.data = np.ascontiguousarray(transform(q.codes.numpy()), np.int8).tobytes()
        model.buffers.append(int8_buffer)
        scales = np.atleast_1d(q.scales.numpy())
        quantized_buffers[tensor.buffer] = (scales, 0 if axis is None or scales.size == 1
                                            else axis, len(model.buffers) - 1)
      scales, axis, int8_buffer_index = quantized_buffers[tensor.buffer]
      int8_tensor = schema.TensorT()
      int8_tensor.shape = list(tensor.shape)
      int8_tensor.type = schema.TensorType.INT8
      int8_tensor.buffer = int8_buffer_index
      int8_tensor.name = tensor.name + b'/int8' if isinstance(tensor.name, bytes) else \
          f'{tensor.name}/int8'
      params = schema.QuantizationParametersT()
      params.scale = [float(x) for x in scales]
      params.zeroPoint = [0] * len(params.scale)
      params.quantizedDimension = axis
      int8_tensor.quantization = params
      subgraph.tensors.append(int8_tensor)
      float_tensor = schema.TensorT()
      float_tensor.shape = list(tensor.shape)
      float_tensor.type = schema.TensorType.FLOAT32
      float_tensor.buffer = 0
      float_tensor.name = tensor.name
      subgraph.tensors.append(float_tensor)
      op = schema.OperatorT()
      op.opcodeIndex = dequantize
      op.inputs = [len(subgraph.tensors) - 2]
      op.outputs = [len(subgraph.tensors) - 1]
      new_operators.append(op)
      replacements[tensor_index] = len(subgraph.tensors) - 1
      operator.inputs[position] = replacements[tensor_index]
      names.append(tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name)
    # Dequantize ops first: their inputs are constants, so any position before the
    # consumers keeps the operators in topological order.
    subgraph.operators = new_operators + list(subgraph.operators or [])
  # The float copy of a quantized weight goes unless another operator still reads it.
  read = {subgraph.tensors[int(i)].buffer for subgraph in model.subgraphs
          for op in subgraph.operators or [] for i in (op.inputs if op.inputs is not None else [])
          if int(i) >= 0}
  for buffer_index in quantized_buffers:
    if buffer_index not in read:
      model.buffers[buffer_index].data = None
  summary = {'quantized': len(quantized_buffers), 'kernels': len(kernels), 'bits': bits,
             'dequantize_ops': len(names), 'names': sorted(set(names))}
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), summary
