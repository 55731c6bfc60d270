"""Decompress-on-use client training: dense kernels held compressed, decoded only while used.

This is the client step a device runs for OMC and FedAQT, where the learning processes
(`process.py`) simulate its arithmetic with float32 Keras variables kept on the format's grid.
A model from `build_model(config, codec, learning_rate)` has every dense layer replaced by a
`CompressedDense`, which holds its kernel only in the codec's packed form (uint32 words plus
the codec's scalars, non-trainable variables) and never as a float32 variable:

- **Forward**: the kernel is decoded right before its product (a control dependency on the
  layer input keeps the executor from decoding every layer up front), used, and released.
- **Backward** (`tf.custom_gradient`): the kernel is decoded *again* instead of being kept from
  the forward pass; the layer computes the input gradient and its kernel gradient, applies the
  SGD step `W - lr * dW` at once and recompresses the result into its packed variables, so a
  kernel gradient also lives only while its layer's backward runs: no float copy of the model
  or of its full gradient is ever needed. Plain SGD makes the fused update equal to the usual
  "all gradients, then update" step, because a layer's backward reads only its own kernel
  (each compressed layer must be called once per step, which holds for every model of the
  registry).
- **FedAQT** (`activation_bits`): the layer input is quantized per tensor and the backward
  pass keeps the int8 codes (not the float input) for the kernel gradient; the input gradient
  is straight-through, as in the simulation's `aqt.QuantizedInput`.

The tape reaches each layer's backward function through a trainable float32 scalar,
`update_anchor` (value 0, gradient 0): the step asks for the gradients of the float variables
and of the anchors, and applies SGD to the float variables only (`sgd_step`).

**Measured** (`reports/compression/`, `conformer_l`, 4 utterances of 4 s): the parameters held
shrink as the format says (FedAQT int8 0.29x), and no full-model float gradient exists, but
the step's own tensors are activations (about 1 GiB at that batch), which the weight format
does not touch: FedAQT's tensor memory (held + step) is 0.81x dense, 0.48x with one utterance
per step. The process RSS is at parity with dense, because the codec runs as shared
XLA-compiled functions (`codec_functions`); inlined per layer it was 1.1-1.5x.

Covered: the kernels of all dense layers (feed-forward, attention projections, convolution
module pointwise layers, subsampling projection, output heads, joint network). Biases, norms,
the subsampling and depthwise convolution kernels, LSTM and embedding weights stay float32;
`held_parameter_bytes` counts what the model holds.
"""

import functools
from typing import Callable, Union

import numpy as np
import tensorflow as tf

from fl_compression.compression import aqt
from fl_compression.compression import codecs
from fl_compression.models import pruned_dense
from fl_compression.models import registry

Codec = Union[codecs.OmcCodec, codecs.AqtCodec]


class CompressedDense(tf.keras.layers.Layer):
  """A dense layer whose kernel exists only compressed (see the module docstring)."""

  def __init__(self, units: int, codec: Codec, learning_rate: float, activation=None,
               use_bias: bool = True, activation_bits: int = 0, **kwargs):
    super().__init__(**kwargs)
    if activation_bits:
      if not aqt.MIN_BITS <= activation_bits <= aqt.MAX_BITS:
        raise ValueError(f'{self.name}: {activation_bits}-bit activations are outside '
                         f'{aqt.MIN_BITS}..{aqt.MAX_BITS}')
    self.units = int(units)
    self.codec = codec
    self.learning_rate = float(learning_rate)
    self.activation = tf.keras.activations.get(activation)
    self.use_bias = use_bias
    self.activation_bits = int(activation_bits)

  def build(self, input_shape):
    self.kernel_shape = (int(input_shape[-1]), self.units)
    # The float initial kernel exists only while this layer is built.
    initial = self.codec.encode(tf.keras.initializers.GlorotUniform()(self.kernel_shape))
    self.stored = {
        name: self.add_weight(f'kernel_{name}', value.shape, dtype=value.dtype, trainable=False,
                              initializer=lambda shape, dtype, value=value: value)
        for name, value in initial.items()}
    self.update_anchor = self.add_weight('update_anchor', (), initializer='zeros')
    self.bias = (self.add_weight('bias', (self.units,), initializer='zeros')
                 if self.use_bias else None)
    super().build(input_shape)

  def kernel(self) -> tf.Tensor:
    """The decoded float32 kernel (a transient tensor)."""
    decode, _ = codec_functions(self.codec, self.kernel_shape)
    return decode(codecs.Encoded((k, v.read_value()) for k, v in self.stored.items()))

  def assign_kernel(self, kernel: tf.Tensor) -> list:
    """Compresses `kernel` into the packed variables; returns the assign ops."""
    _, encode = codec_functions(self.codec, self.kernel_shape)
    encoded = encode(tf.convert_to_tensor(kernel, tf.float32))
    return [self.stored[k].assign(v) for k, v in encoded.items()]

  def call(self, x):
    fan_in, units = self.kernel_shape
    bits = self.activation_bits

    @tf.custom_gradient
    def product(x, anchor):
      if bits:
        saved = aqt.quantize(x, bits, per_channel=False)  # int8 codes kept for the backward.
        used = aqt.dequantize(saved)
      else:
        saved = used = x
      with tf.control_dependencies([x]):
        kernel = self.kernel()
      y = tf.tensordot(used, kernel, 1)

      def grad(dy, variables=None):
        with tf.control_dependencies([dy]):
          kernel = self.kernel()  # Decoded again, not kept from the forward pass.
        dx = tf.tensordot(dy, kernel, [[dy.shape.rank - 1], [1]])
        inputs = aqt.dequantize(saved) if bits else saved
        dw = tf.matmul(tf.reshape(inputs, [-1, fan_in]), tf.reshape(dy, [-1, units]),
                       transpose_a=True)
        with tf.control_dependencies([dx]):
          assigns = self.assign_kernel(kernel - self.learning_rate * dw)
        with tf.control_dependencies(assigns):
          grads = (tf.identity(dx), tf.zeros_like(anchor))
        if variables is None:
          return grads
        return grads, [None] * len(variables)

      return y, grad

    y = product(x, self.update_anchor)
    if self.bias is not None:
      y = y + self.bias
    return self.activation(y)


