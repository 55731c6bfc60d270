"""tfmot's prune_low_magnitude on the layers federated pruning prunes (the centralized anchor)."""

import collections

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.models import asr
from fl_compression.models import registry
from fl_compression.pruning import centralized
from fl_compression.pruning import plan as plan_lib


def _config():
  config = asr.tiny_config(vocab_size=11)
  config['encoder'].update(num_blocks=1, model_dim=32, num_heads=4, num_groups=4, dropout=0.0)
  return config


def _batches():
  i = 0
  while True:
    yield collections.OrderedDict(
        features=tf.random.stateless_normal([2, 48, 80], seed=[1, i]),
        labels=tf.random.stateless_uniform([2, 4], seed=[2, i], minval=1, maxval=11,
                                           dtype=tf.int32),
        feature_length=tf.constant([48, 40]), label_length=tf.constant([4, 3]))
    i += 1


class CentralizedPruningTest(absltest.TestCase):

  def test_prunes_exactly_the_prunable_kernels_to_the_target(self):
    model = registry.build_keras_model(_config())
    start = tff.learning.models.ModelWeights([v.numpy() for v in model.trainable_variables],
                                             [v.numpy() for v in model.non_trainable_variables])
    result = centralized.prune_low_magnitude(_config(), start, _batches(), sparsity=0.5,
                                             steps=6, learning_rate=1e-3, frequency=2)
    self.assertEqual(result.steps, 6)
    self.assertTrue(np.isfinite(result.mean_loss_last_steps))
    names = [v.name for v in model.trainable_variables]
    prunable = {layer.name + '/kernel:0' for layer in plan_lib.prunable_layers(model)}
    self.assertNotEmpty(prunable)
    for name, before, after in zip(names, start.trainable, result.weights.trainable):
      self.assertEqual(np.shape(before), np.shape(after), name)
      zero = np.mean(after == 0)
      if name in prunable:
        # tfmot's per-layer magnitude masks: half of each kernel, the smaller half.
        self.assertAlmostEqual(zero, 0.5, delta=0.02, msg=name)
      elif np.ndim(after) == 2:
        self.assertLess(zero, 0.05, name)  # Not pruned (e.g. the convolution module).
    self.assertAlmostEqual(result.achieved_sparsity, 0.5, delta=0.02)
    # The weights train (not only masking) and load into the plain model.
    moved = [np.max(np.abs(a - b)) for n, a, b in
             zip(names, start.trainable, result.weights.trainable) if n not in prunable]
    self.assertGreater(max(moved), 0)
    for variable, value in zip(model.trainable_variables, result.weights.trainable):
      variable.assign(value)

  def test_sparsity_outside_the_range_is_refused(self):
    with self.assertRaisesRegex(plan_lib.PlanError, 'sparsity'):
      centralized.prune_low_magnitude(_config(), None, _batches(), sparsity=1.0, steps=1,
                                      learning_rate=1e-3)


if __name__ == '__main__':
  absltest.main()
