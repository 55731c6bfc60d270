"""Every learning process drops a client whose update is not finite: a round with a poisoned
client (NaN features: NaN loss, gradients and weights) equals the round without it, and a round
in which every client is poisoned leaves the server model unchanged and finite."""

import collections

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.learning import algorithms
from fl_compression import variants  # pylint: disable=unused-import
from fl_compression.models import asr
from fl_compression.models import registry
from tests import tff_test_utils

# (algorithm, options): every variant, pruning both in its pruning stage and in fine-tuning.
_VARIANTS = (
    ('fedavg', {}),
    ('tff_compression', {}),
    ('fp', {'sparsity': 0.3, 'refine_start': 2, 'finetune_start': 3}),
    ('fd', {'rate': 0.3}),
    ('omc', {'format': 'S1E4M6'}),
    ('fedaqt', {'bits': 8}),
    ('fp', {'sparsity': 0.3, 'refine_start': 2, 'finetune_start': 3, 'compress': 'fedaqt',
            'bits': 8}),
    ('zerofl', {'sparsity': 0.5, 'mask_ratio': 0.2}),
)


def _config():
  config = asr.tiny_config(vocab_size=11)
  config['encoder'].update(num_blocks=1, model_dim=32, num_heads=4, num_groups=4, dropout=0.0)
  return config


def _client(seed, poisoned=False):
  def batch(i):
    features = tf.random.stateless_normal([2, 48, 80], seed=[seed, i])
    if poisoned:
      features = features * np.nan
    return collections.OrderedDict(
        features=features,
        labels=tf.random.stateless_uniform([2, 4], seed=[seed, 100 + i], minval=1, maxval=11,
                                           dtype=tf.int32),
        feature_length=tf.constant([48, 40]), label_length=tf.constant([4, 3]))
  return tf.data.Dataset.from_tensor_slices(
      {k: tf.stack([batch(i)[k] for i in range(2)]) for k in batch(0)}).map(
          collections.OrderedDict)


def _make_model_fn(config):
  spec = _client(0).element_spec
  return lambda: asr.AsrVariableModel(registry.build_keras_model(config), spec)


def _flat(weights):
  return [np.asarray(w) for w in list(weights.trainable) + list(weights.non_trainable)]


class NonFiniteClientsTest(absltest.TestCase):

  def test_every_variant_drops_non_finite_clients(self):
    model = registry.build_keras_model(_config())
    initial = tff.learning.models.ModelWeights(
        [v.numpy() for v in model.trainable_variables],
        [v.numpy() for v in model.non_trainable_variables])
    good = [_client(1), _client(2)]
    poisoned = [_client(3, poisoned=True), _client(4, poisoned=True)]
    hparams = algorithms.Hyperparameters(client_optimizer='sgd', client_learning_rate=0.05)

    async def body():
      measured = {}
      for name, options in _VARIANTS:
        label = f'{name} {options}'
        training = algorithms.get(name).staged(algorithms.BuildContext(
            model_config=_config(), make_model_fn=_make_model_fn, hparams=hparams,
            total_rounds=4, options=options, initial_weights=initial))
        # Pruning's fine-tuning stage is a process of its own: reach it through a real round.
        round_num = options.get('finetune_start', 1)
        stage = training.build_stage(training.stage_key(1))
        state = training.initial_state(stage, initial)
        for r in range(2, round_num + 1):
          state = stage.train_process.next(state, good).state
          next_stage = training.build_stage(training.stage_key(r))
          if next_stage.key != stage.key:
            state = training.convert_state(state, stage, next_stage)
          stage = next_stage
        runs = {}
        for case, clients in (('clean', good), ('one_poisoned', good + poisoned[:1]),
                              ('all_poisoned', poisoned)):
          output = stage.train_process.next(state, clients)
          metrics = await tff.program.materialize_value(output.metrics)
          weights = await tff.program.materialize_value(stage.model_weights(output.state))
          runs[case] = (weights, metrics['client_work']['non_finite_clients'])
        before = await tff.program.materialize_value(stage.model_weights(state))
        measured[label] = (before, runs)
      return measured

    measured = tff_test_utils.run_on_local_backend(body)
    self.assertLen(measured, len(_VARIANTS))
    for label, (before, runs) in measured.items():
      clean, clean_count = runs['clean']
      one, one_count = runs['one_poisoned']
      none, none_count = runs['all_poisoned']
      self.assertEqual((clean_count, one_count, none_count), (0, 1, 2), label)
      self.assertFalse(all(np.array_equal(a, b) for a, b in zip(_flat(before), _flat(clean))),
                       f'{label}: the clean round left the model unchanged')
      for a, b in zip(_flat(one), _flat(clean)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=label)
      for a, b in zip(_flat(none), _flat(before)):
        self.assertTrue(np.all(np.isfinite(a)), label)
        np.testing.assert_array_equal(a, b, err_msg=label)


if __name__ == '__main__':
  absltest.main()
