"""OMC and FedAQT processes on TFF's runtime: FedAvg equivalence, wire formats, client rules."""

import collections

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.compression import aqt
from fl_compression.compression import codecs
from fl_compression.compression import float_format as ff
from fl_compression.compression import omc
from fl_compression.compression import process
from fl_compression.learning import algorithms
from fl_compression.learning import fedavg
from fl_compression.learning import optimizers
from fl_compression.models import asr
from fl_compression.models import pruned_dense
from fl_compression.models import registry
from tests import tff_test_utils


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
  spec = _client_data(0).element_spec
  return asr.AsrVariableModel(registry.build_keras_model(_config()), spec)


def _initial_weights():
  model = registry.build_keras_model(_config())
  return tff.learning.models.ModelWeights(
      [v.numpy() for v in model.trainable_variables],
      [v.numpy() for v in model.non_trainable_variables])


def _build(config, client_optimizer='sgd', client_lr=0.05):
  return process.build_compressed_fed_avg(
      _model_fn, config, client_optimizer=optimizers.build_optimizer(client_optimizer, client_lr),
      server_optimizer=optimizers.build_optimizer('sgd', 1.0))


def _run_round(learning_process, weights, clients):
  """One round from `weights`: (new server weights, metrics)."""

  async def body():
    state = learning_process.set_model_weights(learning_process.initialize(), weights)
    output = learning_process.next(state, clients)
    new = await tff.program.materialize_value(learning_process.get_model_weights(output.state))
    metrics = await tff.program.materialize_value(output.metrics)
    return new, metrics

  return tff_test_utils.run_on_local_backend(body)


def _covered(weights):
  return [w.ndim >= 2 for w in weights.trainable]


class FingerprintTest(absltest.TestCase):

  def test_first_batch_sum_bits_also_without_autograph(self):
    data = _client_data(7)
    first = next(iter(data))
    expected = tf.bitcast(tf.add_n([tf.reduce_sum(tf.cast(v, tf.float32))
                                    for v in tf.nest.flatten(first)]), tf.int32)
    self.assertEqual(int(process.fingerprint(data)), int(expected))
    # Traced as AutoGraph's fallback runs code it cannot convert: it must still terminate.
    traced = tf.function(process.fingerprint, autograph=False)
    self.assertEqual(int(traced(data)), int(expected))
    self.assertNotEqual(int(process.fingerprint(_client_data(8))), int(expected))


_CONDITIONALS = ('If', 'StatelessIf', 'Case', 'StatelessCase')


def _tensorflow_op_counts(computation: tff.Computation) -> collections.Counter:
  """Op types over every TensorFlow graph in `computation`, function libraries included."""
  counts = collections.Counter()
  for graph in tff_test_utils.tensorflow_graphs(computation):
    counts.update(node.op for node in graph.node)
    for function in graph.library.function:
      counts.update(node.op for node in function.node_def)
  return counts


class ClientGraphTest(absltest.TestCase):

  def test_compressed_clients_have_no_more_conditionals_than_fedavg_client(self):
    # Inside the client's dataset reduction, a functional conditional runs each branch as a
    # function call of its own: one per matrix and step cost a quarter of a tiny model's
    # client step. The client's selection of compressed matrices is arithmetic instead.
    sgd = optimizers.build_optimizer('sgd', 0.05)
    blocks = fedavg.fedavg_blocks(_model_fn, sgd, sgd)
    reference = _tensorflow_op_counts(blocks['client_work'].next)
    self.assertGreater(sum(reference.values()), 100)  # The walk reached the client's graph.
    weights_type = blocks['initial_model_weights_fn'].type_signature.result
    configs = {
        'omc': process.CompressionConfig(codecs.OmcCodec(ff.parse('S1E4M6'))),
        'omc partial, stochastic': process.CompressionConfig(
            codecs.OmcCodec(ff.parse('S1E4M6'), rounding='stochastic'), fraction=0.5),
        'fedaqt': process.aqt_config({'bits': 8, 'activations': False}),
    }
    for name, config in configs.items():
      covered = process.covered_variables(config, weights_type)
      client_work, _ = process.client_blocks(
          _model_fn, config, sgd, weights_type,
          process.broadcast_type(config, weights_type, covered), covered)
      counts = _tensorflow_op_counts(client_work.next)
      with self.subTest(name):
        self.assertLessEqual(sum(counts[op] for op in _CONDITIONALS),
                             sum(reference[op] for op in _CONDITIONALS))
        # The selection and codec are in this graph: it differs from FedAvg's.
        self.assertGreater(sum(counts.values()), sum(reference.values()))


