import json
import os
import tempfile

from absl.testing import absltest
import numpy as np
import tensorflow_federated as tff

from fl_compression.models import checkpoint
from fl_compression.models import registry

_CONFIG = {'name': 'mlp', 'input_dim': 6, 'hidden_units': [5], 'num_classes': 3, 'seed': 1}


def _random_weights(model, seed):
  rng = np.random.default_rng(seed)
  return tff.learning.models.ModelWeights(
      trainable=[rng.normal(size=v.shape).astype(np.float32) for v in model.trainable_variables],
      non_trainable=[])


class CheckpointTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    self.model_dir = os.path.join(self.root, 'final_model')

  def test_round_trip_restores_weights_and_outputs(self):
    model = registry.build_keras_model(_CONFIG)
    weights = _random_weights(model, 0)
    weights.assign_weights_to(model)
    checkpoint.save_model(self.model_dir, _CONFIG, weights, metadata={'round': 7})
    loaded, config = checkpoint.load_keras_model(self.model_dir)
    self.assertEqual(config['model'], _CONFIG)
    self.assertEqual(config['round'], 7)
    x = np.random.default_rng(2).normal(size=(4, 6)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())

  def test_overwrite_replaces_and_leaves_no_staging(self):
    model = registry.build_keras_model(_CONFIG)
    checkpoint.save_model(self.model_dir, _CONFIG, _random_weights(model, 0))
    second = _random_weights(model, 1)
    checkpoint.save_model(self.model_dir, _CONFIG, second)
    loaded = checkpoint.load_weights(self.model_dir)
    for a, b in zip(loaded.trainable, second.trainable):
      np.testing.assert_array_equal(a, b)
    self.assertEqual(sorted(os.listdir(self.root)), ['final_model'])

  def test_weights_order_is_kept_beyond_ten_variables(self):
    config = dict(_CONFIG, hidden_units=[3] * 6)  # 14 trainable variables.
    model = registry.build_keras_model(config)
    weights = _random_weights(model, 3)
    checkpoint.save_model(self.model_dir, config, weights)
    loaded = checkpoint.load_weights(self.model_dir)
    self.assertLen(loaded.trainable, 14)
    for a, b in zip(loaded.trainable, weights.trainable):
      np.testing.assert_array_equal(a, b)

  def test_variable_names_are_the_built_models(self):
    for config in (_CONFIG, dict(_CONFIG, hidden_units=[5, 4])):
      model = registry.build_keras_model(config)
      expected = ([v.name for v in model.trainable_variables],
                  [v.name for v in model.non_trainable_variables])
      self.assertEqual(registry.variable_names(config), expected)
    # The lists are the caller's: changing one leaves the next answer alone.
    registry.variable_names(_CONFIG)[0].append('extra')
    self.assertNotIn('extra', registry.variable_names(_CONFIG)[0])

  def test_missing_directory_is_named(self):
    with self.assertRaisesRegex(FileNotFoundError, 'nowhere.*config.json is missing'):
      checkpoint.load_keras_model(os.path.join(self.root, 'nowhere'))

  def test_unknown_model_config_is_named(self):
    model = registry.build_keras_model(_CONFIG)
    checkpoint.save_model(self.model_dir, dict(_CONFIG, name='resnet'), _random_weights(model, 0))
    with self.assertRaisesRegex(ValueError, "unknown model config name 'resnet'"):
      checkpoint.load_keras_model(self.model_dir)

  def test_weights_that_do_not_fit_the_config_are_rejected(self):
    model = registry.build_keras_model(_CONFIG)
    checkpoint.save_model(self.model_dir, dict(_CONFIG, hidden_units=[9]),
                          _random_weights(model, 0))
    with self.assertRaisesRegex(ValueError, 'do not fit the model config'):
      checkpoint.load_keras_model(self.model_dir)

  def test_corrupt_config_is_reported(self):
    os.makedirs(self.model_dir)
    with open(os.path.join(self.model_dir, 'config.json'), 'w') as f:
      f.write('{not json')
    with self.assertRaisesRegex(ValueError, 'not valid JSON'):
      checkpoint.load_config(self.model_dir)
    with open(os.path.join(self.model_dir, 'config.json'), 'w') as f:
      json.dump({'format_version': 99, 'model': _CONFIG}, f)
    with self.assertRaisesRegex(ValueError, 'unsupported model format'):
      checkpoint.load_config(self.model_dir)


if __name__ == '__main__':
  absltest.main()