def codec_functions(codec: Codec, shape: tuple[int, ...]) -> tuple[Callable, Callable]:
  """`codec`'s decode of a kernel of `shape` and its encode, each one XLA-compiled function
  that every layer with that kernel shape (every layer, for the encode) calls: the codec's
  chain of integer ops runs fused (no full-size temporaries per op), and the step graph holds
  a call per layer instead of a copy of the codec's ops per layer. Inlined, those copies made
  TF's step graph and executor state 1.45-1.49x the dense step's whole RSS on `conformer_l`
  for OMC and 1.09x for FedAQT (the committed report before this change, commit c1dec97).
  Cached for the process's lifetime: one entry per codec and kernel shape of the models
  built."""
  return _decode_function(codec, tuple(int(d) for d in shape)), _encode_function(codec)


@functools.lru_cache(maxsize=None)
def _decode_function(codec: Codec, shape: tuple[int, ...]) -> Callable:
  return tf.function(lambda encoded: codec.decode(encoded, shape), jit_compile=True)


@functools.lru_cache(maxsize=None)
def _encode_function(codec: Codec) -> Callable:
  return tf.function(codec.encode, jit_compile=True)


def dense_factory(codec: Codec, learning_rate: float, activation_bits: int = 0
                  ) -> pruned_dense.DenseFactory:
  """`pruned_dense.building_dense` factory of `CompressedDense` layers."""
  def make(units, name, activation=None, use_bias=True):
    return CompressedDense(units, codec, learning_rate, activation=activation,
                           use_bias=use_bias, activation_bits=activation_bits, name=name)
  return make


def build_model(model_config: dict, codec: Codec, learning_rate: float,
                activation_bits: int = 0) -> tf.keras.Model:
  """The registry's model with every dense layer a `CompressedDense`."""
  if 'pruning' in model_config:
    raise ValueError('decompress-on-use covers dense models; the model config has a pruning '
                     'plan (its PrunedDense layers would stay float32)')
  with pruned_dense.building_dense(dense_factory(codec, learning_rate, activation_bits)):
    return registry.build_keras_model(model_config)


def compressed_layers(model: tf.keras.Model) -> list[CompressedDense]:
  return [m for m in model.submodules if isinstance(m, CompressedDense)]


def held_parameter_bytes(model: tf.keras.Model) -> int:
  """Bytes of the variables the model holds (packed words at 4 bytes per uint32), anchors
  excluded."""
  anchors = {layer.update_anchor.ref() for layer in compressed_layers(model)}
  return sum(int(np.prod(v.shape, dtype=np.int64)) * v.dtype.size
             for v in model.variables if v.ref() not in anchors)


def parameter_count(model: tf.keras.Model) -> int:
  """Parameters the model represents: each compressed kernel counts its decoded size."""
  layers = compressed_layers(model)
  internal = {v.ref() for layer in layers for v in [layer.update_anchor, *layer.stored.values()]}
  return (sum(int(np.prod(v.shape, dtype=np.int64)) for v in model.variables
              if v.ref() not in internal) +
          sum(int(np.prod(layer.kernel_shape, dtype=np.int64)) for layer in layers))


def sgd_step(model: tf.keras.Model, loss_fn: Callable[[tf.keras.Model, dict], tf.Tensor],
             learning_rate: float) -> Callable[[dict], tf.Tensor]:
  """A `tf.function` running one plain SGD step of `loss_fn` on a batch: the compressed
  layers update themselves in the backward pass, the float variables after it."""
  layers = compressed_layers(model)
  for layer in layers:
    if layer.learning_rate != learning_rate:
      raise ValueError(f'{layer.name} was built with learning rate {layer.learning_rate}, '
                       f'the step uses {learning_rate}')
  anchors = [layer.update_anchor for layer in layers]
  anchor_refs = {a.ref() for a in anchors}
  floats = [v for v in model.trainable_variables if v.ref() not in anchor_refs]

  @tf.function
  def step(batch):
    with tf.GradientTape() as tape:
      loss = loss_fn(model, batch)
    grads = tape.gradient(loss, floats + anchors)
    # Plain SGD applied directly: Keras' SGD optimizer would add a momentum slot per variable
    # even at momentum 0, a second copy of the model that plain SGD does not need.
    updates = []
    for variable, grad in zip(floats, grads[:len(floats)]):
      if grad is None:
        continue
      if isinstance(grad, tf.IndexedSlices):
        updates.append(variable.scatter_sub(
            tf.IndexedSlices(learning_rate * grad.values, grad.indices, grad.dense_shape)))
      else:
        updates.append(variable.assign_sub(learning_rate * grad))
    with tf.control_dependencies(updates):
      return tf.identity(loss)

  return step
