"""Federated pruning processes on TFF's runtime: FedAvg equivalence, phases, traffic."""

import collections
import json

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.compression import codecs
from fl_compression.compression import process as compression_process
from fl_compression.learning import algorithms
from fl_compression.learning import optimizers
from fl_compression.models import asr
from fl_compression.models import registry
from fl_compression.pruning import plan as plan_lib
from fl_compression.pruning import process
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


def _make_model_fn(config):
  spec = _client_data(0).element_spec
  return lambda: asr.AsrVariableModel(registry.build_keras_model(config), spec)


def _pruning(config, **options):
  total_rounds = options.pop('total_rounds', 1)
  server_optimizer = options.pop('server_optimizer', optimizers.build_optimizer('sgd', 1.0))
  return process.FederatedPruning(
      _config(), _make_model_fn, config, total_rounds,
      client_optimizer=optimizers.build_optimizer('sgd', 0.05),
      server_optimizer=server_optimizer, **options)


def _initial_weights():
  model = registry.build_keras_model(_config())
  return tff.learning.models.ModelWeights(
      [v.numpy() for v in model.trainable_variables],
      [v.numpy() for v in model.non_trainable_variables])


class FederatedPruningProcessTest(absltest.TestCase):

  def test_sparsity_zero_round_equals_fedavg_round(self):
    weights = _initial_weights()
    clients = [_client_data(1), _client_data(2)]
    fp = _pruning(process.PruningConfig(sparsity=0.0, refine_start=1, finetune_start=2))
    fedavg = algorithms.get('fedavg').build(
        _make_model_fn(_config()), algorithms.Hyperparameters(client_learning_rate=0.05))

    async def body():
      stage = fp.build_stage(fp.stage_key(1))
      state = fp.initial_state(stage, weights)
      pruned = stage.train_process.next(state, clients)
      server = await tff.program.materialize_value(
          stage.train_process.get_model_weights(pruned.state))
      base_state = fedavg.set_model_weights(fedavg.initialize(), weights)
      base = fedavg.next(base_state, clients)
      reference = await tff.program.materialize_value(fedavg.get_model_weights(base.state))
      return server, reference

    server, reference = tff_test_utils.run_on_local_backend(body)
    moved = 0.0
    for a, b, w in zip(server['model'].trainable, reference.trainable, weights.trainable):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
      moved = max(moved, float(np.max(np.abs(b - w))))
    self.assertGreater(moved, 1e-3)  # The round did train.

  def test_stacked_compression_trains_the_reduced_model_compressed(self):
    weights = _initial_weights()
    clients = [_client_data(1), _client_data(2)]
    config = process.PruningConfig(sparsity=0.3, refine_start=1, finetune_start=2)
    variants = {
        'plain': _pruning(config),
        # A lossless format without the transform: the stacked round must be the plain one.
        'lossless': _pruning(config, compression=compression_process.omc_config(
            {'format': 'S1E8M23', 'transform': False})),
        'omc': _pruning(config, compression=compression_process.omc_config({'format': 'S1E4M6'})),
        'fedaqt': _pruning(config, compression=compression_process.aqt_config({'bits': 8})),
    }

    async def body():
      results = {}
      for name, fp in variants.items():
        stage = fp.build_stage(fp.stage_key(1))
        output = stage.train_process.next(fp.initial_state(stage, weights), clients)
        results[name] = (
            await tff.program.materialize_value(
                stage.train_process.get_model_weights(output.state)),
            await tff.program.materialize_value(output.metrics), stage.model_config)
        if name == 'omc':
          # Round 2 fine-tunes: the stacked compression process on the reduced server model.
          finetune = fp.build_stage(fp.stage_key(2))
          converted = fp.convert_state(output.state, stage, finetune)
          finetuned = finetune.train_process.next(converted, clients)
          results['omc_finetune'] = (
              int(await tff.program.materialize_value(converted.distributor)),
              await tff.program.materialize_value(finetuned.metrics))
      return results

    results = tff_test_utils.run_on_local_backend(body)
    plain, plain_metrics, reduced_config = results['plain']
    for a, b in zip(results['lossless'][0]['model'].trainable, plain['model'].trainable):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # Wire and held bytes are those of the reduced model with its weight matrices packed.
    reduced = registry.build_keras_model(reduced_config)
    shapes = [tuple(v.shape) for v in reduced.trainable_variables]
    self.assertLess(sum(np.prod(s) for s in shapes),
                    sum(w.size for w in weights.trainable))  # Physically smaller.
    matrices = [s for s in shapes if len(s) >= 2]
    float_matrix_bytes = sum(4 * int(np.prod(s)) for s in matrices)
    plain_down = plain_metrics['communication']['client_bytes_down']
    for name, codec in (('omc', codecs.OmcCodec(compression_process.omc_config({}).codec.fmt)),
                        ('fedaqt', codecs.AqtCodec(8))):
      server, metrics, _ = results[name]
      packed = sum(codec.nbytes(s) for s in matrices)
      # The packed broadcast replaces the float matrices and adds the round number.
      self.assertEqual(metrics['communication']['client_bytes_down'],
                       plain_down - float_matrix_bytes + packed + 4, name)
      self.assertEqual(metrics['client_work']['held_parameter_bytes'],
                       plain_down - float_matrix_bytes + packed, name)
      self.assertLess(metrics['communication']['client_bytes_down'], 0.4 * plain_down, name)
      # It trained.
      moved = max(float(np.max(np.abs(a - w)))
                  for a, w in zip(server['model'].trainable, weights.trainable))
      self.assertGreater(moved, 1e-4, name)
    # Fine-tuning continues the round count (it seeds partial selection) and moves the same
    # packed reduced model.
    rounds_done, finetune_metrics = results['omc_finetune']
    self.assertEqual(rounds_done, 1)
    omc_metrics = results['omc'][1]
    self.assertEqual(finetune_metrics['communication'], omc_metrics['communication'])
    self.assertEqual(finetune_metrics['client_work']['held_parameter_bytes'],
                     omc_metrics['client_work']['held_parameter_bytes'])

  def test_phases_keep_pruned_values_and_freeze_masks(self):
    weights = _initial_weights()
    config = process.PruningConfig(sparsity=0.5, pattern='column', refine_start=2,
                                   finetune_start=3)
    # Server momentum, so that fine-tuning's conversion must carry optimizer slots over.
    fp = _pruning(config, total_rounds=3,
                  server_optimizer=optimizers.build_optimizer('sgdm', 0.5))
    fedavg = algorithms.get('fedavg').build(
        _make_model_fn(_config()), algorithms.Hyperparameters(client_learning_rate=0.05))
    clients = [_client_data(3), _client_data(4)]
    names = [v.name for v in registry.build_keras_model(_config()).trainable_variables]

    async def body():
      keys = [fp.stage_key(r) for r in (1, 2, 3)]
      stage = fp.build_stage(keys[0])
      state = fp.initial_state(stage, weights)
      servers, metrics = [], []
      # Round 3 here is the full-size process with frozen masks: the reference for the
      # fine-tuning stage below.
      for round_num in (1, 2, 3):
        if round_num == 3:
          before_finetune = state
        output = stage.train_process.next(state, clients)
        state = output.state
        servers.append(await tff.program.materialize_value(
            stage.train_process.get_model_weights(state)))
        metrics.append(await tff.program.materialize_value(output.metrics))
      reduced = await tff.program.materialize_value(stage.model_weights(state))
      # The fine-tuning stage: the server model shrunk, then FedAvg on the reduced model.
      finetune = fp.build_stage(keys[2])
      converted = fp.convert_state(before_finetune, stage, finetune)
      converted_weights = await tff.program.materialize_value(
          finetune.train_process.get_model_weights(converted))
      finetuned = finetune.train_process.next(converted, clients)
      finetuned_weights = await tff.program.materialize_value(
          finetune.model_weights(finetuned.state))
      finetuned_metrics = await tff.program.materialize_value(finetuned.metrics)
      base = fedavg.next(fedavg.set_model_weights(fedavg.initialize(), weights), clients)
      base_metrics = await tff.program.materialize_value(base.metrics)
      before_reduced = await tff.program.materialize_value(stage.model_weights(before_finetune))
      return (keys, servers, metrics, reduced, stage, base_metrics, finetune, converted_weights,
              before_reduced, finetuned_weights, finetuned_metrics)

    (keys, servers, metrics, reduced, stage, base_metrics, finetune, converted_weights,
     before_reduced, finetuned_weights, finetuned_metrics) = (
         tff_test_utils.run_on_local_backend(body))
    # One shape set for pruning and refining, so one computation serves both; fine-tuning is
    # its own stage on the reduced model; the state counts rounds.
    self.assertEqual(keys[0], keys[1])
    self.assertEqual(keys[2], (process.FINETUNE, keys[1]))
    self.assertEqual(finetune.model_config, stage.model_config)
    self.assertEqual([fp.config.phase(r) for r in (1, 2, 3)], ['prune', 'refine', 'finetune'])
    self.assertEqual([int(s['rounds_done']) for s in servers], [1, 2, 3])
    # Pruning from a dense start changed exactly the pruned units' masks.
    pruned_units = sum(np.size(m) - np.sum(m) for layer in servers[0]['masks'] for m in layer)
    self.assertEqual(float(metrics[0]['finalizer']['mask_changes']), pruned_units)
    # Fine-tuning froze the masks of the last refining round.
    self.assertEqual(float(metrics[2]['finalizer']['mask_changes']), 0.0)
    np.testing.assert_array_equal(
        np.concatenate([m for layer in servers[2]['masks'] for m in layer]),
        np.concatenate([m for layer in servers[1]['masks'] for m in layer]))
    # Pruned entries keep their server values; kept ones train.
    layer = 'encoder/block_00/mhsa/query'
    kernel = names.index(layer + '/kernel:0')
    mask = servers[2]['masks'][[l.name for l in fp.layers].index(layer)][0].astype(bool)
    before, after = servers[1]['model'].trainable[kernel], servers[2]['model'].trainable[kernel]
    np.testing.assert_array_equal(after[:, ~mask], before[:, ~mask])
    self.assertGreater(np.abs(after[:, mask] - before[:, mask]).max(), 0)
    # The clients' model is physically smaller, and so is the traffic.
    full_params = sum(np.size(w) for w in weights.trainable)
    reduced_params = sum(np.size(w) for w in reduced.trainable)
    self.assertEqual(full_params - reduced_params,
                     plan_lib.removed_parameters(stage.model_config['pruning']))
    down = metrics[2]['communication']['client_bytes_down']
    base_down = base_metrics['communication']['client_bytes_down']
    self.assertLess(down, base_down)
    self.assertLess(metrics[2]['communication']['client_bytes_up'],
                    base_metrics['communication']['client_bytes_up'])
    # Fine-tuning's server holds the reduced model, converted from the refined server model
    # with its last masks, and its round equals the frozen-mask round of the full-size process
    # (server momentum included), with the same traffic.
    for got, want in zip(converted_weights.trainable + converted_weights.non_trainable,
                         before_reduced.trainable + before_reduced.non_trainable):
      np.testing.assert_array_equal(got, want)
    self.assertEqual([w.shape for w in finetuned_weights.trainable],
                     [w.shape for w in reduced.trainable])
    for got, want in zip(finetuned_weights.trainable + finetuned_weights.non_trainable,
                         reduced.trainable + reduced.non_trainable):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    self.assertEqual(finetuned_metrics['communication'], metrics[2]['communication'])

  def test_federated_dropout_samples_new_units_and_returns_the_full_model(self):
    weights = _initial_weights()
    fd = process.FederatedDropout(
        _config(), _make_model_fn, process.PruningConfig(sparsity=0.5, pattern='column'), 2,
        client_optimizer=optimizers.build_optimizer('sgd', 0.05),
        server_optimizer=optimizers.build_optimizer('sgd', 1.0))
    clients = [_client_data(3), _client_data(4)]

    async def body():
      stage = fd.build_stage(fd.stage_key(1))
      state = fd.initial_state(stage, weights)
      masks = []
      for _ in range(2):
        state = stage.train_process.next(state, clients).state
        server = await tff.program.materialize_value(
            stage.train_process.get_model_weights(state))
        masks.append(np.concatenate([m for layer in server['masks'] for m in layer]))
      final = await tff.program.materialize_value(stage.model_weights(state))
      return stage, masks, final

    stage, masks, final = tff_test_utils.run_on_local_backend(body)
    self.assertEqual(fd.config.importance.method, 'random')
    # Same sizes, other units: random sub-models each round, half of every layer's units kept
    # (each layer's count rounds to a whole unit).
    self.assertEqual(masks[0].sum(), masks[1].sum())
    self.assertGreater(np.sum(masks[0] != masks[1]), 0)
    self.assertAlmostEqual(float(masks[0].mean()), 0.5, delta=0.05)
    # Rounds really trained: the full model moved.
    moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(final.trainable, weights.trainable))
    self.assertGreater(moved, 1e-4)
    # The result is the full model: every variable has its dense shape.
    self.assertNotIn('pruning', stage.model_config)
    self.assertEqual([np.shape(w) for w in final.trainable],
                     [np.shape(w) for w in weights.trainable])


