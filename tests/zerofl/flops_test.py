from absl.testing import absltest
import numpy as np
import tensorflow as tf

from fl_compression.models import asr
from fl_compression.models import pruned_dense
from fl_compression.models import registry
from fl_compression.zerofl import flops
from fl_compression.zerofl import process
from fl_compression.zerofl import swat


class FlopsTest(absltest.TestCase):

  def test_dense_products_of_a_small_network_by_hand(self):
    inputs = tf.keras.Input((7, 12))
    hidden = swat.SwatDense(20, density=0.25, activation_density=0.5, name='a')(inputs)
    outputs = tf.keras.layers.Dense(3, name='b')(hidden)
    model = tf.keras.Model(inputs, outputs)
    with flops.recording(model) as products:
      model(tf.zeros((2, 7, 12)))
    self.assertEqual([(p.name, p.rows, p.in_dim, p.out_dim) for p in products],
                     [('a', 14, 12, 20), ('b', 14, 20, 3)])
    kept = swat.kept_count(240, 0.25)
    self.assertEqual(products[0].forward(), 2 * 14 * kept)
    self.assertEqual(products[0].backward(), 2 * 14 * kept + 2 * (0.5 * 14 * 12) * 20)
    self.assertEqual(products[1].forward(), 2 * 14 * 20 * 3)
    self.assertEqual(products[1].backward(), 4 * 14 * 20 * 3)
    # The layers are unpatched afterwards.
    self.assertNotIn('call', vars(model.get_layer('a')))

  def test_swat_conformer_saves_exactly_the_pruned_entries(self):
    config = asr.tiny_config(vocab_size=11)
    config['encoder'].update(num_blocks=2, model_dim=32, num_heads=4, num_groups=4)
    features, lengths = tf.random.normal((2, 120, 80)), tf.constant([120, 100])
    dense = flops.step_flops(registry.build_keras_model(config), features, lengths)
    zerofl = process.ZeroFLConfig(sparsity=0.9)
    with pruned_dense.building_dense(process.swat_factory(zerofl)):
      sparse_model = registry.build_keras_model(config)
    with flops.recording(sparse_model) as products:
      sparse_model([features, lengths], training=False)
    sparse = flops.step_flops(sparse_model, features, lengths)
    self.assertEqual(sparse['products'], dense['products'])
    self.assertGreater(sparse['swat_products'], 0)
    saved = sum(2 * p.rows * (p.in_dim * p.out_dim - swat.kept_count(p.in_dim * p.out_dim, 0.1))
                for p in products if p.density < 1)
    self.assertAlmostEqual(dense['forward'] - sparse['forward'], saved)
    self.assertAlmostEqual(dense['backward'] - sparse['backward'], saved)
    self.assertLess(sparse['forward'] / dense['forward'], 0.5)


if __name__ == '__main__':
  absltest.main()
