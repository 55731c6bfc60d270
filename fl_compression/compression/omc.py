"""Online model compression math: compressed variables, the per-variable transform, selection.

Pure TF functions with no TFF in them (the OMC learning process wraps them):

- `compress(x, fmt)`: a float32 variable -> `Compressed` (bit-packed `fmt` codes plus the two
  scalars of the per-variable transform); `decompress` gives `s * Q(x) + b` back as float32.
- The transform `V' = s * V + b` minimizes the squared reconstruction error
  `sum (s * Q(x) + b - x)^2` over the two scalars: ordinary least squares of x on Q(x),
  `s = cov(Q, x) / var(Q)`, `b = mean(x) - s * mean(Q)` (s = 1, b = 0 when Q is constant).
- `is_weight_matrix`: only variables of rank >= 2 are compressed (biases, norms and other
  vectors stay float32).
- `select_compressed`: which weight matrices a client compresses in a round (partial variable
  quantization): a stateless draw from a (round, client) seed, so a resumed run draws the same.
"""

import dataclasses
from typing import Sequence

import tensorflow as tf

from fl_compression.compression import float_format as ff


@dataclasses.dataclass
class Compressed:
  """One compressed variable: `bits`-wide codes packed in uint32 words, and its transform."""

  words: tf.Tensor  # uint32 [ceil(n / 32) * bits]
  scale: tf.Tensor  # float32 []
  offset: tf.Tensor  # float32 []
  shape: tuple[int, ...]

  def nbytes(self) -> int:
    """Bytes this variable occupies when held or sent: packed codes plus the two scalars."""
    return int(self.words.shape[0]) * 4 + 2 * 4


def fit_transform(original: tf.Tensor, quantized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """(s, b) minimizing sum((s * quantized + b - original)^2).

  Centred moments in float32 (it runs after every client step, where float64 copies cost
  more than the format's rounding); on 4M-value matrices s and b agree with a float64
  least-squares fit to about 1e-7 (tested).
  """
  x = tf.reshape(tf.cast(quantized, tf.float32), [-1])
  y = tf.reshape(tf.cast(original, tf.float32), [-1])
  x_mean, y_mean = tf.reduce_mean(x), tf.reduce_mean(y)
  dx = x - x_mean
  variance = tf.reduce_mean(tf.square(dx))
  covariance = tf.reduce_mean(dx * (y - y_mean))
  scale = tf.where(variance > 0, covariance / tf.where(variance > 0, variance, 1.0), 1.0)
  offset = tf.where(variance > 0, y_mean - scale * x_mean, 0.0)
  return scale, offset


def compress(x: tf.Tensor, fmt: ff.FloatFormat, transform: bool = True) -> Compressed:
  x = tf.convert_to_tensor(x, tf.float32)
  if fmt.exponent_bits == 8:
    codes = ff.encode(x, fmt)
    values = ff.decode(codes, fmt)
  else:  # About half the ops of the two lines above.
    values = ff.quantize(x, fmt)
    codes = ff.encode_values(values, fmt)
  if transform:
    scale, offset = fit_transform(x, values)
  else:
    scale, offset = tf.constant(1.0), tf.constant(0.0)
  return Compressed(ff.pack(codes, fmt.bits), scale, offset, tuple(int(d) for d in x.shape))


def decompress(c: Compressed, fmt: ff.FloatFormat) -> tf.Tensor:
  values = ff.decode(ff.unpack(c.words, fmt.bits, c.shape), fmt)
  return c.scale * values + c.offset


def is_weight_matrix(shape: Sequence[int]) -> bool:
  return len(shape) >= 2


def select_compressed(num_matrices: int, fraction: float, seed: tf.Tensor) -> tf.Tensor:
  """Boolean [num_matrices]: exactly round(fraction * num_matrices) True, a stateless draw
  without replacement from `seed` ([2] int, e.g. (round, client)), usable inside TFF's TF
  computations."""
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f'the compressed fraction {fraction} is outside [0, 1]')
  count = int(round(fraction * num_matrices))
  scores = tf.random.stateless_uniform([num_matrices], seed=seed)
  chosen = tf.math.top_k(scores, k=count).indices
  return tf.scatter_nd(chosen[:, None], tf.ones([count], tf.bool), [num_matrices])
