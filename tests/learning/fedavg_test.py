import collections

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression import tasks
from fl_compression.learning import accounting
from fl_compression.learning import algorithms
from fl_compression.learning import fedavg
from fl_compression.learning import optimizers
from fl_compression.models import asr
from fl_compression.models import checkpoint
from fl_compression.models import registry
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


class TffCompressionTest(absltest.TestCase):
  """FedAvg with TFF's compression aggregator against TFF's own FedAvg with that aggregator."""

  def test_one_round_equals_tff_and_counts_the_encoded_upload(self):
    # A hidden layer of 16 x 1,600 weights: above the aggregator's 20,000-element threshold,
    # so its update is quantized; the 1,600 x 4 output layer is sent as it is.
    data = tasks.build_task('synthetic_mlp', tasks.TaskOptions(
        num_train_clients=3, examples_per_client=24, batch_size=8))
    input_spec = data.eval_dataset(data.eval_data.client_ids[0]).element_spec

    def model_fn():
      keras_model = tf.keras.Sequential([
          tf.keras.layers.InputLayer(input_shape=(16,)),
          tf.keras.layers.Dense(1600, activation='relu',
                                kernel_initializer=tf.keras.initializers.GlorotUniform(1)),
          tf.keras.layers.Dense(4, kernel_initializer=tf.keras.initializers.GlorotUniform(2))])
      return tff.learning.models.from_keras_model(
          keras_model, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
          input_spec=input_spec)

    hparams = algorithms.Hyperparameters(client_learning_rate=0.05)
    ours = algorithms.get('tff_compression').build(model_fn, hparams)
    reference = tff.learning.algorithms.build_weighted_fed_avg(
        model_fn, client_optimizer_fn=optimizers.build_optimizer('sgd', 0.05),
        server_optimizer_fn=optimizers.build_optimizer('sgd', 1.0),
        model_aggregator=tff.learning.compression_aggregator())
    dense = algorithms.get('fedavg').build(model_fn, hparams)

    async def body():
      datasets = [data.train_dataset(c) for c in data.train_data.client_ids]
      results = []
      for process in (ours, reference, dense):
        state = process.initialize()
        output = process.next(state, datasets)
        weights = await tff.program.materialize_value(process.get_model_weights(output.state))
        metrics = await tff.program.materialize_value(output.metrics)
        results.append((weights, metrics))
      initial = await tff.program.materialize_value(ours.get_model_weights(ours.initialize()))
      return initial, results

    initial, ((ours_w, ours_m), (ref_w, _), (dense_w, dense_m)) = (
        tff_test_utils.run_on_local_backend(body))
    ours_big, ref_big, dense_big, initial_big = (
        np.asarray(w.trainable[0]) for w in (ours_w, ref_w, dense_w, initial))
    dense_delta = dense_big - initial_big
    self.assertGreater(np.abs(ours_big - initial_big).max(), 1e-4)
    # The small tensors are averaged exactly; the quantized one differs from TFF's own run
    # only by its stochastic rounding (within a few of the 255 quanta of the update's range)
    # and stays close to the unquantized FedAvg update.
    for a, b in zip(_flat(ours_w)[1:], _flat(ref_w)[1:]):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    quantum = (dense_delta.max() - dense_delta.min()) / 255
    self.assertLess(np.abs(ours_big - ref_big).max(), 4 * quantum)
    self.assertGreater(np.abs(ours_big - dense_big).max(), 1e-7)
    self.assertLess(np.linalg.norm(ours_big - dense_big), 0.1 * np.linalg.norm(dense_delta))
    float_bytes = sum(np.asarray(w).nbytes for w in ours_w.trainable)
    up = ours_m['communication']['client_bytes_up']
    # At least 8 bits for each of the 25,600 quantized entries plus the small tensors in
    # float32, and at most 30% of the quantized tensor's float32 bytes (bit-packing overhead,
    # min/max, clipping and zeroing norms and counts included) on top of the small tensors.
    small = sum(np.asarray(w).size for w in ours_w.trainable[1:])
    self.assertGreaterEqual(up, 25600 + 4 * small)
    self.assertLess(up, 0.3 * 25600 * 4 + 4 * small + 64)
    self.assertLess(up, 0.5 * float_bytes)
    self.assertEqual(ours_m['communication']['client_bytes_down'],
                     dense_m['communication']['client_bytes_down'])

  def test_aggregator_walk_counts_fedavg_like_its_client_work(self):
    # Independent check of `aggregated_client_bytes`: for TFF's plain weighted mean, what its
    # intrinsics take from a client is the update and its weight, the client work's result.
    value_type = tff.StructWithPythonType(
        [tff.TensorType(np.float32, [30, 20]), tff.TensorType(np.float32, [7])], list)
    mean = tff.aggregators.MeanFactory().create(value_type, tff.TensorType(np.float32))
    self.assertEqual(accounting.aggregated_client_bytes(mean), (600 + 7 + 1) * 4)


