"""Low-bit floating-point formats S1E{e}M{m} in TF integer ops, and their bit packing.

A format has 1 sign bit, `e` exponent bits (bias 2^(e-1) - 1) and `m` mantissa bits, laid out
as IEEE 754 does, so S1E5M10 is float16 and S1E8M7 is bfloat16 bit for bit, and S1E5M2 /
S1E4M3 round as float8 e5m2 / e4m3 do on finite values in range. Encoding works on the float32
bit pattern with integer ops only (TF's CPU kernels flush float32 subnormals, integer ops
do not care):

- rounding: to nearest, ties to even, at the format's quantum (gradual underflow: below the
  smallest normal the quantum is that of the subnormals, 2^(1 - bias - m));
- overflow: values beyond the largest finite value, and +-inf, saturate to +-max (the top
  exponent code is reserved as in IEEE, so max = (2 - 2^-m) * 2^bias);
- NaN stays NaN (a quiet NaN code), so a diverged client stays visible;
- decoding is exact. With e = 8 the format's subnormals are float32 subnormals, which TF's CPU
  kernels flush to zero when they compute with them.

`pack`/`unpack` store `bits`-wide codes densely in uint32 words: N values take
ceil(N / 32) * bits words, i.e. `bits` bits per value plus at most 31 values of padding.
"""

import dataclasses
import re
import sys

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class FloatFormat:
  exponent_bits: int
  mantissa_bits: int

  def __post_init__(self):
    if not 2 <= self.exponent_bits <= 8:
      raise ValueError(f'{self.name}: exponent bits must be in [2, 8]')
    if not 1 <= self.mantissa_bits <= 23:
      raise ValueError(f'{self.name}: mantissa bits must be in [1, 23]')

  @property
  def name(self) -> str:
    return f'S1E{self.exponent_bits}M{self.mantissa_bits}'

  @property
  def bits(self) -> int:
    return 1 + self.exponent_bits + self.mantissa_bits

  @property
  def bias(self) -> int:
    return 2 ** (self.exponent_bits - 1) - 1

  @property
  def min_normal_exponent(self) -> int:
    return 1 - self.bias

  @property
  def max_exponent(self) -> int:
    return 2 ** self.exponent_bits - 2 - self.bias

  @property
  def max_value(self) -> float:
    return float((2.0 - 2.0 ** -self.mantissa_bits) * 2.0 ** self.max_exponent)


def parse(name: str) -> FloatFormat:
  """'S1E4M6' (case-insensitive) -> FloatFormat(4, 6); errors name the text."""
  match = re.fullmatch(r'S1E(\d+)M(\d+)', name.strip().upper())
  if not match:
    raise ValueError(f'{name!r} is not a format name like S1E4M6 (1 sign, e exponent, m '
                     'mantissa bits)')
  return FloatFormat(int(match.group(1)), int(match.group(2)))


def encode(x: tf.Tensor, fmt: FloatFormat) -> tf.Tensor:
  """float32 tensor -> uint32 codes of `fmt.bits` bits (same shape)."""
  e, m = fmt.exponent_bits, fmt.mantissa_bits
  bits = tf.bitcast(tf.convert_to_tensor(x, tf.float32), tf.int32)
  sign = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 31), 1)
  exp32 = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 23), 0xFF)
  man32 = tf.bitwise.bitwise_and(bits, 0x7FFFFF)
  is_nan = tf.logical_and(tf.equal(exp32, 255), tf.not_equal(man32, 0))
  is_inf = tf.logical_and(tf.equal(exp32, 255), tf.equal(man32, 0))
  # |x| = significand * 2^(exponent - 23), significand < 2^24.
  significand = tf.where(exp32 > 0, tf.bitwise.bitwise_or(man32, 0x800000), man32)
  exponent = tf.maximum(exp32, 1) - 127
  # The format's quantum at this exponent (the subnormal quantum below the normal range).
  quantum = tf.maximum(exponent, fmt.min_normal_exponent) - m
  shift = tf.clip_by_value(quantum - (exponent - 23), 0, 30)
  kept = tf.bitwise.right_shift(significand, shift)
  remainder = significand - tf.bitwise.left_shift(kept, shift)
  half = tf.bitwise.left_shift(tf.ones_like(shift), tf.maximum(shift - 1, 0))
  round_up = tf.logical_and(shift > 0, tf.logical_or(
      remainder > half, tf.logical_and(tf.equal(remainder, half),
                                       tf.equal(tf.bitwise.bitwise_and(kept, 1), 1))))
  kept = kept + tf.cast(round_up, tf.int32)
  # Rounding may carry into the next binade.
  carry = kept >= 2 ** (m + 1)
  kept = tf.where(carry, tf.bitwise.right_shift(kept, 1), kept)
  quantum = quantum + tf.cast(carry, tf.int32)
  normal = kept >= 2 ** m
  exponent_field = tf.where(normal, quantum + m + fmt.bias, 0)
  mantissa_field = tf.where(normal, kept - 2 ** m, kept)
  overflow = tf.logical_or(is_inf, tf.logical_and(normal, quantum + m > fmt.max_exponent))
  exponent_field = tf.where(overflow, 2 ** e - 2, exponent_field)
  mantissa_field = tf.where(overflow, 2 ** m - 1, mantissa_field)
  exponent_field = tf.where(is_nan, 2 ** e - 1, exponent_field)
  mantissa_field = tf.where(is_nan, 2 ** (m - 1), mantissa_field)
  code = tf.bitwise.bitwise_or(
      tf.bitwise.left_shift(sign, e + m),
      tf.bitwise.bitwise_or(tf.bitwise.left_shift(exponent_field, m), mantissa_field))
  return tf.cast(code, tf.uint32)


