from absl.testing import absltest
import numpy as np
import tensorflow_federated as tff

from fl_compression import tasks
from fl_compression.learning import algorithms
from fl_compression.learning import fedavg
from fl_compression.learning import optimizers
from tests import tff_test_utils


def _flat(weights):
  return [np.asarray(w) for w in list(weights.trainable) + list(weights.non_trainable)]


class FedAvgTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.task = tasks.build_task('synthetic_mlp', tasks.TaskOptions(
        num_train_clients=4, examples_per_client=24, batch_size=8))

  def test_one_round_equals_tff_weighted_fed_avg(self):
    task = self.task
    ours = fedavg.build_weighted_fed_avg(
        task.model_fn, optimizers.build_optimizer('sgd', 0.1),
        optimizers.build_optimizer('sgd', 1.0))
    reference = tff.learning.algorithms.build_weighted_fed_avg(
        task.model_fn, client_optimizer_fn=optimizers.build_optimizer('sgd', 0.1),
        server_optimizer_fn=optimizers.build_optimizer('sgd', 1.0))

    async def body():
      data = [task.train_dataset(c) for c in task.train_data.client_ids[:3]]
      results = []
      for process in (ours, reference):
        state = process.initialize()
        initial = await tff.program.materialize_value(process.get_model_weights(state))
        output = process.next(state, data)
        weights = await tff.program.materialize_value(process.get_model_weights(output.state))
        metrics = await tff.program.materialize_value(output.metrics)
        results.append((initial, weights, metrics))
      return results

    (initial, ours_w, ours_m), (_, ref_w, ref_m) = tff_test_utils.run_on_local_backend(body)
    self.assertFalse(all(np.allclose(a, b) for a, b in zip(_flat(initial), _flat(ours_w))),
                     'one round of training left the model unchanged')
    for a, b in zip(_flat(ours_w), _flat(ref_w)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for name, value in ref_m['client_work']['train'].items():
      np.testing.assert_allclose(ours_m['client_work']['train'][name], value, rtol=1e-6)

    # Bytes on the wire: the full model down, the trainable delta plus its float32 weight up.
    model_bytes = sum(w.nbytes for w in _flat(ours_w))
    delta_bytes = sum(np.asarray(w).nbytes for w in ours_w.trainable)
    self.assertEqual(ours_m['communication']['client_bytes_down'], model_bytes)
    self.assertEqual(ours_m['communication']['client_bytes_up'], delta_bytes + 4)


class AlgorithmRegistryTest(absltest.TestCase):

  def test_unknown_algorithm_names_the_known_ones(self):
    with self.assertRaisesRegex(ValueError, r"unknown algorithm 'nope'; known: .*fedavg"):
      algorithms.get('nope')

  def test_registering_a_name_twice_fails(self):
    with self.assertRaisesRegex(ValueError, 'registered twice'):
      algorithms.register('fedavg', 'again')(lambda model_fn, hparams: None)

  def test_unknown_optimizer_and_bad_learning_rate(self):
    with self.assertRaisesRegex(ValueError, "unknown optimizer 'rmsprop'"):
      optimizers.build_optimizer('rmsprop', 0.1)
    with self.assertRaisesRegex(ValueError, 'must be positive'):
      optimizers.build_optimizer('sgd', 0.0)


if __name__ == '__main__':
  absltest.main()