class CompressedProcessTest(absltest.TestCase):

  def test_lossless_format_round_equals_fedavg_round(self):
    # S1E8M23 is float32 itself: with no transform, OMC's round must be FedAvg's round.
    weights = _initial_weights()
    clients = [_client_data(1), _client_data(2)]
    config = process.CompressionConfig(codecs.OmcCodec(ff.parse('S1E8M23'), transform=False))
    server, _ = _run_round(_build(config), weights, clients)
    fedavg = algorithms.get('fedavg').build(
        _model_fn, algorithms.Hyperparameters(client_learning_rate=0.05))
    reference, reference_metrics = _run_round(fedavg, weights, clients)
    # The type-only accounting of FedAvg's traffic is the process's own measurement.
    self.assertEqual(dict(process.float_client_traffic(process.weights_type_of(_config()))),
                     {k: reference_metrics['communication'][k]
                      for k in ('client_bytes_down', 'client_bytes_up')})
    moved = 0.0
    for a, b, w in zip(server.trainable, reference.trainable, weights.trainable):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
      moved += float(np.abs(b - w).sum())
    self.assertGreater(moved, 0.0)

  def test_omc_wire_is_packed_and_upload_is_format_values(self):
    weights = _initial_weights()
    fmt = ff.parse('S1E4M6')
    codec = codecs.OmcCodec(fmt, transform=False)
    config = process.CompressionConfig(codec)
    server, metrics = _run_round(_build(config), weights, [_client_data(3)])
    covered = _covered(weights)
    self.assertGreater(sum(covered), 4)
    # Bytes are those of the packed arrays: 11 bits per covered value (+ 2 scalars), float32
    # for the rest; down adds the round number, up the client weight.
    packed = sum(4 * ff.packed_words(w.size, 11) + 8 for w, c in
                 zip(weights.trainable, covered) if c)
    floats = sum(w.nbytes for w, c in zip(weights.trainable, covered) if not c)
    floats += sum(w.nbytes for w in weights.non_trainable)
    communication = metrics['communication']
    self.assertEqual(communication['client_bytes_down'], packed + floats + 4)
    self.assertEqual(communication['client_bytes_up'],
                     packed + floats - sum(w.nbytes for w in weights.non_trainable) + 4)
    float_model = sum(w.nbytes for w in weights.trainable) + sum(
        w.nbytes for w in weights.non_trainable)
    self.assertLess(communication['client_bytes_down'], 0.45 * float_model)
    # The type-only accounting (any model size, no tracing) is the process's own measurement.
    self.assertEqual(dict(process.client_traffic(config, process.weights_type_of(_config()))),
                     {k: communication[k] for k in ('client_bytes_down', 'client_bytes_up')})
    self.assertEqual(metrics['client_work']['held_parameter_bytes'], packed + floats)
    # One client, server SGD at rate 1: old - new is the decoded upload, so every covered
    # variable's change is a value of the format (up to the float32 rounding of the server's
    # subtraction, far below the format's 2^-7 relative spacing).
    for old, new, c in zip(weights.trainable, server.trainable, covered):
      if c:
        change = tf.constant(old - new)
        np.testing.assert_allclose(ff.quantize(change, fmt).numpy(), change.numpy(), rtol=0,
                                   atol=4 * np.spacing(np.abs(new).max()))
        self.assertGreater(float(tf.reduce_max(tf.abs(change))), 0.0)

  def test_partial_quantization_holds_some_matrices_in_float(self):
    weights = _initial_weights()
    codec = codecs.OmcCodec(ff.parse('S1E4M6'))
    covered = _covered(weights)
    all_bytes = sum(codec.nbytes(w.shape) if c else w.nbytes
                    for w, c in zip(weights.trainable, covered))
    float_bytes = sum(w.nbytes for w in weights.trainable)
    held = {}
    for fraction in (0.0, 0.5, 1.0):
      _, metrics = _run_round(_build(process.CompressionConfig(codec, fraction=fraction)),
                              weights, [_client_data(4)])
      held[fraction] = metrics['client_work']['held_parameter_bytes'] - sum(
          w.nbytes for w in weights.non_trainable)
    self.assertEqual(held[0.0], float_bytes)
    self.assertEqual(held[1.0], all_bytes)
    self.assertLess(held[1.0], held[0.5])
    self.assertLess(held[0.5], held[0.0])
    # The client draws its half from round 1 and the fingerprint of its first batch, which it
    # takes while training on it: the same draw as from the dataset's own fingerprint.
    chosen = iter(omc.select_compressed(
        sum(covered), 0.5, tf.stack([1, process.fingerprint(_client_data(4))])).numpy())
    self.assertEqual(held[0.5], sum(
        (codec.nbytes(w.shape) if next(chosen) else w.nbytes) if c else w.nbytes
        for w, c in zip(weights.trainable, covered)))

  def test_per_variable_codecs_hold_and_send_each_matrix_in_its_format(self):
    # `--omc_allocation=importance`'s mechanism: the first covered matrix in S1E4M5, the rest in
    # S1E4M7; one client, server SGD at rate 1: each change is a value of its own format.
    weights = _initial_weights()
    covered = _covered(weights)
    first = covered.index(True)
    formats = [ff.parse('S1E4M5' if i == first else 'S1E4M7') for i in range(len(covered))]
    per_variable = tuple(codecs.OmcCodec(f, transform=False) for f in formats)
    config = process.CompressionConfig(per_variable[-1], variable_codecs=per_variable)
    server, metrics = _run_round(_build(config), weights, [_client_data(6)])
    self.assertEqual(metrics['client_work']['held_parameter_bytes'], sum(
        (c.nbytes(w.shape) if cov else w.nbytes)
        for c, w, cov in zip(per_variable, weights.trainable, covered)) + sum(
            w.nbytes for w in weights.non_trainable))
    for old, new, cov, fmt in zip(weights.trainable, server.trainable, covered, formats):
      if cov:
        change = tf.constant(old - new)
        np.testing.assert_allclose(ff.quantize(change, fmt).numpy(), change.numpy(), rtol=0,
                                   atol=4 * np.spacing(np.abs(new).max()))
    # The other matrices use the finer format: their changes are off the coarse grid.
    second = covered.index(True, first + 1)
    change = tf.constant(weights.trainable[second] - server.trainable[second])
    self.assertGreater(float(tf.reduce_max(tf.abs(ff.quantize(change, formats[first]) - change))),
                       0.0)

  def test_fedaqt_client_weights_stay_on_the_integer_grid(self):
    # One client, server SGD at rate 1, float upload: new = old - (initial - trained), so
    # trained = new - old + initial, where initial = dequantize(quantize(old)).
    weights = _initial_weights()
    bits = 4
    config = process.aqt_config({'bits': bits, 'variant': 'fedavg'})
    server, metrics = _run_round(_build(config), weights, [_client_data(5)])
    codec = codecs.AqtCodec(bits)
    checked = 0
    for old, new, c in zip(weights.trainable, server.trainable, _covered(weights)):
      if not c:
        continue
      initial = codec.roundtrip(tf.constant(old)).numpy()
      trained = (new.astype(np.float64) - old + initial).reshape(-1, old.shape[-1])
      scale = np.abs(trained).max(axis=0) / 7.0
      steps = trained / np.where(scale > 0, scale, 1.0)
      np.testing.assert_allclose(steps, np.round(steps), atol=2e-3)
      self.assertGreater(np.abs(trained - initial.reshape(trained.shape)).max(), 0.0)
      checked += 1
    self.assertGreater(checked, 4)
    float_model = sum(w.nbytes for w in weights.trainable) + sum(
        w.nbytes for w in weights.non_trainable)
    self.assertLess(metrics['communication']['client_bytes_down'], 0.2 * float_model)
    self.assertEqual(metrics['communication']['client_bytes_up'],
                     sum(w.nbytes for w in weights.trainable) + 4)
    self.assertEqual(dict(process.client_traffic(config, process.weights_type_of(_config()))),
                     {k: metrics['communication'][k]
                      for k in ('client_bytes_down', 'client_bytes_up')})

  def _rounds_by_rounding(self, make_config):
    """One round of client SGD from the same weights, per client requantization rounding."""
    weights = _initial_weights()
    return weights, {rounding: _run_round(_build(make_config(rounding), client_lr=1e-4),
                                          weights, [_client_data(5)])[0]
                     for rounding in ('nearest', 'stochastic')}

  def test_fedaqt_stochastic_requantization_trains_on_the_grid(self):
    # The rounding reaches the clients' requantization (the two runs differ) and the
    # client's weights stay on the 8-bit grid (what it computes with is integer codes).
    # That a step below half a quantum survives only stochastically is in omc_test.
    weights, servers = self._rounds_by_rounding(lambda rounding: process.aqt_config(
        {'bits': 8, 'variant': 'fedavg', 'activations': False, 'rounding': rounding}))
    codec = codecs.AqtCodec(8)
    differ = 0
    for old, nearest, new in zip(weights.trainable, servers['nearest'].trainable,
                                 servers['stochastic'].trainable):
      if old.ndim < 2:
        continue
      differ += int(np.count_nonzero(new != nearest))
      trained = (new.astype(np.float64) - old + codec.roundtrip(tf.constant(old)).numpy()
                 ).reshape(-1, old.shape[-1])
      scale = np.abs(trained).max(axis=0) / 127.0
      steps = trained / np.where(scale > 0, scale, 1.0)
      np.testing.assert_allclose(steps, np.round(steps), atol=2e-3)
    self.assertGreater(differ, 100)
    with self.assertRaisesRegex(process.ConfigError, '--aqt_rounding=.up.'):
      process.aqt_config({'rounding': 'up'})

  def test_omc_stochastic_recompression_reaches_the_clients(self):
    weights, servers = self._rounds_by_rounding(lambda rounding: process.omc_config(
        {'format': 'S1E4M3', 'transform': False, 'rounding': rounding}))
    differ = sum(int(np.count_nonzero(a != b)) for a, b, w in zip(
        servers['nearest'].trainable, servers['stochastic'].trainable, weights.trainable)
                 if w.ndim >= 2)
    self.assertGreater(differ, 100)
    with self.assertRaisesRegex(process.ConfigError, '--omc_rounding=.up.'):
      process.omc_config({'rounding': 'up'})

  def _eager_mean_gradient(self, weights, data, activation_bits):
    """Independent reference: the example-weighted mean gradient, computed eagerly, of the Keras
    model whose weight matrices are set to their 8-bit values (and whose dense layers see
    `activation_bits`-bit inputs when that is set)."""
    codec = codecs.AqtCodec(8)
    if activation_bits:
      with pruned_dense.wrapping_dense(lambda layer: aqt.QuantizedInput(layer, activation_bits)):
        model = registry.build_keras_model(_config())
      self.assertNotEmpty([l for l in model.submodules if isinstance(l, aqt.QuantizedInput)])
    else:
      model = registry.build_keras_model(_config())
    for v, w in zip(model.trainable_variables, weights.trainable):
      v.assign(codec.roundtrip(tf.constant(w)) if w.ndim >= 2 else w)
    grad_sum, count = None, 0
    for batch in data:
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(asr.per_example_loss(model, batch, training=True))
      grads = tape.gradient(loss, model.trainable_variables)
      n = int(batch['features'].shape[0])
      grad_sum = [n * g for g in grads] if grad_sum is None else [
          s + n * g for s, g in zip(grad_sum, grads)]
      count += n
    return [g.numpy() / count for g in grad_sum]

  def test_fedaqt_fedsgd_returns_the_gradient_at_the_quantized_weights(self):
    weights = _initial_weights()
    data = _client_data(6)
    # Weights quantized, activations float: the client's update (server SGD at rate 1) must be
    # the eager gradient element by element.
    config = process.aqt_config({'bits': 8, 'variant': 'fedsgd', 'activations': False})
    server, _ = _run_round(_build(config), weights, [data])
    reference = self._eager_mean_gradient(weights, data, activation_bits=0)
    for old, new, g in zip(weights.trainable, server.trainable, reference):
      np.testing.assert_allclose(old - new, g, rtol=2e-3, atol=2e-6)
    # Activations quantized too: the graph under TFF and the eager reference sum in different
    # orders, so an input that sits on a rounding boundary can land on the neighbouring 8-bit
    # code and move a few gradient entries by about one activation step. Each variable's
    # gradient must still agree to 1e-3 in relative norm (plus the elementwise 2e-6 floor above,
    # for variables whose gradient is float noise, such as biases feeding a normalization), and
    # some must differ from the float-activation gradient by more than that (the inputs are
    # really quantized).
    config = process.aqt_config({'bits': 8, 'variant': 'fedsgd'})
    server, _ = _run_round(_build(config), weights, [data])
    quantized = self._eager_mean_gradient(weights, data, activation_bits=8)
    moved = 0
    for old, new, g, g_float in zip(weights.trainable, server.trainable, quantized, reference):
      tolerance = 1e-3 * np.linalg.norm(g) + 2e-6 * np.sqrt(g.size)
      self.assertLess(np.linalg.norm((old - new) - g), tolerance, f'variable of shape {old.shape}')
      moved += np.linalg.norm(g - g_float) > tolerance
    self.assertGreater(moved, 0)

  def test_bad_settings_name_the_flag(self):
    with self.assertRaisesRegex(process.ConfigError, '--omc_format'):
      process.omc_config({'format': 'E4M6'})
    with self.assertRaisesRegex(process.ConfigError, '--omc_fraction'):
      process.omc_config({'fraction': 1.5})
    with self.assertRaisesRegex(process.ConfigError, '--omc_scope'):
      process.omc_config({'scope': 'biases'})
    with self.assertRaisesRegex(process.ConfigError, '--aqt_bits'):
      process.aqt_config({'bits': 3})
    with self.assertRaisesRegex(process.ConfigError, '--aqt_variant'):
      process.aqt_config({'variant': 'fedprox'})


if __name__ == '__main__':
  absltest.main()
