from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.models import asr
from fl_compression.models import registry
from fl_compression.pruning import plan as plan_lib
from fl_compression.pruning import reduce as reduce_lib


def _config():
  config = asr.tiny_config(vocab_size=11)
  config['encoder'].update(num_blocks=1, model_dim=32, num_heads=4, num_groups=4, dropout=0.0)
  return config


class ReduceTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = _config()
    cls.full = registry.build_keras_model(cls.config)
    cls.layers = plan_lib.prunable_layers(cls.full)
    cls.extended_layers = plan_lib.prunable_layers(cls.full, 'extended')
    # Biases are zero at initialization; give them values so that dropping them shows.
    cls.weights = tff.learning.models.ModelWeights(
        trainable=[(v.numpy() + (0.1 * np.random.default_rng(i).normal(size=v.shape)
                                 if v.name.endswith('bias:0') else 0)).astype(np.float32)
                   for i, v in enumerate(cls.full.trainable_variables)],
        non_trainable=[v.numpy() for v in cls.full.non_trainable_variables])
    cls.inputs = [tf.random.stateless_normal([2, 60, 80], seed=[1, 2]), tf.constant([60, 44])]

  def _reducer(self, pattern, sparsity, importance=reduce_lib.ImportanceConfig(),
               prunable='paper'):
    layers = self.extended_layers if prunable == 'extended' else self.layers
    plan = plan_lib.make_plan(layers, pattern, sparsity)
    return reduce_lib.Reducer(self.config, plan, importance)

  def _assign(self, model, weights):
    for variable, value in zip(model.trainable_variables, weights.trainable):
      variable.assign(value)
    for variable, value in zip(model.non_trainable_variables, weights.non_trainable):
      variable.assign(value)

  @parameterized.parameters('column', 'half_row')
  def test_reduced_weights_type_is_the_traced_models(self, pattern):
    # The type the Reducer derives from its eager model stands for a trace of the reduced model
    # in a computation (the process uses it in place of that trace); the same with the caller's
    # full model.
    for full_model in (None, self.full):
      plan = plan_lib.make_plan(self.layers, pattern, 0.4)
      reducer = reduce_lib.Reducer(self.config, plan, reduce_lib.ImportanceConfig(),
                                   full_model=full_model)

      @tff.tensorflow.computation
      def traced():
        return tff.learning.models.ModelWeights.from_model(
            registry.build_keras_model(reducer.reduced_config))

      self.assertEqual(reducer.reduced_weights_type, traced.type_signature.result)
      self.assertEqual(reducer.full_parameters, self.full.count_params())

  def test_derived_variables_are_the_built_reduced_models(self):
    # The Reducer derives the reduced model's variables from the full model and the plan; they
    # are exactly the built model's, in order, for every pattern and prunable set, with and
    # without a feed-forward's coupled layer, and for a transducer's encoder and joint.
    transducer_config = asr.named_config('micro_transducer', vocab_size=11)
    transducer = registry.build_keras_model(transducer_config)
    cases = [(self.config, self.full, layers, pattern)
             for layers in (self.layers, self.extended_layers) for pattern in plan_lib.PATTERNS]
    cases += [(transducer_config, transducer, plan_lib.prunable_layers(transducer, 'extended'),
               pattern) for pattern in ('column', 'half_row')]
    for config, full, layers, pattern in cases:
      plan = plan_lib.make_plan(layers, pattern, 0.4)
      derived = reduce_lib.reduced_variable_specs(full, plan)
      built = registry.build_keras_model(dict(config, pruning=plan))
      spec = lambda v: (v.name, tuple(v.shape), v.dtype.as_numpy_dtype)  # noqa: E731
      with self.subTest(model=config['name'], pattern=pattern, layers=len(layers)):
        self.assertEqual([tuple(v) for v in derived[0]],
                         [spec(v) for v in built.trainable_variables])
        self.assertEqual([tuple(v) for v in derived[1]],
                         [spec(v) for v in built.non_trainable_variables])

  def test_variables_are_not_derived_beside_non_trainable_ones(self):
    # Where a plan's index vectors go among a model's own non-trainable variables is not
    # derivable from the variable lists: the Reducer builds the reduced model then.
    inputs = tf.keras.Input(shape=(4,))
    outputs = tf.keras.layers.Dense(3, name='dense')(
        tf.keras.layers.BatchNormalization(name='norm')(inputs))
    model = tf.keras.Model(inputs, outputs)
    plan = plan_lib.make_plan([plan_lib.LayerShape('dense', 4, 3)], 'row', 0.5)
    self.assertIsNone(reduce_lib.reduced_variable_specs(model, plan))

  @parameterized.parameters(*[(p, 'paper') for p in plan_lib.PATTERNS],
                            ('column', 'extended'), ('row', 'extended'))
  def test_reduced_model_computes_the_masked_full_model(self, pattern, prunable):
    reducer = self._reducer(pattern, 0.4, prunable=prunable)
    indices = reducer.indices(reducer.initial_server_weights(self.weights), 'free')
    small = reducer.shrink(self.weights, indices)
    reduced = registry.build_keras_model(reducer.reduced_config)
    self._assign(reduced, small)
    masked = registry.build_keras_model(self.config)
    self._assign(masked, tff.learning.models.ModelWeights(
        reducer.expand(small.trainable, indices), self.weights.non_trainable))
    np.testing.assert_allclose(reduced(self.inputs)[0].numpy(), masked(self.inputs)[0].numpy(),
                               atol=2e-5)
    count = lambda variables: sum(v.shape.num_elements() for v in variables)  # noqa: E731
    self.assertEqual(count(reduced.trainable_variables),
                     count(self.full.trainable_variables)
                     - plan_lib.removed_parameters(reducer.plan))
    if prunable == 'extended':  # The pointwise kernels and the projection are reduced too.
      names = {v.name for v in reduced.trainable_variables}
      for layer in ('block_00/conv/pointwise_in', 'block_00/conv/pointwise_out',
                    'subsampling/project'):
        self.assertNotIn(f'encoder/{layer}/kernel:0', names)

  @parameterized.parameters(*plan_lib.PATTERNS)
  def test_expand_zeroes_exactly_the_pruned_entries(self, pattern):
    reducer = self._reducer(pattern, 0.3)
    indices = reducer.indices(reducer.initial_server_weights(self.weights), 'free')
    small = reducer.shrink(self.weights, indices)
    expanded = reducer.expand(small.trainable, indices)
    names = [v.name for v in self.full.trainable_variables]
    kept = total = 0
    for layer in self.layers:
      i = names.index(layer.name + '/kernel:0')
      values = expanded[i].numpy()
      original = self.weights.trainable[i]
      nonzero = values != 0
      kept += int(nonzero.sum())
      total += values.size
      np.testing.assert_array_equal(values[nonzero], original[nonzero])  # Kept: unchanged.
    # The plan's zero-parameter ratio, counted independently on the arrays.
    self.assertAlmostEqual(1 - kept / total, plan_lib.zero_parameter_ratio(reducer.plan),
                           places=9)
    # Round trip: shrinking the expanded model gives the reduced model back.
    again = reducer.shrink(tff.learning.models.ModelWeights(expanded, self.weights.non_trainable),
                           indices)
    for a, b in zip(again.trainable, small.trainable):
      np.testing.assert_array_equal(a.numpy() if hasattr(a, 'numpy') else a,
                                    b.numpy() if hasattr(b, 'numpy') else b)

  @parameterized.parameters(('row', 'l1'), ('column', 'l2'))
  def test_magnitude_importance_keeps_the_largest_units(self, pattern, norm):
    reducer = self._reducer(pattern, 0.5, reduce_lib.ImportanceConfig('magnitude', norm))
    indices = reducer.indices(reducer.initial_server_weights(self.weights), 'free')
    names = [v.name for v in self.full.trainable_variables]
    layer = 'encoder/block_00/mhsa/value'
    kernel = np.abs(self.weights.trainable[names.index(layer + '/kernel:0')])
    axis = 1 if pattern == 'row' else 0
    scores = kernel.sum(axis) if norm == 'l1' else np.sqrt((kernel ** 2).sum(axis))
    expected = np.sort(np.argsort(-scores)[:16])
    np.testing.assert_array_equal(indices[layer][0].numpy(), expected)

  def test_mask_modes(self):
    reducer = self._reducer('row', 0.5)
    server = reducer.initial_server_weights(self.weights)
    free = reducer.indices(server, 'free')
    layer = 'encoder/block_00/mhsa/query'
    position = reducer.layer_names.index(layer)
    # Pruning phase: units pruned before stay pruned even if they now score best.
    mask = np.ones(32, np.float32)
    excluded = free[layer][0].numpy()[:4]
    mask[excluded] = 0
    server['masks'][position] = [tf.constant(mask)]
    monotone = reducer.indices(server, 'monotone')[layer][0].numpy()
    self.assertEmpty(set(excluded) & set(monotone))
    # Fine-tuning: the stored mask decides (here it has exactly 16 units).
    fixed_mask = np.zeros(32, np.float32)
    fixed_mask[::2] = 1
    server['masks'][position] = [tf.constant(fixed_mask)]
    np.testing.assert_array_equal(reducer.indices(server, 'fixed')[layer][0].numpy(),
                                  np.arange(0, 32, 2))
    # A mode chosen at run time (a tensor) selects the same units as the static one.
    for name, stored in (('monotone', mask), ('free', mask), ('fixed', fixed_mask)):
      server['masks'][position] = [tf.constant(stored)]
      static = reducer.indices(server, name)[layer][0].numpy()
      dynamic = reducer.indices(server, tf.constant(reduce_lib.MODES.index(name)))
      np.testing.assert_array_equal(dynamic[layer][0].numpy(), static)

  def test_gradient_momentum_moves_only_on_kept_entries(self):
    reducer = self._reducer('column', 0.5, reduce_lib.ImportanceConfig('gradient', 'l1', 0.5))
    server = reducer.initial_server_weights(self.weights)
    indices = reducer.indices(server, 'free')  # Zero momentum: ranked by magnitude.
    small = reducer.shrink(self.weights, indices)
    update = [tf.ones_like(v) for v in small.trainable]
    momentum = reducer.update_momentum(server['momentum'], reducer.expand(update, indices),
                                       indices)
    for layer, value in zip(reducer.layers, momentum):
      entry = reducer.plan[layer.name]
      values = value.numpy()
      self.assertEqual(set(np.unique(values)), {0.0, 0.5})
      self.assertEqual(int((values == 0.5).sum()), plan_lib.kept_area(entry))


if __name__ == '__main__':
  absltest.main()