def encode_values(values: tf.Tensor, fmt: FloatFormat) -> tf.Tensor:
  """The codes of values that are already `fmt` values (e.g. `quantize`'s output): the same as
  `encode`, read off their float32 bits without rounding. `quantize` then `encode_values`
  takes about half of `encode` then `decode`, which is how OMC compresses.

  Formats with fewer than 8 exponent bits only: with 8, the format's subnormals are float32
  subnormals, which TF's CPU kernels flush (so `quantize` gives 0 where `encode` keeps them).
  """
  if fmt.exponent_bits == 8:
    raise ValueError(f'{fmt.name}: codes cannot be read off flushed float32 values; use encode')
  values = tf.convert_to_tensor(values, tf.float32)
  e, m = fmt.exponent_bits, fmt.mantissa_bits
  bits = tf.bitcast(values, tf.int32)
  sign = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 31), 1)
  exp32 = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 23), 0xFF)
  # Normal in the format: rebias the exponent, keep the top m mantissa bits.
  normal_fields = tf.bitwise.bitwise_or(
      tf.bitwise.left_shift(exp32 - 127 + fmt.bias, m),
      tf.bitwise.right_shift(tf.bitwise.bitwise_and(bits, 0x7FFFFF), 23 - m))
  # Subnormal in the format (zero included): an exact multiple of the subnormal quantum, far
  # above float32's own subnormals for e < 8.
  magnitude = tf.abs(values)
  subnormal_fields = tf.cast(magnitude * np.float32(2.0 ** (m - fmt.min_normal_exponent)),
                             tf.int32)
  fields = tf.where(magnitude < np.float32(2.0 ** fmt.min_normal_exponent), subnormal_fields,
                    normal_fields)
  fields = tf.where(tf.math.is_nan(values), np.int32((2 ** e - 1) << m | 2 ** (m - 1)), fields)
  return tf.cast(tf.bitwise.bitwise_or(tf.bitwise.left_shift(sign, e + m), fields), tf.uint32)


def decode(code: tf.Tensor, fmt: FloatFormat) -> tf.Tensor:
  """uint32 codes of `fmt` -> float32 values (exact)."""
  e, m = fmt.exponent_bits, fmt.mantissa_bits
  code = tf.cast(code, tf.int32)
  sign = tf.bitwise.bitwise_and(tf.bitwise.right_shift(code, e + m), 1)
  exponent_field = tf.bitwise.bitwise_and(tf.bitwise.right_shift(code, m), 2 ** e - 1)
  mantissa_field = tf.bitwise.bitwise_and(code, 2 ** m - 1)
  # Normal numbers: the float32 bit pattern directly.
  exp32 = tf.clip_by_value(exponent_field - fmt.bias + 127, 1, 254)
  normal_bits = tf.bitwise.bitwise_or(
      tf.bitwise.left_shift(exp32, 23), tf.bitwise.left_shift(mantissa_field, 23 - m))
  normal = tf.bitcast(normal_bits, tf.float32)
  subnormal = tf.cast(mantissa_field, tf.float32) * np.float32(
      2.0 ** (fmt.min_normal_exponent - m))
  magnitude = tf.where(tf.equal(exponent_field, 0), subnormal, normal)
  top = tf.equal(exponent_field, 2 ** e - 1)
  magnitude = tf.where(top, tf.where(tf.equal(mantissa_field, 0), np.float32(np.inf),
                                     np.float32(np.nan)), magnitude)
  return tf.where(tf.equal(sign, 1), -magnitude, magnitude)


