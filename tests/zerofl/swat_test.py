from absl.testing import absltest
import numpy as np
import tensorflow as tf

from fl_compression.zerofl import swat


def _numpy_top_k(values, k):
  """Reference: largest magnitudes first, ties by lower flat index (stable sort)."""
  order = np.argsort(-np.abs(values).ravel(), kind='stable')
  return np.sort(order[:k])


class TopKTest(absltest.TestCase):

  def test_masks_match_numpy_on_random_matrices_with_ties(self):
    rng = np.random.default_rng(0)
    for shape, density in (((7, 5), 0.1), ((64, 48), 0.05), ((33, 17), 0.3), ((4, 4), 1.0)):
      # Values on a coarse grid so that many magnitudes tie, with both signs.
      values = rng.integers(-6, 7, size=shape).astype(np.float32)
      k = swat.kept_count(values.size, density)
      expected = np.zeros(values.size, np.float32)
      expected[_numpy_top_k(values, k)] = 1
      mask = swat.top_k_mask(tf.constant(values), density).numpy()
      np.testing.assert_array_equal(mask.ravel(), expected, err_msg=str((shape, density)))
      self.assertEqual(mask.sum(), k)

  def test_kept_count_rounds_and_checks_its_range(self):
    self.assertEqual(swat.kept_count(1000, 0.1), 100)
    self.assertEqual(swat.kept_count(10, 0.01), 1)
    for bad in (0.0, -0.1, 1.5, float('nan')):
      with self.assertRaisesRegex(ValueError, 'density must be in'):
        swat.kept_count(10, bad)


class SwatMatmulTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(1)
    self.x = rng.normal(size=(3, 5, 12)).astype(np.float32)
    self.kernel = rng.normal(size=(12, 8)).astype(np.float32)
    self.dy = rng.normal(size=(3, 5, 8)).astype(np.float32)

  def _grads(self, density, activation_density):
    x, kernel = tf.constant(self.x), tf.Variable(self.kernel)
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(x)
      y = swat.swat_matmul(x, kernel, density, activation_density)
      loss = tf.reduce_sum(y * self.dy)
    return y.numpy(), tape.gradient(loss, x).numpy(), tape.gradient(loss, kernel).numpy()

  def test_forward_and_gradients_against_numpy(self):
    mask = np.zeros(self.kernel.size, np.float32)
    mask[_numpy_top_k(self.kernel, swat.kept_count(self.kernel.size, 0.25))] = 1
    sparse = self.kernel * mask.reshape(self.kernel.shape)
    y, dx, dkernel = self._grads(0.25, None)
    np.testing.assert_allclose(y, self.x @ sparse, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, self.dy @ sparse.T, rtol=1e-5, atol=1e-5)
    # The kernel gradient is dense: pruned entries get gradients too.
    expected = self.x.reshape(-1, 12).T @ self.dy.reshape(-1, 8)
    np.testing.assert_allclose(dkernel, expected, rtol=1e-4, atol=1e-4)
    self.assertGreater(np.abs(dkernel[mask.reshape(self.kernel.shape) == 0]).min(), 0)

  def test_activation_sparsity_keeps_the_top_activations_for_the_kernel_gradient(self):
    flat = self.x.ravel()
    k = int(round(0.2 * flat.size))
    kept = np.zeros_like(flat)
    index = _numpy_top_k(flat, k)
    kept[index] = flat[index]
    _, dx, dkernel = self._grads(0.5, 0.2)
    expected = kept.reshape(-1, 12).T @ self.dy.reshape(-1, 8)
    np.testing.assert_allclose(dkernel, expected, rtol=1e-4, atol=1e-4)
    dense_dx = self._grads(0.5, None)[1]
    np.testing.assert_allclose(dx, dense_dx)  # The input gradient does not use activations.

  def test_swat_dense_is_a_dense_layer_with_the_masked_kernel(self):
    layer = swat.SwatDense(8, density=0.1, activation='relu', name='ffn')
    plain = tf.keras.layers.Dense(8, activation='relu', name='ffn')
    y = layer(self.x)
    plain(self.x)
    self.assertEqual([v.name for v in layer.weights], [v.name for v in plain.weights])
    mask = swat.top_k_mask(layer.kernel, 0.1)
    plain.set_weights([layer.kernel.numpy() * mask.numpy(), layer.bias.numpy()])
    np.testing.assert_allclose(y.numpy(), plain(self.x).numpy(), rtol=1e-5, atol=1e-6)
    with self.assertRaisesRegex(ValueError, 'density must be in'):
      swat.SwatDense(8, density=0.0)

  def test_flops_count_kept_entries(self):
    self.assertEqual(swat.forward_flops(100, 10, 7, 0.1), 2 * 7 * 100)
    self.assertEqual(swat.backward_flops(100, 10, 7, 0.1, 0.5), 2 * 7 * 100 + 2 * 350 * 10)
    self.assertEqual(swat.backward_flops(100, 10, 7, 1.0, None), 2 * 2 * 7 * 1000)


if __name__ == '__main__':
  absltest.main()
