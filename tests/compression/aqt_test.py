"""FedAQT quantizers against TF's fake-quant kernel; straight-through gradient; packing."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from fl_compression.compression import aqt


class AqtTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(1)
    # Channels of very different ranges: per-channel scales matter.
    self.w = (rng.standard_normal((64, 48)) * np.geomspace(1e-3, 1.0, 48)).astype(np.float32)

  @parameterized.parameters(4, 6, 8)
  def test_grid_matches_tf_fake_quant_per_channel(self, bits):
    q = aqt.quantize(self.w, bits)
    self.assertEqual(q.codes.dtype, tf.int8)
    self.assertLessEqual(int(tf.reduce_max(tf.abs(tf.cast(q.codes, tf.int32)))), aqt.levels(bits))
    max_abs = np.abs(self.w).max(axis=0)
    reference = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        self.w, -max_abs, max_abs, num_bits=bits, narrow_range=True).numpy()
    np.testing.assert_allclose(aqt.dequantize(q).numpy(), reference, rtol=0,
                               atol=1e-6 * max_abs.max())
    # Each channel's largest weight is exactly representable.
    np.testing.assert_allclose(np.abs(aqt.dequantize(q).numpy()).max(axis=0), max_abs,
                               rtol=1e-6)

  def test_stochastic_rounding_is_on_the_grid_unbiased_and_reproducible(self):
    rng = np.random.default_rng(3)
    w = tf.constant(rng.normal(0, 0.05, (64, 32)).astype(np.float32))
    nearest = aqt.quantize(w, 8)
    steps = (w / nearest.scales).numpy()
    draws = np.stack([aqt.quantize(w, 8, seed=tf.constant([7, i])).codes.numpy()
                      for i in range(400)]).astype(np.float64)
    # Same scales as rounding to nearest; each code is the floor or the ceiling of the step.
    np.testing.assert_array_equal(aqt.quantize(w, 8, seed=tf.constant([7, 0])).scales,
                                  nearest.scales)
    self.assertTrue(np.all((draws == np.floor(steps)) | (draws == np.ceil(steps))))
    # Unbiased: the mean code is the step (400 draws of a Bernoulli: std <= 0.025).
    np.testing.assert_allclose(draws.mean(axis=0), steps, atol=0.13)
    self.assertLess(abs(float(np.mean(draws.mean(axis=0) - steps))), 0.01)
    # A step of a fifth of a quantum (on every weight but each channel's largest, so the
    # scales stay) is dropped by rounding to nearest and kept in expectation stochastically.
    base = aqt.dequantize(nearest).numpy()
    quantum = nearest.scales.numpy()
    step = 0.2 * quantum * (np.abs(base) < np.abs(base).max(axis=0) - quantum / 2)
    moved = tf.constant(base + step)
    np.testing.assert_array_equal(aqt.dequantize(aqt.quantize(moved, 8)).numpy(), base)
    kept = np.mean([aqt.dequantize(aqt.quantize(moved, 8, seed=tf.constant([1, i]))).numpy()
                    - base for i in range(200)], axis=0)
    self.assertAlmostEqual(float(kept.sum() / step.sum()), 1.0, delta=0.03)
    np.testing.assert_array_equal(aqt.quantize(w, 8, seed=tf.constant([5, 5])).codes,
                                  aqt.quantize(w, 8, seed=tf.constant([5, 5])).codes)

  def test_per_channel_beats_per_tensor_on_uneven_channels(self):
    per_channel = np.mean((aqt.dequantize(aqt.quantize(self.w, 8)).numpy() - self.w) ** 2)
    per_tensor = np.mean((aqt.dequantize(aqt.quantize(self.w, 8, per_channel=False)).numpy()
                          - self.w) ** 2)
    self.assertLess(per_channel, 0.2 * per_tensor)

  def test_straight_through_gradient(self):
    w = tf.Variable(self.w)
    upstream = tf.random.stateless_normal(self.w.shape, seed=[0, 1])
    with tf.GradientTape() as tape:
      y = tf.reduce_sum(aqt.fake_quant(w, 8) * upstream)
    np.testing.assert_array_equal(tape.gradient(y, w).numpy(), upstream.numpy())
    # Forward values are the quantized ones.
    np.testing.assert_array_equal(aqt.fake_quant(self.w, 8).numpy(),
                                  aqt.dequantize(aqt.quantize(self.w, 8)).numpy())

  @parameterized.parameters(4, 6, 8)
  def test_packed_codes_round_trip_at_bits_per_weight(self, bits):
    q = aqt.quantize(self.w, bits)
    words = aqt.pack(q)
    self.assertEqual(int(words.shape[0]) * 32, -(-self.w.size // 32) * 32 * bits)
    again = aqt.unpack(words, q.scales, bits, self.w.shape)
    np.testing.assert_array_equal(again.codes.numpy(), q.codes.numpy())
    self.assertEqual(q.nbytes(), self.w.size * bits // 8 + 48 * 4)

  def test_zero_tensor_and_bad_bits(self):
    q = aqt.quantize(np.zeros((3, 2), np.float32), 8)
    np.testing.assert_array_equal(aqt.dequantize(q).numpy(), np.zeros((3, 2)))
    with self.assertRaisesRegex(ValueError, '3-bit quantization is outside'):
      aqt.quantize(self.w, 3)


if __name__ == '__main__':
  absltest.main()
