"""OMC math: compressed storage, the least-squares transform, partial selection."""

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from fl_compression.compression import codecs
from fl_compression.compression import float_format as ff
from fl_compression.compression import omc


class OmcTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    # A weight matrix with a mean and scale far from a format's grid.
    self.w = (0.03 * rng.standard_normal((96, 384)) + 0.011).astype(np.float32)

  def test_transform_is_the_least_squares_fit(self):
    fmt = ff.parse('S1E4M3')
    quantized = ff.quantize(tf.constant(self.w), fmt).numpy()
    scale, offset = omc.fit_transform(self.w, quantized)
    # Independent reference: numpy's degree-1 polynomial fit of w on Q(w).
    ref_scale, ref_offset = np.polyfit(quantized.ravel().astype(np.float64),
                                       self.w.ravel().astype(np.float64), 1)
    self.assertAlmostEqual(float(scale), ref_scale, places=5)
    self.assertAlmostEqual(float(offset), ref_offset, places=7)

  def test_transform_of_a_large_matrix_keeps_float64_accuracy(self):
    rng = np.random.default_rng(1)
    w = (0.5 * rng.standard_normal((2048, 2048)) + 0.011).astype(np.float32)
    for name in ('S1E4M3', 'S1E5M10'):
      quantized = ff.quantize(tf.constant(w), ff.parse(name)).numpy()
      scale, offset = omc.fit_transform(w, quantized)
      # Ordinary least squares in float64, closed form. (np.polyfit's lstsq was off by 2e-7
      # in the offset on an AVX-512 OpenBLAS, more than the float32 fit under test.)
      x, y = quantized.ravel().astype(np.float64), w.ravel().astype(np.float64)
      dx = x - x.mean()
      ref_scale = np.dot(dx, y - y.mean()) / np.dot(dx, dx)
      ref_offset = y.mean() - ref_scale * x.mean()
      self.assertAlmostEqual(float(scale), ref_scale, places=6, msg=name)
      self.assertAlmostEqual(float(offset), ref_offset, places=8, msg=name)

  def test_compressed_storage_is_real_and_the_transform_lowers_the_error(self):
    for name in ('S1E4M3', 'S1E4M6', 'S1E5M10'):
      fmt = ff.parse(name)
      plain = omc.compress(self.w, fmt, transform=False)
      fitted = omc.compress(self.w, fmt)
      # bits per value plus the padding to 32 values and two float32 scalars.
      self.assertEqual(fitted.nbytes(), 4 * -(-self.w.size // 32) * fmt.bits + 8)
      self.assertLess(fitted.nbytes(), self.w.nbytes * (fmt.bits + 1) / 32)
      np.testing.assert_array_equal(omc.decompress(plain, fmt).numpy(),
                                    ff.quantize(tf.constant(self.w), fmt).numpy())
      error_plain = np.mean((omc.decompress(plain, fmt).numpy() - self.w) ** 2)
      error_fitted = np.mean((omc.decompress(fitted, fmt).numpy() - self.w) ** 2)
      self.assertLessEqual(error_fitted, error_plain * (1 + 1e-6), name)
    # Rounding error is relative and unbiased, so the fit gains little there; where the
    # format saturates (S1E3M9 stops at ~16) the fitted scale recovers most of the range.
    fmt, large = ff.parse('S1E3M9'), 1000 * self.w
    plain = np.mean((omc.decompress(omc.compress(large, fmt, False), fmt).numpy() - large) ** 2)
    fitted = np.mean((omc.decompress(omc.compress(large, fmt), fmt).numpy() - large) ** 2)
    self.assertLess(fitted, 0.5 * plain)

  def test_small_steps_survive_stochastic_requantization_only(self):
    # Twenty SGD-like steps of a tenth of a quantum each: rounded to nearest every step falls
    # back on the same value; rounded stochastically the weights travel two quanta on average.
    for codec, quantum_of in (
        (codecs.OmcCodec(ff.parse('S1E4M3'), transform=False, rounding='stochastic'),
         lambda w: 2.0 ** (np.floor(np.log2(np.abs(w))) - 3)),
        (codecs.AqtCodec(8, rounding='stochastic'),
         lambda w: np.abs(w).max(axis=0) / 127.0 + 0 * w)):
      start = codec.roundtrip(tf.constant(self.w)).numpy()
      quantum = quantum_of(start)
      # Keep each channel's largest weight (and so FedAQT's scales) where it is.
      step = -0.1 * quantum * (np.abs(start) < np.abs(start).max(axis=0) - quantum)
      nearest, stochastic = start, start
      for i in range(20):
        nearest = codec.roundtrip(tf.constant(nearest + step)).numpy()
        stochastic = codec.requantize(tf.constant(stochastic + step),
                                      tf.constant([i, 1], tf.int64)).numpy()
      np.testing.assert_array_equal(nearest, start)
      travelled = (stochastic - start)[step != 0] / quantum[step != 0]
      self.assertAlmostEqual(float(np.mean(travelled)), -2.0, delta=0.15, msg=codec.name)

  def test_constant_variable_keeps_identity_transform(self):
    scale, offset = omc.fit_transform(np.full((4, 4), 0.5, np.float32),
                                      np.full((4, 4), 0.5, np.float32))
    self.assertEqual((float(scale), float(offset)), (1.0, 0.0))

  def test_only_weight_matrices_are_compressed(self):
    self.assertTrue(omc.is_weight_matrix((96, 384)))
    self.assertTrue(omc.is_weight_matrix((15, 1, 96)))
    self.assertFalse(omc.is_weight_matrix((384,)))
    self.assertFalse(omc.is_weight_matrix(()))

  def test_partial_selection_is_exact_reproducible_and_covers_every_matrix(self):
    picks = [omc.select_compressed(40, 0.9, tf.constant([3, c])).numpy() for c in range(64)]
    for pick in picks:
      self.assertEqual(int(pick.sum()), 36)
    again = omc.select_compressed(40, 0.9, tf.constant([3, 0])).numpy()
    np.testing.assert_array_equal(again, picks[0])
    self.assertFalse(np.array_equal(picks[0], picks[1]))
    # Across clients every matrix gets full-precision training from someone.
    self.assertTrue(np.all(np.any(~np.stack(picks), axis=0)))
    with self.assertRaisesRegex(ValueError, 'outside'):
      omc.select_compressed(40, 1.5, tf.constant([0, 0]))


if __name__ == '__main__':
  absltest.main()
