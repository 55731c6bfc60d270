"""S1EeMm formats: rounding against ml_dtypes and a float64 reference, saturation, packing."""

from absl.testing import absltest
from absl.testing import parameterized
import ml_dtypes
import numpy as np
import tensorflow as tf

from fl_compression.compression import float_format as ff

ISSUE_FORMATS = ['S1E5M10', 'S1E8M7', 'S1E4M8', 'S1E3M9', 'S1E5M7', 'S1E4M6', 'S1E4M3',
                 'S1E5M2']


def _reference(x: np.ndarray, fmt: ff.FloatFormat) -> np.ndarray:
  """Round to nearest even in float64 arithmetic (numpy keeps subnormals), saturating."""
  x = x.astype(np.float64)
  out = np.empty_like(x)
  for i, v in enumerate(x.ravel()):
    if np.isnan(v):
      out.flat[i] = np.nan
      continue
    a = min(abs(v), np.finfo(np.float64).max)
    if a == 0:
      out.flat[i] = v
      continue
    _, exponent = np.frexp(a)  # a = f * 2^exponent, f in [0.5, 1).
    quantum = 2.0 ** (max(int(exponent) - 1, fmt.min_normal_exponent) - fmt.mantissa_bits)
    rounded = min(np.round(a / quantum) * quantum, fmt.max_value)
    out.flat[i] = np.copysign(rounded, v)
  return out.astype(np.float32)


def _values(seed: int, low: float, high: float, count: int = 4000) -> np.ndarray:
  """Log-uniform magnitudes in [2^low, 2^high], both signs, plus exact ties and zeros."""
  rng = np.random.default_rng(seed)
  magnitudes = 2.0 ** rng.uniform(low, high, count)
  signs = rng.choice([-1.0, 1.0], count)
  values = (signs * magnitudes).astype(np.float32)
  return np.concatenate([values, np.float32([0.0, -0.0, 1.0, -1.0])])