def quantize_stochastic(x: tf.Tensor, fmt: FloatFormat, seed: tf.Tensor) -> tf.Tensor:
  """float32 -> one of the two `fmt` values around `x`, the upper with probability equal
  to `x`'s fraction of the way there, so the result is `x` in expectation (saturating at
  +-max; NaN kept). `seed` ([2] int) makes the draw stateless and reproducible.

  For a client's requantization after a local step: a step smaller than half a quantum
  rounds back to the same value under round-to-nearest, so a format that is coarse relative
  to the step freezes its weights; stochastic rounding keeps the step in expectation.
  Random low bits are added to the float32 bit pattern below the format's last mantissa bit
  and then cut off (integer ops only, so float32 subnormals are not flushed); below the
  format's smallest normal (for fewer than 8 exponent bits) the quantum is fixed and the draw
  is `floor(|x| / q + u) * q`.
  """
  x = tf.convert_to_tensor(x, tf.float32)
  bits = tf.bitcast(x, tf.int32)
  sign = tf.bitwise.bitwise_and(bits, np.int32(-2 ** 31))
  magnitude_bits = tf.bitwise.bitwise_and(bits, 0x7FFFFFFF)
  shift = 23 - fmt.mantissa_bits
  rounded_bits = magnitude_bits
  noise = None
  if shift:
    noise = tf.random.stateless_uniform(tf.shape(x), seed, minval=0, maxval=2 ** shift,
                                        dtype=tf.int32)
    rounded_bits = tf.bitwise.bitwise_and(magnitude_bits + noise, np.int32(~(2 ** shift - 1)))
  max_bits = np.float32(fmt.max_value).view(np.int32)
  rounded_bits = tf.minimum(rounded_bits, max_bits)
  if fmt.exponent_bits < 8:
    magnitude = tf.bitcast(magnitude_bits, tf.float32)
    quantum = 2.0 ** (fmt.min_normal_exponent - fmt.mantissa_bits)
    # One draw serves both paths (each value takes one): the low bits as a fraction in
    # [0, 1) with `shift` bits of resolution (17 for S1E4M6).
    uniform = (tf.cast(noise, tf.float32) * np.float32(2.0 ** -shift) if shift else
               tf.random.stateless_uniform(tf.shape(x), seed))
    subnormal = tf.floor(magnitude * np.float32(1.0 / quantum) + uniform) * np.float32(quantum)
    rounded_bits = tf.where(magnitude < np.float32(2.0 ** fmt.min_normal_exponent),
                            tf.bitcast(subnormal, tf.int32), rounded_bits)
  signed = tf.bitcast(tf.bitwise.bitwise_or(rounded_bits, sign), tf.float32)
  return tf.where(tf.math.is_nan(x), x, signed)


def quantize(x: tf.Tensor, fmt: FloatFormat) -> tf.Tensor:
  """float32 -> the nearest `fmt` value, as float32: `decode(encode(x))`, in a third of the ops.

  Clients requantize every weight matrix after every step, so this is on the training path.
  In the format's normal range, rounding to `m` mantissa bits is the float32 bit pattern
  rounded to nearest even at bit 23 - m (a carry into the exponent is the next binade, and
  past the top it reaches inf, which saturates like any overflow). Below the format's
  smallest normal the quantum is fixed, so `round(|x| / q) * q` (TF rounds half to even;
  dividing by a power of two is exact) is the gradual underflow. With 8 exponent bits those
  subnormals are float32 subnormals, which TF's CPU kernels flush, so that case takes the
  integer path.
  """
  x = tf.convert_to_tensor(x, tf.float32)
  if fmt.exponent_bits == 8:
    return decode(encode(x, fmt), fmt)
  bits = tf.bitcast(x, tf.int32)
  sign = tf.bitwise.bitwise_and(bits, np.int32(-2 ** 31))
  magnitude_bits = tf.bitwise.bitwise_and(bits, 0x7FFFFFFF)
  shift = 23 - fmt.mantissa_bits
  rounded_bits = magnitude_bits
  if shift:
    odd = tf.bitwise.bitwise_and(tf.bitwise.right_shift(magnitude_bits, shift), 1)
    rounded_bits = tf.bitwise.bitwise_and(magnitude_bits + (2 ** (shift - 1) - 1) + odd,
                                          np.int32(~(2 ** shift - 1)))
  normal = tf.minimum(tf.bitcast(rounded_bits, tf.float32), np.float32(fmt.max_value))
  magnitude = tf.bitcast(magnitude_bits, tf.float32)
  quantum = 2.0 ** (fmt.min_normal_exponent - fmt.mantissa_bits)
  subnormal = tf.round(magnitude * np.float32(1.0 / quantum)) * np.float32(quantum)
  smallest_normal = np.float32(2.0 ** fmt.min_normal_exponent)
  rounded = tf.where(magnitude < smallest_normal, subnormal, normal)
  signed = tf.bitcast(tf.bitwise.bitwise_or(tf.bitcast(rounded, tf.int32), sign), tf.float32)
  return tf.where(tf.math.is_nan(x), x, signed)


