from absl.testing import absltest
import numpy as np

from fl_compression.importance import layers
from fl_compression.importance import signatures
from fl_compression.models import asr
from fl_compression.models import registry


def _model(seed=0, blocks=3):
  config = asr.tiny_config(vocab_size=11, seed=seed)
  config['encoder'].update(num_blocks=blocks, model_dim=32, num_heads=4, num_groups=4)
  model = registry.build_keras_model(config)
  variables = model.trainable_variables + model.non_trainable_variables
  return [v.name for v in variables], [v.numpy() for v in variables], config


class ResetTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.names, cls.initial, cls.config = _model()
    rng = np.random.default_rng(0)
    cls.trained = [w + rng.normal(scale=0.1, size=w.shape).astype(w.dtype) for w in cls.initial]

  def test_blocks_and_modules_partition_the_block_variables(self):
    self.assertEqual(layers.num_blocks(self.names), 3)
    block = set(layers.indices(self.names, 1))
    modules = [set(layers.indices(self.names, 1, m)) for m in layers.MODULES]
    self.assertEqual(sum(len(m) for m in modules), len(set().union(*modules)))
    # The block is its four modules and its final norm.
    rest = {self.names[i] for i in block - set().union(*modules)}
    self.assertEqual(rest, {'encoder/block_01/final_norm/gamma:0',
                            'encoder/block_01/final_norm/beta:0'})
    self.assertIn('encoder/block_01/mhsa/bias_u:0', {self.names[i] for i in modules[1]})
    self.assertEqual(layers.num_blocks(['dense/kernel:0', 'dense/bias:0']), 0)

  def test_reset_touches_only_its_block_and_restores_it_exactly(self):
    for block, module in ((0, None), (2, None), (1, 'conv'), (1, 'mhsa')):
      reset = layers.reset(self.trained, self.initial, self.names, block, module)
      chosen = set(layers.indices(self.names, block, module))
      for i, (got, trained, initial) in enumerate(zip(reset, self.trained, self.initial)):
        expected = initial if i in chosen else trained
        self.assertEqual(got.tobytes(), expected.tobytes(), (block, module, self.names[i]))
      self.assertTrue(all(self.trained[i].tobytes() != self.initial[i].tobytes()
                          for i in chosen))

  def test_rerandomization_draws_have_the_initializers_statistics(self):
    # A fresh draw (another seed) of a Glorot-uniform kernel: within the Glorot bound, with
    # the uniform distribution's standard deviation, and not the initial draw.
    names, other, _ = _model(seed=1007)
    i = names.index('encoder/block_01/ffn1/dense_in/kernel:0')
    fan_in, fan_out = other[i].shape
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    self.assertLessEqual(np.abs(other[i]).max(), limit)
    self.assertAlmostEqual(float(other[i].std()), limit / np.sqrt(3.0), delta=0.03 * limit)
    self.assertFalse(np.array_equal(other[i], self.initial[i]))
    gamma = names.index('encoder/block_01/final_norm/gamma:0')
    np.testing.assert_array_equal(other[gamma], self.initial[gamma])  # Constant initializer.

  def test_errors_name_the_problem(self):
    with self.assertRaisesRegex(layers.LayerError, 'block 7 has no variables'):
      layers.indices(self.names, 7)
    with self.assertRaisesRegex(layers.LayerError, "unknown module 'lstm'"):
      layers.indices(self.names, 0, 'lstm')
    with self.assertRaisesRegex(layers.LayerError, 'not numbered 0..1'):
      layers.num_blocks(['encoder/block_00/x/k:0', 'encoder/block_02/x/k:0'])


class SignatureTest(absltest.TestCase):

  def test_signature_is_the_frobenius_distance_over_the_largest_block(self):
    names, initial, _ = _model()
    moved = list(initial)
    # Move block 1's query kernel by 3 and block 2's by 1 in every entry; block 0 not at all.
    for block, step in ((1, 3.0), (2, 1.0)):
      i = names.index(f'encoder/block_{block:02d}/mhsa/query/kernel:0')
      moved[i] = initial[i] + step
    found = signatures.signatures(names, moved, initial)
    np.testing.assert_allclose(found['attention/query'], [0.0, 1.0, 1.0 / 3.0])
    distances = signatures.distances(names, moved, initial)
    entries = initial[names.index('encoder/block_01/mhsa/query/kernel:0')].size
    self.assertAlmostEqual(distances['attention/query'][1], 3.0 * np.sqrt(entries), places=3)
    self.assertEqual(found['conv'], [0.0, 0.0, 0.0])
    self.assertIn('signature/attention/query/block_01', signatures.flat(found))

  def test_movement_is_each_blocks_distance_over_its_initial_norm(self):
    names, initial, _ = _model()
    moved = [np.array(v) for v in initial]
    i = names.index('encoder/block_01/conv/pointwise_out/kernel:0')
    moved[i] = 1.5 * moved[i]  # Half its own norm away; block 1's other kernels stay.
    moved[names.index('encoder/block_01/mhsa/query/bias:0')] += 7.0  # Not a kernel.
    kernels = [j for j, name in enumerate(names) if name.startswith('encoder/block_01/')
               and any(name.startswith(f'encoder/block_01/{k}:')
                       for ks in signatures.KERNELS.values() for k in ks)]
    expected = 0.5 * np.linalg.norm(initial[i]) / np.sqrt(
        sum(np.sum(np.square(initial[j], dtype=np.float64)) for j in kernels))
    np.testing.assert_allclose(signatures.movement(names, moved, initial),
                               [0.0, expected, 0.0], rtol=1e-6)


if __name__ == '__main__':
  absltest.main()