class FormatTest(parameterized.TestCase):

  @parameterized.parameters(*ISSUE_FORMATS)
  def test_rounding_equals_the_float64_reference(self, name):
    fmt = ff.parse(name)
    low = -126 if fmt.exponent_bits == 8 else fmt.min_normal_exponent - fmt.mantissa_bits - 2
    values = _values(len(name), low, fmt.max_exponent + 2)
    # Ties between neighbours of the format: x = (k + 1/2) quanta round to the even k.
    k = np.arange(2 ** fmt.mantissa_bits, 2 ** (fmt.mantissa_bits + 1) - 1, dtype=np.float64)
    ties = ((k + 0.5) * 2.0 ** -fmt.mantissa_bits).astype(np.float32)
    values = np.concatenate([values, ties[:512]])
    got = ff.quantize(tf.constant(values), fmt).numpy()
    np.testing.assert_array_equal(got, _reference(values, fmt))
    self.assertTrue(np.all(np.abs(got) <= fmt.max_value))

  @parameterized.parameters(('S1E5M10', np.float16), ('S1E8M7', ml_dtypes.bfloat16))
  def test_codes_are_the_standard_bit_patterns(self, name, dtype):
    fmt = ff.parse(name)
    values = _values(3, -14 if dtype == np.float16 else -120, 15)
    codes = ff.encode(tf.constant(values), fmt).numpy()
    np.testing.assert_array_equal(codes, values.astype(dtype).view(np.uint16).astype(np.uint32))

  @parameterized.parameters(('S1E5M10', np.float16), ('S1E8M7', ml_dtypes.bfloat16),
                            ('S1E5M2', ml_dtypes.float8_e5m2),
                            ('S1E4M3', ml_dtypes.float8_e4m3fn))
  def test_rounds_like_the_standard_type_in_range(self, name, dtype):
    fmt = ff.parse(name)
    low = -120 if fmt.exponent_bits == 8 else fmt.min_normal_exponent - fmt.mantissa_bits - 1
    values = _values(11, low, fmt.max_exponent + 1)
    values = values[np.abs(values) <= fmt.max_value]  # e4m3fn goes to 448; ours stops at 240.
    expected = values.astype(dtype).astype(np.float32)
    np.testing.assert_array_equal(ff.quantize(tf.constant(values), fmt).numpy(), expected)

  @parameterized.parameters(*ISSUE_FORMATS, 'S1E2M1', 'S1E7M23', 'S1E8M10')
  def test_quantize_equals_decoding_the_codes_for_every_bit_pattern_class(self, name):
    # quantize rounds the float32 bit pattern directly; encode/decode go through the codes.
    fmt = ff.parse(name)
    rng = np.random.default_rng(7)
    patterns = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32)
    values = np.concatenate([patterns.view(np.float32), np.float32(
        [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.1754944e-38, 3.4028235e38,
         fmt.max_value, -fmt.max_value, 2.0 ** fmt.min_normal_exponent])])
    fast = ff.quantize(tf.constant(values), fmt).numpy()
    via_codes = ff.decode(ff.encode(tf.constant(values), fmt), fmt).numpy()
    same = (fast.view(np.uint32) == via_codes.view(np.uint32)) | (
        np.isnan(fast) & np.isnan(via_codes))
    self.assertTrue(np.all(same), values[~same][:5])
    # Below 8 exponent bits, the codes read off quantize's values are encode's, bit for bit.
    if fmt.exponent_bits == 8:
      with self.assertRaisesRegex(ValueError, 'flushed'):
        ff.encode_values(tf.constant(fast), fmt)
      return
    codes = ff.encode(tf.constant(values), fmt).numpy()
    read_off = ff.encode_values(tf.constant(fast), fmt).numpy()
    self.assertTrue(np.all(codes == read_off), values[codes != read_off][:5])

  @parameterized.parameters('S1E4M3', 'S1E4M6', 'S1E5M10', 'S1E8M7', 'S1E3M9')
  def test_stochastic_rounding_picks_a_neighbour_without_bias(self, name):
    fmt = ff.parse(name)
    low = -130 if fmt.exponent_bits == 8 else fmt.min_normal_exponent - fmt.mantissa_bits - 2
    values = _values(5, low, fmt.max_exponent + 1, count=500)
    nearest = _reference(values, fmt).astype(np.float64)
    # The neighbours: nearest and the format value on the other side of x (float64).
    x = values.astype(np.float64)
    a = np.abs(x)
    _, exponent = np.frexp(np.maximum(a, 1e-300))
    quantum = 2.0 ** (np.maximum(exponent - 1, fmt.min_normal_exponent) - fmt.mantissa_bits)
    lower = np.sign(x) * np.minimum(np.floor(a / quantum) * quantum, fmt.max_value)
    upper = np.sign(x) * np.minimum(np.ceil(a / quantum) * quantum, fmt.max_value)
    draws = np.stack([ff.quantize_stochastic(tf.constant(values), fmt, tf.constant([3, i]))
                      .numpy() for i in range(300)]).astype(np.float64)
    on_grid = (draws == lower) | (draws == upper)
    self.assertTrue(np.all(on_grid), values[~np.all(on_grid, axis=0)][:5])
    # Unbiased inside the range: the mean draw is x (300 draws; 6 sigma of a Bernoulli).
    inside = (a <= fmt.max_value) & (upper != lower)
    width = np.abs(upper - lower)[inside]
    error = (draws.mean(axis=0)[inside] - x[inside]) / width
    self.assertLess(np.max(np.abs(error)), 6 * 0.5 / np.sqrt(300))
    self.assertLess(abs(float(np.mean(error))), 0.01)
    # Values already on the grid stay; the same seed draws the same.
    np.testing.assert_array_equal(
        ff.quantize_stochastic(tf.constant(nearest.astype(np.float32)), fmt, tf.constant([1, 2])),
        nearest.astype(np.float32))
    np.testing.assert_array_equal(ff.quantize_stochastic(tf.constant(values), fmt, [9, 9]),
                                  ff.quantize_stochastic(tf.constant(values), fmt, [9, 9]))

  def test_stochastic_rounding_saturates_and_keeps_nan(self):
    fmt = ff.parse('S1E4M6')
    x = tf.constant([1e6, -1e6, np.inf, -np.inf, np.nan], tf.float32)
    got = ff.quantize_stochastic(x, fmt, tf.constant([0, 1])).numpy()
    np.testing.assert_array_equal(got[:4], [fmt.max_value, -fmt.max_value, fmt.max_value,
                                            -fmt.max_value])
    self.assertTrue(np.isnan(got[4]))

  def test_overflow_saturates_and_nan_stays(self):
    fmt = ff.parse('S1E4M6')
    x = tf.constant([1e6, -1e6, np.inf, -np.inf, np.nan, 255.0, 253.0], tf.float32)
    got = ff.quantize(x, fmt).numpy()
    self.assertEqual(fmt.max_value, (2 - 2 ** -6) * 2 ** 7)
    np.testing.assert_array_equal(got[:4], [fmt.max_value, -fmt.max_value, fmt.max_value,
                                            -fmt.max_value])
    self.assertTrue(np.isnan(got[4]))
    # 255 rounds up past the largest value (254) and saturates; 253 ties to even (252).
    np.testing.assert_array_equal(got[5:], [254.0, 252.0])

  def test_subnormals_are_gradual(self):
    fmt = ff.parse('S1E4M3')  # Smallest normal 2^-6, subnormal quantum 2^-9.
    x = tf.constant([2.0 ** -9, 1.4 * 2.0 ** -9, 2.5 * 2.0 ** -9, 0.5 * 2.0 ** -9,
                     0.51 * 2.0 ** -9, 7.5 * 2.0 ** -9], tf.float32)
    np.testing.assert_array_equal(
        ff.quantize(x, fmt).numpy(),
        np.float32([1, 1, 2, 0, 1, 8]) * np.float32(2.0 ** -9))

  def test_bad_names_are_reported(self):
    for name, message in (('E4M3', 'not a format name'), ('S1E9M3', 'exponent bits'),
                          ('S1E4M0', 'mantissa bits')):
      with self.assertRaisesRegex(ValueError, message):
        ff.parse(name)