def packed_words(num_values: int, bits: int) -> int:
  return -(-num_values // 32) * bits


def _layout(bits: int):
  """Where code i (0..31) of a group of 32 lives in the group's `bits` words: word index, bit
  offset, and the mask of its high part that spills into the next word (0: no spill)."""
  start = np.arange(32, dtype=np.int64) * bits
  word, offset = start // 32, start % 32
  spill = np.maximum(offset + bits - 32, 0)
  return word, offset, (np.int64(1) << spill) - 1


# Byte-aligned widths on a little-endian host: the layout below is the codes' own bytes, so
# packing is a cast and a bitcast (no 64-bit temporaries; the decompress-on-use step unpacks
# every kernel twice per step).
_BYTE_ALIGNED = {8: tf.uint8, 16: tf.uint16, 32: tf.uint32} if sys.byteorder == 'little' else {}


def pack(codes: tf.Tensor, bits: int) -> tf.Tensor:
  """uint32 codes (any shape, `bits` wide) -> 1-D uint32 words holding them densely: code i of
  each group of 32 occupies bits [i * bits, (i + 1) * bits) of the group's words, least
  significant first. Vectorized (a dozen ops whatever `bits` is): the fields are disjoint, so
  a word is the sum of the shifted codes that land in it."""
  if bits in _BYTE_ALIGNED:
    narrow = _BYTE_ALIGNED[bits]
    flat = tf.cast(tf.reshape(codes, [-1]), narrow)
    flat = tf.pad(flat, [[0, (-tf.size(flat)) % 32]])
    return tf.reshape(tf.bitcast(tf.reshape(flat, [-1, 32 // bits]), tf.uint32), [-1])
  return _pack_fields(codes, bits)


def _pack_fields(codes: tf.Tensor, bits: int) -> tf.Tensor:
  """`pack` for any width, by shifting each code into its words."""
  word, offset, _ = _layout(bits)
  flat = tf.cast(tf.reshape(codes, [-1]), tf.int64)
  size = tf.size(flat)
  groups = tf.reshape(tf.pad(flat, [[0, (-size) % 32]]), [-1, 32])
  wide = tf.bitwise.left_shift(groups, offset)  # < 2^63: codes < 2^32, offsets < 32.
  low = tf.bitwise.bitwise_and(wide, 0xFFFFFFFF)
  high = tf.bitwise.right_shift(wide, 32)
  parts = tf.transpose(tf.concat([low, high], axis=1))  # [64, groups]
  summed = tf.math.unsorted_segment_sum(parts, np.concatenate([word, word + 1]), bits + 1)
  return tf.reshape(tf.transpose(tf.cast(summed[:bits], tf.uint32)), [-1])


def unpack(words: tf.Tensor, bits: int, shape) -> tf.Tensor:
  """The inverse of `pack`: uint32 codes of `shape`."""
  if bits in _BYTE_ALIGNED:
    narrow = tf.reshape(tf.bitcast(words, _BYTE_ALIGNED[bits]), [-1])
    return tf.reshape(tf.cast(narrow[:_size(shape)], tf.uint32), shape)
  return _unpack_fields(words, bits, shape)


def _size(shape):
  return int(np.prod(shape)) if not isinstance(shape, tf.Tensor) else tf.reduce_prod(shape)


def _unpack_fields(words: tf.Tensor, bits: int, shape) -> tf.Tensor:
  """`unpack` for any width, by gathering each code's words and shifting."""
  word, offset, high_mask = _layout(bits)
  groups = tf.pad(tf.cast(tf.reshape(words, [-1, bits]), tf.int64), [[0, 0], [0, 1]])
  low = tf.bitwise.right_shift(tf.gather(groups, word, axis=1), offset)
  high = tf.bitwise.left_shift(tf.bitwise.bitwise_and(tf.gather(groups, word + 1, axis=1),
                                                      high_mask), 32 - offset)
  codes = tf.bitwise.bitwise_and(tf.bitwise.bitwise_or(low, high), (1 << bits) - 1)
  flat = tf.reshape(tf.cast(codes, tf.uint32), [-1])
  return tf.reshape(flat[:_size(shape)], shape)