class TrainableBlocksTest(absltest.TestCase):
  """FedAvg of a model whose `trainable_blocks` config freezes all but some encoder blocks."""

  def test_clients_train_and_upload_only_the_chosen_blocks(self):
    config = asr.tiny_config(vocab_size=11)
    config['encoder'].update(num_blocks=2, model_dim=32, num_heads=4, num_groups=4, dropout=0.0)
    frozen_config = dict(config, trainable_blocks=[1])
    spec = collections.OrderedDict(
        features=tf.TensorSpec([None, None, 80], tf.float32),
        labels=tf.TensorSpec([None, None], tf.int32),
        feature_length=tf.TensorSpec([None], tf.int32),
        label_length=tf.TensorSpec([None], tf.int32))
    data = tf.data.Dataset.from_tensors(collections.OrderedDict(
        features=tf.random.stateless_normal([2, 48, 80], seed=[1, 2]),
        labels=tf.constant([[1, 2, 3, 4], [5, 6, 7, 0]]),
        feature_length=tf.constant([48, 40]), label_length=tf.constant([4, 3]))).repeat(2)
    model_fn = lambda: asr.AsrVariableModel(registry.build_keras_model(frozen_config), spec)  # noqa: E731
    process = algorithms.get('fedavg').build(
        model_fn, algorithms.Hyperparameters(client_learning_rate=0.05))
    full = registry.build_keras_model(config)
    initial = checkpoint.reorder_weights(
        tff.learning.models.ModelWeights([v.numpy() for v in full.trainable_variables], []),
        config, frozen_config)

    async def body():
      state = process.set_model_weights(process.initialize(), initial)
      output = process.next(state, [data, data])
      weights = await tff.program.materialize_value(process.get_model_weights(output.state))
      return weights, await tff.program.materialize_value(output.metrics)

    weights, metrics = tff_test_utils.run_on_local_backend(body)
    frozen = registry.build_keras_model(frozen_config)
    self.assertEqual({v.name.split('/')[1] for v in frozen.trainable_variables}, {'block_01'})
    # Frozen variables are bit-identical; every trained one moved.
    for before, after in zip(initial.non_trainable, weights.non_trainable):
      self.assertEqual(np.asarray(before).tobytes(), np.asarray(after).tobytes())
    self.assertGreater(max(np.abs(np.asarray(a) - np.asarray(b)).max()
                           for a, b in zip(initial.trainable, weights.trainable)), 1e-5)
    # The upload is the trained block's delta and the client's weight.
    block_bytes = sum(v.shape.num_elements() * 4 for v in frozen.trainable_variables)
    self.assertEqual(metrics['communication']['client_bytes_up'], block_bytes + 4)
    # Back in the full model's order, the weights rebuild the unfrozen model.
    restored = checkpoint.reorder_weights(weights, frozen_config, config)
    self.assertEqual([np.shape(w) for w in restored.trainable],
                     [tuple(v.shape) for v in full.trainable_variables])


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