class PackingTest(parameterized.TestCase):

  @parameterized.parameters(8, 11, 12, 13, 16, 19, 32)
  def test_round_trip_and_size(self, bits):
    rng = np.random.default_rng(bits)
    shape = (37, 29)  # 1,073 values: not a multiple of 32.
    codes = rng.integers(0, 2 ** bits, size=shape, dtype=np.uint64).astype(np.uint32)
    words = ff.pack(tf.constant(codes), bits)
    self.assertEqual(words.dtype, tf.uint32)
    self.assertEqual(int(words.shape[0]), ff.packed_words(codes.size, bits))
    self.assertEqual(ff.packed_words(codes.size, bits), 34 * bits)  # ceil(1073 / 32) = 34.
    np.testing.assert_array_equal(ff.unpack(words, bits, shape).numpy(), codes)

  @parameterized.parameters(5, 8, 11, 16, 17, 32)
  def test_words_match_a_bit_stream_reference(self, bits):
    # Independent reference: every code's bits, least significant first, appended to one
    # stream that is cut into 32-bit words (also least significant first).
    codes = np.random.default_rng(bits).integers(0, 2 ** bits, size=70, dtype=np.uint64)
    stream = [(int(c) >> b) & 1 for c in codes for b in range(bits)]
    stream += [0] * (-len(stream) % (32 * bits))
    expected = [sum(bit << k for k, bit in enumerate(stream[w:w + 32]))
                for w in range(0, len(stream), 32)]
    words = ff.pack(tf.constant(codes.astype(np.uint32)), bits).numpy()
    np.testing.assert_array_equal(words, np.array(expected, np.uint32))

  @parameterized.parameters(8, 16, 32)
  def test_byte_aligned_widths_pack_as_the_general_layout(self, bits):
    # 8, 16 and 32 bits pack by bitcasting the codes' bytes; the general shift-and-sum path
    # must give the same words and read them back the same way.
    rng = np.random.default_rng(100 + bits)
    codes = tf.constant(rng.integers(0, 2 ** bits, size=(7, 45), dtype=np.uint64)
                        .astype(np.uint32))
    words = ff.pack(codes, bits)
    np.testing.assert_array_equal(words.numpy(), ff._pack_fields(codes, bits).numpy())
    np.testing.assert_array_equal(ff.unpack(words, bits, (7, 45)).numpy(),
                                  ff._unpack_fields(words, bits, (7, 45)).numpy())

  def test_layout_is_little_endian_bit_order(self):
    # Two 11-bit codes: the first fills bits 0-10 of word 0, the second bits 11-21.
    words = ff.pack(tf.constant([0x7FF, 0x001], tf.uint32), 11).numpy()
    self.assertEqual(int(words[0]), 0x7FF | (1 << 11))
    self.assertTrue(np.all(words[1:] == 0))


if __name__ == '__main__':
  absltest.main()
