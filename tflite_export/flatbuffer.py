"""Reads a converted TFLite model: the operators each signature runs and the stored weights.

A signature runs its subgraph and every subgraph its control-flow operators (WHILE, IF,
CALL_ONCE) reach; its Flex operators (`Flex<TensorFlow op>`, custom operators run by the
select-TF-ops runtime) are what the app must link the Flex runtime for.
"""

import collections
import dataclasses

from tensorflow.lite.python import schema_py_generated as schema

_BUILTIN_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items()
                  if not name.startswith('_')}
_TYPE_NAMES = {code: name for name, code in vars(schema.TensorType).items()
               if not name.startswith('_')}
_SUBGRAPH_FIELDS = ('condSubgraphIndex', 'bodySubgraphIndex', 'thenSubgraphIndex',
                    'elseSubgraphIndex', 'initSubgraphIndex', 'subgraphIndex')
FLEX_PREFIX = 'Flex'


@dataclasses.dataclass
class SignatureOps:
  builtin: dict[str, int]  # BUILTIN_NAME -> count
  flex: dict[str, int]  # TensorFlow op name (without the Flex prefix) -> count
  custom: dict[str, int]  # other custom ops

  @property
  def builtin_only(self) -> bool:
    return not self.flex and not self.custom


def _load(model_content: bytes) -> schema.ModelT:
  return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_content, 0))


def _op_name(model: schema.ModelT, operator) -> str:
  code = model.operatorCodes[operator.opcodeIndex]
  builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
  if builtin == schema.BuiltinOperator.CUSTOM:
    return 'CUSTOM:' + code.customCode.decode()
  return _BUILTIN_NAMES[builtin]


def _reachable(model: schema.ModelT, index: int, seen: set[int]) -> set[int]:
  if index in seen:
    return seen
  seen.add(index)
  for operator in model.subgraphs[index].operators or []:
    options = operator.builtinOptions
    for field in _SUBGRAPH_FIELDS:
      if options is not None and hasattr(options, field):
        _reachable(model, getattr(options, field), seen)
  return seen


def signature_ops(model_content: bytes) -> dict[str, SignatureOps]:
  """Signature key -> the operators it runs, counted over every subgraph it reaches."""
  model = _load(model_content)
  result = {}
  for signature in model.signatureDefs or []:
    counts = collections.Counter(
        _op_name(model, op) for index in _reachable(model, signature.subgraphIndex, set())
        for op in model.subgraphs[index].operators or [])
    builtin, flex, custom = {}, {}, {}
    for name, count in sorted(counts.items()):
      if name.startswith('CUSTOM:' + FLEX_PREFIX):
        flex[name[len('CUSTOM:' + FLEX_PREFIX):]] = count
      elif name.startswith('CUSTOM:'):
        custom[name[len('CUSTOM:'):]] = count
      else:
        builtin[name] = count
    result[signature.signatureKey.decode()] = SignatureOps(builtin, flex, custom)
  return result


def constant_bytes_by_type(model_content: bytes) -> dict[str, int]:
  """Bytes of the constant tensors stored in the file, by element type (FLOAT32, INT8, ...)."""
  model = _load(model_content)
  totals: collections.Counter = collections.Counter()
  seen_buffers = set()
  for subgraph in model.subgraphs:
    for tensor in subgraph.tensors or []:
      data = model.buffers[tensor.buffer].data if tensor.buffer else None
      if data is None or tensor.buffer in seen_buffers:
        continue
      seen_buffers.add(tensor.buffer)
      totals[_TYPE_NAMES[tensor.type]] += len(data)
  return dict(totals)


def int8_weights(model_content: bytes) -> list[tuple[str, 'np.ndarray']]:
  """(name, values) of every int8 constant with quantization scales, dequantized
  (`code * scale` along its quantized dimension): the weights a quantized model stores."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  model = _load(model_content)
  found, seen_buffers = [], set()
  for subgraph in model.subgraphs:
    for tensor in subgraph.tensors or []:
      data = model.buffers[tensor.buffer].data if tensor.buffer else None
      quantization = tensor.quantization
      if (data is None or tensor.type != schema.TensorType.INT8 or quantization is None or
          quantization.scale is None or tensor.buffer in seen_buffers):
        continue
      seen_buffers.add(tensor.buffer)
      codes = np.frombuffer(bytes(data), np.int8).reshape(tensor.shape).astype(np.float32)
      scale = np.asarray(quantization.scale, np.float32)
      if scale.size > 1:
        shape = [1] * codes.ndim
        shape[quantization.quantizedDimension] = -1
        scale = scale.reshape(shape)
      found.append((tensor.name.decode(), codes * scale))
  return found