class ImportanceAllocationTest(absltest.TestCase):

  def test_ambient_blocks_are_pruned_more_at_the_same_total_sparsity(self):
    config = _config()
    config['encoder']['num_blocks'] = 2
    ranking_path = self.create_tempfile(content=json.dumps({
        'ambient_first': [1, 0], 'model': config,
        'blocks': [{'block': 0, 'reinit_relative': 3.0}, {'block': 1, 'reinit_relative': 0.0}],
    })).full_path

    def plan(**options):
      return process.FederatedPruning(
          config, _make_model_fn, process.PruningConfig(sparsity=0.4, pattern='row', **options),
          3, client_optimizer=optimizers.build_optimizer('sgd', 0.05),
          server_optimizer=optimizers.build_optimizer('sgd', 1.0)).plan_at(1)

    importance, uniform = plan(allocation='importance', ranking=ranking_path), plan()
    removed = lambda p, block: sum(  # noqa: E731
        e['input_dim'] * e['output_dim'] - plan_lib.kept_area(e) for n, e in p.items()
        if f'block_{block:02d}/' in n)
    # Block 1 (reset costs nothing) loses more than block 0 (reset costs +300%) ...
    self.assertGreater(removed(importance, 1), 1.5 * removed(importance, 0))
    self.assertAlmostEqual(removed(uniform, 1), removed(uniform, 0), delta=0.05 * removed(
        uniform, 0))
    # ... at the same total as uniform (row pattern: kernel entries exactly, up to rounding
    # of whole units).
    self.assertAlmostEqual(plan_lib.removed_parameters(importance) /
                           plan_lib.removed_parameters(uniform), 1.0, delta=0.03)
    with self.assertRaisesRegex(plan_lib.PlanError, 'importance needs --fp_ranking'):
      plan(allocation='importance')
    with self.assertRaisesRegex(plan_lib.PlanError, "--fp_allocation='size' is unknown"):
      plan(allocation='size')


