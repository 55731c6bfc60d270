"""FedAQT quantization math: symmetric per-channel integer weights, activations, STE.

Pure TF functions (the FedAQT process wraps them):

- `quantize(w, bits)`: symmetric, per output channel (last axis) for weight matrices, per
  tensor for vectors: `scale = max|w| / (2^(bits-1) - 1)`, `q = clip(round(w / scale))` in
  `[-(2^(bits-1) - 1), 2^(bits-1) - 1]` (narrow range, zero exact), 4 to 8 bits. This is the
  grid of TF's `fake_quant_with_min_max_vars_per_channel(min=-max|w|, max=max|w|,
  narrow_range=True)`, which the tests use as the reference.
- Stochastic rounding (`quantize(..., seed=...)`) for the client's requantization after each
  local step: a step smaller than half a quantum (2e-4 Adam steps against 8-bit quanta of
  about 2e-3) always rounds back to the same code, so round-to-nearest freezes the weight
  matrices; rounding up with probability equal to the fraction keeps the step in expectation.
- `fake_quant(x, bits)`: dequantize(quantize(x)) in the forward pass, identity gradient
  (straight-through), for weights and for activations (per tensor, dynamic range).
- `pack`: the integer codes offset to unsigned and packed `bits` wide, so a 4-bit model is
  sent and held at 4 bits per weight plus one float32 scale per channel.
"""

import dataclasses
from typing import Optional

import tensorflow as tf

from fl_compression.compression import float_format as ff

MIN_BITS, MAX_BITS = 4, 8


def _check_bits(bits: int) -> None:
  if not MIN_BITS <= bits <= MAX_BITS:
    raise ValueError(f'{bits}-bit quantization is outside the supported {MIN_BITS}..{MAX_BITS}')


def levels(bits: int) -> int:
  """The largest code magnitude: 127 for 8 bits."""
  return 2 ** (bits - 1) - 1


@dataclasses.dataclass
class Quantized:
  codes: tf.Tensor  # int8 (or int32), values in [-levels, levels].
  scales: tf.Tensor  # float32 [channels] (per channel) or [] (per tensor).
  bits: int

  def nbytes(self) -> int:
    """Bytes when held or sent: `bits` per code, packed, plus float32 scales."""
    return (ff.packed_words(int(tf.size(self.codes)), self.bits) * 4 +
            int(tf.size(self.scales)) * 4)


def _max_abs(w: tf.Tensor, per_channel: bool) -> tf.Tensor:
  if per_channel:
    return tf.reduce_max(tf.abs(w), axis=list(range(w.shape.rank - 1)))
  return tf.reduce_max(tf.abs(w))


def quantize(w: tf.Tensor, bits: int, per_channel: bool = True,
             seed: Optional[tf.Tensor] = None) -> Quantized:
  """Symmetric quantization; per last-axis channel for rank >= 2 when `per_channel`.

  Rounds to nearest, or stochastically when a `seed` ([2] int, for a stateless draw) is
  given: `floor(w / scale + u)` with `u ~ U[0, 1)`, which is `w / scale` in expectation.
  """
  _check_bits(bits)
  w = tf.convert_to_tensor(w, tf.float32)
  per_channel = per_channel and w.shape.rank >= 2
  top = levels(bits)
  max_abs = _max_abs(w, per_channel)
  scales = tf.where(max_abs > 0, max_abs / top, tf.ones_like(max_abs))
  steps = w / scales
  if seed is None:
    rounded = tf.round(steps)
  else:
    rounded = tf.floor(steps + tf.random.stateless_uniform(tf.shape(w), seed))
  codes = tf.clip_by_value(rounded, -top, top)
  return Quantized(tf.cast(codes, tf.int8), scales, bits)


def dequantize(q: Quantized) -> tf.Tensor:
  return tf.cast(q.codes, tf.float32) * q.scales


def fake_quant(x: tf.Tensor, bits: int, per_channel: bool = True) -> tf.Tensor:
  """Quantize-dequantize forward, identity backward (straight-through estimator)."""
  x = tf.convert_to_tensor(x, tf.float32)
  return x + tf.stop_gradient(dequantize(quantize(x, bits, per_channel)) - x)


def pack(q: Quantized) -> tf.Tensor:
  """The codes as `bits`-wide unsigned fields, densely packed in uint32 words."""
  unsigned = tf.cast(tf.cast(q.codes, tf.int32) + levels(q.bits), tf.uint32)
  return ff.pack(unsigned, q.bits)


def unpack(words: tf.Tensor, scales: tf.Tensor, bits: int, shape) -> Quantized:
  unsigned = ff.unpack(words, bits, shape)
  return Quantized(tf.cast(tf.cast(unsigned, tf.int32) - levels(bits), tf.int8), scales, bits)


class QuantizedInput(tf.keras.layers.Wrapper):
  """Runs `layer` on its input fake-quantized per tensor to `bits` (straight-through): the
  FedAQT client's activation quantization at the inputs of the Conformer's dense layers."""

  def __init__(self, layer: tf.keras.layers.Layer, bits: int, **kwargs):
    _check_bits(bits)
    super().__init__(layer, name=f'aqt_{layer.name}', **kwargs)
    self.bits = bits

  def call(self, inputs):
    return self.layer(fake_quant(inputs, self.bits, per_channel=False))
