"""The phases of a round, timed by growing prefixes of the composed process."""

import collections

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression import variants  # pylint: disable=unused-import
from fl_compression.benchmarks import round_phases
from fl_compression.learning import algorithms
from fl_compression.models import asr
from fl_compression.models import registry
from tests import tff_test_utils


def _config():
  config = asr.tiny_config(vocab_size=11)
  config['encoder'].update(num_blocks=1, model_dim=32, num_heads=4, num_groups=4, dropout=0.0)
  return config


def _client(seed):
  def batch(i):
    return collections.OrderedDict(
        features=tf.random.stateless_normal([2, 48, 80], seed=[seed, i]),
        labels=tf.random.stateless_uniform([2, 4], seed=[seed, 100 + i], minval=1, maxval=11,
                                           dtype=tf.int32),
        feature_length=tf.constant([48, 40]), label_length=tf.constant([4, 3]))
  return tf.data.Dataset.from_tensor_slices(
      {k: tf.stack([batch(i)[k] for i in range(2)]) for k in batch(0)}).map(
          collections.OrderedDict)


def _make_model_fn(config):
  spec = _client(0).element_spec
  return lambda: asr.AsrVariableModel(registry.build_keras_model(config), spec)


class RoundPhasesTest(absltest.TestCase):

  def test_phases_of_fedavg_and_pruning_rounds(self):
    clients = [_client(1), _client(2)]
    hparams = algorithms.Hyperparameters(client_learning_rate=0.05)

    async def body():
      found = {}
      for name, options in (('fedavg', {}), ('fp', {'sparsity': 0.5, 'refine_start': 2,
                                                    'finetune_start': 3})):
        training = algorithms.get(name).staged(algorithms.BuildContext(
            model_config=_config(), make_model_fn=_make_model_fn, hparams=hparams,
            total_rounds=3, options=options))
        stage = training.build_stage(training.stage_key(1))
        state = training.initial_state(stage)
        found[name] = await round_phases.time_round(stage.train_process, state, clients)
        if name == 'fedavg':
          # The aggregator prefix computes the round's mean update: with server SGD at rate
          # 1.0, the fused round moves the model by exactly that.
          mean = await tff.program.materialize_value(
              round_phases.prefixes(stage.train_process)['aggregator'](state, clients))
          before = await tff.program.materialize_value(
              stage.train_process.get_model_weights(state))
          output = stage.train_process.next(state, clients)
          after = await tff.program.materialize_value(
              stage.train_process.get_model_weights(output.state))
          found['moved'] = [(b - a, m) for b, a, m in zip(before.trainable, after.trainable,
                                                          mean)]
      return found

    found = tff_test_utils.run_on_local_backend(body)
    for step, mean in found.pop('moved'):
      np.testing.assert_allclose(step, mean, rtol=1e-5, atol=1e-7)
    for name, times in found.items():
      self.assertEqual(set(times), set(round_phases.PHASES) | {'round'}, name)
      self.assertTrue(all(np.isfinite(t) for t in times.values()), (name, times))
      self.assertAlmostEqual(sum(times[p] for p in round_phases.PHASES), times['round'])
      self.assertGreater(times['round'], 0.0, name)


if __name__ == '__main__':
  absltest.main()
