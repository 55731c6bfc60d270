"""ZeroFL on TFF's runtime: SWAT clients, sparse uploads and the server's mean over senders,
each against an independent eager/numpy computation of the same round."""

import asyncio
import collections

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.compression import codecs
from fl_compression.compression import float_format as ff
from fl_compression.learning import accounting
from fl_compression.learning import algorithms
from fl_compression.learning import optimizers
from fl_compression.models import asr
from fl_compression.models import registry
from fl_compression.zerofl import process
from fl_compression.zerofl import swat
from fl_compression.zerofl import upload
from tests import tff_test_utils
from tff_programs import backends

_LR = 0.05


def _config():
  config = asr.tiny_config(vocab_size=11)
  config['encoder'].update(num_blocks=1, model_dim=32, num_heads=4, num_groups=4, dropout=0.0)
  return config


def _client_data(seed, batches=2):
  def batch(i):
    return collections.OrderedDict(
        features=tf.random.stateless_normal([2, 48, 80], seed=[seed, i]),
        labels=tf.random.stateless_uniform([2, 4], seed=[seed, 100 + i], minval=1, maxval=11,
                                           dtype=tf.int32),
        feature_length=tf.constant([48, 40]), label_length=tf.constant([4, 3]))
  return tf.data.Dataset.from_tensor_slices(
      {k: tf.stack([batch(i)[k] for i in range(batches)]) for k in batch(0)}).map(
          collections.OrderedDict)


def _model_fn():
  return asr.AsrVariableModel(registry.build_keras_model(_config()), _client_data(0).element_spec)


def _initial_weights():
  model = registry.build_keras_model(_config())
  return tff.learning.models.ModelWeights(
      [v.numpy() for v in model.trainable_variables],
      [v.numpy() for v in model.non_trainable_variables])


def _reference_client(config, weights, dataset):
  """The client's local SWAT training, eagerly with plain SGD: its trained trainable weights."""
  model = process.swat_model_fn(_model_fn, config)()
  for v, x in zip(model.trainable_variables, weights.trainable):
    v.assign(x)
  for v, x in zip(model.non_trainable_variables, weights.non_trainable):
    v.assign(x)
  for batch in dataset:
    with tf.GradientTape() as tape:
      loss = model.forward_pass(batch, training=True).loss
    grads = tape.gradient(loss, model.trainable_variables)
    for v, g in zip(model.trainable_variables, grads):
      v.assign_sub(_LR * g)
  return [v.numpy() for v in model.trainable_variables]


def _top(values, k):
  order = np.argsort(-np.abs(values).ravel(), kind='stable')[:k]
  mask = np.zeros(values.size, bool)
  mask[order] = True
  return mask.reshape(values.shape)


class ZeroFLProcessTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.initial = _initial_weights()
    cls.clients = [_client_data(s) for s in (1, 2, 3)]
    cls.examples = np.array([4.0, 4.0, 4.0])

  def _round(self, config, clients=None):
    swat_vars = process.swat_variables(_config(), config)
    learning_process = process.build_zerofl(
        _model_fn, config, swat_vars, optimizers.build_optimizer('sgd', _LR),
        optimizers.build_optimizer('sgd', 1.0))

    async def body():
      state = learning_process.set_model_weights(learning_process.initialize(), self.initial)
      output = learning_process.next(state, clients or self.clients)
      new = await tff.program.materialize_value(learning_process.get_model_weights(output.state))
      metrics = await tff.program.materialize_value(output.metrics)
      return new, metrics

    new, metrics = tff_test_utils.run_on_local_backend(body)
    return learning_process, swat_vars, new, metrics

  def test_swat_layers_are_the_conformer_blocks_dense_kernels(self):
    config = process.ZeroFLConfig()
    model = registry.build_keras_model(_config())
    swat_vars = process.swat_variables(_config(), config)
    names = [v.name for v, s in zip(model.trainable_variables, swat_vars) if s]
    self.assertNotEmpty(names)
    for name in names:
      self.assertIn('block_00', name)
      self.assertIn('kernel', name)
    others = [v.name for v, s in zip(model.trainable_variables, swat_vars) if not s]
    self.assertTrue(any('ctc_head' in n for n in others))
    self.assertTrue(any('subsampling' in n and 'project' in n for n in others))
    self.assertTrue(any('pointwise_in' in n for n in names))

  def test_client_forward_equals_the_plain_model_with_top_k_weights(self):
    config = process.ZeroFLConfig(sparsity=0.8)
    swat_vars = process.swat_variables(_config(), config)
    swat_model = process.swat_model_fn(_model_fn, config)()
    plain = _model_fn()
    masked = process.masked_weights(config, swat_vars, self.initial)
    for v, x in zip(swat_model.trainable_variables, self.initial.trainable):
      v.assign(x)
    for v, x in zip(plain.trainable_variables, masked.trainable):
      v.assign(x)
    batch = next(iter(self.clients[0]))
    a = swat_model.predict_on_batch(batch, training=False)
    b = plain.predict_on_batch(batch, training=False)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
    # The masks are not trivial: the dense model differs.
    for v, x in zip(plain.trainable_variables, self.initial.trainable):
      v.assign(x)
    self.assertGreater(np.abs(plain.predict_on_batch(batch, training=False).numpy()
                              - a.numpy()).max(), 1e-3)

  def _check_round_against_numpy(self, config):
    _, swat_vars, new, metrics = self._round(config)
    trained = [_reference_client(config, self.initial, c) for c in self.clients]
    shapes = [w.shape for w in self.initial.trainable]
    totals = [np.zeros(s) for s in shapes]
    senders = [np.zeros(s) for s in shapes]
    sent_any_different = False
    for t, n in zip(trained, self.examples):
      for i, (w0, w1) in enumerate(zip(self.initial.trainable, t)):
        delta = w0 - w1
        if swat_vars[i]:
          sent = _top(w1, upload.upload_count(w1.size, config.sparsity, config.mask_ratio))
          sent_any_different |= not np.array_equal(sent, _top(
              trained[0][i], upload.upload_count(w1.size, config.sparsity, config.mask_ratio)))
        else:
          sent = np.ones(w1.shape, bool)
        totals[i] += n * np.where(sent, delta, 0.0)
        senders[i] += n * sent
    self.assertTrue(sent_any_different, 'the clients sent the same positions')
    for i, w0 in enumerate(self.initial.trainable):
      if config.aggregation == 'mean_of_senders':
        mean = np.where(senders[i] > 0, totals[i] / np.maximum(senders[i], 1e-30), 0.0)
      else:
        mean = totals[i] / self.examples.sum()
      np.testing.assert_allclose(new.trainable[i], w0 - mean, rtol=1e-4, atol=2e-5,
                                 err_msg=f'variable {i}')
    return swat_vars, trained, metrics

  def test_mean_over_senders_against_numpy(self):
    config = process.ZeroFLConfig(sparsity=0.9, mask_ratio=0.2)
    swat_vars, trained, metrics = self._check_round_against_numpy(config)
    # Bytes: each client's encoded buffers (values, position buffers, dense deltas) + weight.
    measured = []
    for t in trained:
      delta = [w0 - w1 for w0, w1 in zip(self.initial.trainable, t)]
      layout = process._layout(config, tff.types.to_type(
          tff.learning.models.ModelWeights(
              [tff.TensorType(np.float32, w.shape) for w in self.initial.trainable], [])),
          swat_vars)
      encoded, nbytes = process.encode_update(config, layout, [tf.constant(x) for x in t],
                                              [tf.constant(x) for x in delta])
      buffers = sum(np.asarray(leaf).nbytes for leaf in tf.nest.flatten(encoded))
      self.assertEqual(int(nbytes), buffers)
      measured.append(buffers + 4)
    self.assertAlmostEqual(metrics['communication']['client_bytes_up'], np.mean(measured),
                           delta=1)
    # At most float32 values plus a bitmap per SWAT matrix (the encoder picks gaps only when
    # smaller), the other variables dense.
    bound = 4 + sum(
        4 * upload.upload_count(w.size, 0.9, 0.2) + upload.bitmap_bytes(w.size) if s else w.nbytes
        for w, s in zip(self.initial.trainable, swat_vars))
    self.assertLessEqual(metrics['communication']['client_bytes_up'], bound)
    self.assertLess(bound, sum(w.nbytes for w in self.initial.trainable))
    total = sum(w.size for w in self.initial.trainable)
    sent = sum(upload.upload_count(w.size, 0.9, 0.2) if s else w.size
               for w, s in zip(self.initial.trainable, swat_vars))
    self.assertAlmostEqual(metrics['client_work']['uploaded_fraction'], sent / total, places=5)
    entered = np.mean([sum(np.sum(_top(w1, swat.kept_count(w1.size, 0.1))
                                  & ~_top(w0, swat.kept_count(w0.size, 0.1)))
                           for w0, w1, s in zip(self.initial.trainable, t, swat_vars) if s)
                       for t in trained])
    kept = sum(swat.kept_count(w.size, 0.1) for w, s in zip(self.initial.trainable, swat_vars)
               if s)
    self.assertAlmostEqual(metrics['client_work']['top_k_changes'], entered / kept, places=5)
    self.assertGreater(entered, 0)

  def test_zero_fill_against_numpy(self):
    self._check_round_against_numpy(process.ZeroFLConfig(sparsity=0.9, mask_ratio=0.2,
                                                         aggregation='zero_fill'))

  def test_whole_upload_is_swat_with_the_dense_delta_and_type_sized_bytes(self):
    config = process.ZeroFLConfig(sparsity=0.9, mask_ratio=0.0, upload='whole')
    learning_process, _, new, metrics = self._round(config)
    trained = [_reference_client(config, self.initial, c) for c in self.clients]
    for i, w0 in enumerate(self.initial.trainable):
      mean = np.mean([w0 - t[i] for t in trained], axis=0)
      np.testing.assert_allclose(new.trainable[i], w0 - mean, rtol=1e-4, atol=2e-5)
    client_result = learning_process.blocks['client_work'].next.type_signature.result.result
    self.assertEqual(metrics['communication']['client_bytes_up'],
                     accounting.type_nbytes(client_result))
    self.assertEqual(metrics['client_work']['uploaded_fraction'], 1.0)

  def test_float_upload_decodes_to_exactly_the_update_at_the_sent_positions(self):
    rng = np.random.default_rng(1)
    weights_type = tff.types.to_type(tff.learning.models.ModelWeights(
        [tff.TensorType(np.float32, (40, 30)), tff.TensorType(np.float32, (30,))], []))
    # 60% and 5% of the entries: positions as a bitmap, then as varint gaps (the smaller).
    for sparsity, mask_ratio, encoding in ((0.5, 0.1, 'bitmap'), (0.95, 0.0, 'gaps')):
      config = process.ZeroFLConfig(sparsity=sparsity, mask_ratio=mask_ratio)
      trained = [tf.constant(rng.normal(size=(40, 30)).astype(np.float32)),
                 tf.constant(rng.normal(size=(30,)).astype(np.float32))]
      delta = [tf.constant(rng.normal(size=(40, 30)).astype(np.float32)),
               tf.constant(rng.normal(size=(30,)).astype(np.float32))]
      layout = process._layout(config, weights_type, [True, False])
      encoded, nbytes = process.encode_update(config, layout, trained, delta)
      decoded, sent = process.decode_update(config, layout, encoded)
      count = layout.counts[0]
      mask = _top(trained[0].numpy(), count)
      np.testing.assert_array_equal(sent[0].numpy() > 0, mask)
      np.testing.assert_array_equal(decoded[0].numpy(), np.where(mask, delta[0].numpy(), 0))
      np.testing.assert_array_equal(decoded[1].numpy(), delta[1].numpy())
      positions = encoded[0]['positions'].numpy().size
      if encoding == 'bitmap':
        self.assertEqual(positions, upload.bitmap_bytes(1200))
      else:
        self.assertLess(positions, upload.bitmap_bytes(1200))
      self.assertEqual(int(nbytes), 4 * count + positions + 4 * 30)
      self.assertEqual(int(nbytes), sum(np.asarray(leaf).nbytes
                                        for leaf in tf.nest.flatten(encoded)))

  def test_omc_values_decode_to_the_codec_roundtrip(self):
    codec = codecs.OmcCodec(ff.parse('S1E4M6'))
    config = process.ZeroFLConfig(sparsity=0.5, mask_ratio=0.1, values_codec=codec)
    rng = np.random.default_rng(0)
    trained = [tf.constant(rng.normal(size=(40, 30)).astype(np.float32)),
               tf.constant(rng.normal(size=(30,)).astype(np.float32))]
    delta = [tf.constant(rng.normal(size=(40, 30)).astype(np.float32)),
             tf.constant(rng.normal(size=(30,)).astype(np.float32))]
    weights_type = tff.types.to_type(tff.learning.models.ModelWeights(
        [tff.TensorType(np.float32, (40, 30)), tff.TensorType(np.float32, (30,))], []))
    layout = process._layout(config, weights_type, [True, False])
    encoded, nbytes = process.encode_update(config, layout, trained, delta)
    decoded, sent = process.decode_update(config, layout, encoded)
    mask = _top(trained[0].numpy(), 720)
    np.testing.assert_array_equal(sent[0].numpy() > 0, mask)
    expected = np.zeros(1200, np.float32)
    expected[mask.ravel()] = codec.roundtrip(
        tf.constant(delta[0].numpy()[mask])).numpy()
    np.testing.assert_allclose(decoded[0].numpy().ravel(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(decoded[1].numpy(), delta[1].numpy())
    self.assertEqual(int(nbytes), sum(np.asarray(leaf).nbytes
                                      for leaf in tf.nest.flatten(encoded)))
    self.assertLess(int(nbytes), 4 * 720 + 4 * 30)

  def test_two_loopback_workers_match_the_local_backend(self):
    config = process.ZeroFLConfig(sparsity=0.9, mask_ratio=0.2)
    learning_process = process.build_zerofl(
        _model_fn, config, process.swat_variables(_config(), config),
        optimizers.build_optimizer('sgd', _LR), optimizers.build_optimizer('sgd', 1.0))
    clients = self.clients + [_client_data(4)]

    async def one_round():
      state = learning_process.set_model_weights(learning_process.initialize(), self.initial)
      output = learning_process.next(state, clients)
      return (await tff.program.materialize_value(learning_process.get_model_weights(
          output.state)), await tff.program.materialize_value(output.metrics))

    with backends.federated_context('local'):
      local_weights, local_metrics = asyncio.run(one_round())
    workers = [backends.WorkerProcess().start() for _ in range(2)]
    for worker in workers:
      self.addCleanup(worker.stop)
    with backends.federated_context('workers', workers=[w.address for w in workers]):
      remote_weights, remote_metrics = asyncio.run(one_round())
    for a, b in zip(local_weights.trainable, remote_weights.trainable):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    self.assertEqual(local_metrics['communication'], remote_metrics['communication'])

  def test_bad_settings_are_one_line_errors(self):
    for options, message in (
        ({'sparsity': 1.0}, '--zerofl_sparsity=1.0 is outside [0, 1)'),
        ({'sparsity': -0.1}, '--zerofl_sparsity=-0.1 is outside [0, 1)'),
        ({'sparsity': 0.5, 'mask_ratio': 0.6}, 'uploads more than the whole matrix'),
        ({'mask_ratio': -0.1}, '--zerofl_mask_ratio=-0.1 is outside [0, 1]'),
        ({'activation_sparsity': 1.0}, '--zerofl_activation_sparsity=1.0 is outside'),
        ({'aggregation': 'median'}, "--zerofl_aggregation='median' is unknown"),
        ({'compress': 'zip'}, "--zerofl_compress='zip' is unknown"),
        ({'compress': 'omc', 'format': 'S1E9M9'}, '--omc_format'),
        ({'ramp_rounds': -1}, '--zerofl_ramp_rounds=-1 is negative'),
        ({'ramp_rounds': 4, 'ramp_steps': 0}, '--zerofl_ramp_steps=0 must be positive')):
      with self.assertRaises(process.ConfigError) as raised:
        process.config_from_options(options)
      self.assertIn(message, str(raised.exception))
      self.assertNotIn('\n', str(raised.exception))

  def test_ramp_raises_the_sparsity_in_equal_steps(self):
    config = process.ZeroFLConfig(sparsity=0.8, mask_ratio=0.2, ramp_rounds=6, ramp_steps=3)
    schedule = [config.sparsity_at(r) for r in range(1, 9)]
    np.testing.assert_allclose(schedule[:4], [0.8 / 3, 0.8 / 3, 1.6 / 3, 1.6 / 3])
    self.assertEqual(schedule[4:], [0.8] * 4)  # Exactly the target from the last step on.
    # Below the mask ratio, at most the whole matrix is uploaded.
    step = config.at_sparsity(0.1)
    self.assertEqual((step.sparsity, step.mask_ratio, step.ramp_rounds), (0.1, 0.1, 0))
    self.assertEqual(process.ZeroFLConfig(sparsity=0.9).sparsity_at(1), 0.9)

  def test_ramp_runs_a_process_per_step_and_carries_the_model_across(self):
    from fl_compression import variants  # pylint: disable=g-import-not-at-top,unused-import
    training = algorithms.get('zerofl').staged(algorithms.BuildContext(
        model_config=_config(), make_model_fn=lambda config: _model_fn,
        hparams=algorithms.Hyperparameters(client_optimizer='sgd', client_learning_rate=_LR),
        total_rounds=3, options={'sparsity': 0.8, 'mask_ratio': 0.2, 'ramp_rounds': 2,
                                 'ramp_steps': 2}))
    keys = [training.stage_key(r) for r in (1, 2, 3)]
    self.assertEqual(keys, ['sparsity 0.4', 'sparsity 0.8', 'sparsity 0.8'])
    first, second = training.build_stage(keys[0]), training.build_stage(keys[1])
    self.assertIs(training.build_stage(keys[2]), second)

    async def body():
      state = training.initial_state(first, self.initial)
      state = first.train_process.next(state, self.clients[:1]).state
      before = await tff.program.materialize_value(first.train_process.get_model_weights(state))
      seen = await tff.program.materialize_value(first.model_weights(state))
      state = training.convert_state(state, first, second)
      after = await tff.program.materialize_value(second.train_process.get_model_weights(state))
      masked = await tff.program.materialize_value(second.model_weights(state))
      output = second.train_process.next(state, self.clients[:1])
      metrics = await tff.program.materialize_value(output.metrics)
      return before, seen, after, masked, metrics

    before, seen, after, masked, metrics = tff_test_utils.run_on_local_backend(body)
    for a, b in zip(list(before.trainable) + list(before.non_trainable),
                    list(after.trainable) + list(after.non_trainable)):
      np.testing.assert_array_equal(a, b)  # The dense server model carries over exactly.
    swat_vars = process.swat_variables(_config(), process.ZeroFLConfig())
    for flag, a, b in zip(swat_vars, seen.trainable, masked.trainable):
      if flag:  # Evaluated with the stage's top-k: 60%, then 20% of each SWAT kernel.
        self.assertAlmostEqual(np.count_nonzero(a) / a.size, 0.6, delta=0.01)
        self.assertAlmostEqual(np.count_nonzero(b) / b.size, 0.2, delta=0.01)
    # The second step uploads the top 1 - 0.8 + 0.2 of each SWAT kernel, the rest whole.
    sizes = [w.size for w in self.initial.trainable]
    sent = sum(upload.upload_count(n, 0.8, 0.2) if flag else n
               for n, flag in zip(sizes, swat_vars))
    self.assertAlmostEqual(float(metrics['client_work']['uploaded_fraction']), sent / sum(sizes),
                           places=5)

  def test_registered_for_the_program(self):
    from fl_compression import variants  # pylint: disable=g-import-not-at-top,unused-import
    self.assertIn('zerofl', algorithms.names())


if __name__ == '__main__':
  absltest.main()