class TargetedDropoutTest(absltest.TestCase):

  def test_dropout_of_one_block_drops_only_its_units_and_reports_the_fraction(self):
    config = _config()
    config['encoder']['num_blocks'] = 2
    make = lambda blocks: process.FederatedDropout(  # noqa: E731
        config, _make_model_fn, process.PruningConfig(sparsity=0.5, pattern='column'), 2,
        client_optimizer=optimizers.build_optimizer('sgd', 0.05),
        server_optimizer=optimizers.build_optimizer('sgd', 1.0), blocks=blocks)
    targeted, flat = make([1]), make(None)
    plans = {name: fd.plan_at(1) for name, fd in (('targeted', targeted), ('flat', flat))}
    self.assertTrue(plans['targeted'])
    self.assertTrue(all(name.startswith('encoder/block_01/') for name in plans['targeted']))
    self.assertEqual({n for n in plans['flat'] if n.startswith('encoder/block_01/')},
                     set(plans['targeted']))

    async def body():
      fractions = {}
      for name, fd in (('targeted', targeted), ('flat', flat)):
        stage = fd.build_stage(fd.stage_key(1))
        output = stage.train_process.next(fd.initial_state(stage), [_client_data(5)])
        metrics = await tff.program.materialize_value(output.metrics)
        fractions[name] = float(metrics['distributor']['dropped_fraction'])
      return fractions

    fractions = tff_test_utils.run_on_local_backend(body)
    total = registry.build_keras_model(config).count_params()
    for name, plan in plans.items():
      self.assertAlmostEqual(fractions[name], plan_lib.removed_parameters(plan) / total,
                             places=6)
    # What benchmarks read before a run (to match a flat rate to a targeted one) is what the
    # run releases.
    self.assertAlmostEqual(targeted.dropped_fraction(1), fractions['targeted'], places=6)
    self.assertAlmostEqual(flat.dropped_fraction(1), fractions['flat'], places=6)
    self.assertAlmostEqual(flat.dropped_fraction(sparsity=0.5), fractions['flat'], places=6)
    self.assertLess(flat.dropped_fraction(sparsity=0.2), fractions['flat'])
    # One block of two: about half of the flat dropout's parameters.
    self.assertAlmostEqual(fractions['targeted'] / fractions['flat'], 0.5, delta=0.05)


if __name__ == '__main__':
  absltest.main()
