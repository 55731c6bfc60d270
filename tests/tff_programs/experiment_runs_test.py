"""Side-by-side round timing: several learning processes interleaved on the same clients."""

from absl.testing import absltest
import numpy as np

from fl_compression import tasks
from fl_compression.benchmarks import pruning_experiments as experiments
from fl_compression.learning import algorithms
from tests import tff_test_utils
from tff_programs import experiment_runs
from tff_programs import program_logic


class IsCurrentTest(absltest.TestCase):

  def test_a_result_chosen_before_the_first_selectable_round_is_rerun(self):
    late = experiments.RunSpec('ramp', 'zerofl', (('select_from_round', 11),))
    self.assertFalse(experiment_runs.is_current(late, None))
    self.assertFalse(experiment_runs.is_current(late, {'selected_round': 5}))
    self.assertTrue(experiment_runs.is_current(late, {'selected_round': 11}))
    # Without the option every round may be chosen; cost runs select none.
    plain = experiments.RunSpec('fedavg', 'fedavg', ())
    self.assertTrue(experiment_runs.is_current(plain, {'selected_round': 1}))
    self.assertTrue(experiment_runs.is_current(late, {'selected_round': None}))


class InterleavedRoundTimesTest(absltest.TestCase):

  def test_every_run_times_every_round_on_the_same_clients(self):
    task = tasks.build_task('synthetic_mlp', tasks.TaskOptions(
        num_train_clients=6, num_eval_clients=2, examples_per_client=16, batch_size=8))
    sampler = program_logic.ClientSampler(tuple(task.train_data.client_ids), 2, seed=3)
    specs = [experiments.RunSpec('fedavg', 'fedavg', ()),
             experiments.RunSpec('omc/S1E4M6', 'omc', (('format', 'S1E4M6'),))]
    hparams = algorithms.Hyperparameters(client_optimizer='sgd', client_learning_rate=0.1)

    async def body():
      return await experiment_runs.interleaved_round_times(
          specs, task, None, lambda spec: hparams, sampler, rounds=3)

    timing = tff_test_utils.run_on_local_backend(body)
    self.assertEqual(timing['keys'], ['fedavg', 'omc/S1E4M6'])
    self.assertEqual(timing['rounds'], 3)
    # Rounds 2..4 after the untimed first round, each run on that round's sampled clients.
    self.assertEqual(timing['clients'], [sampler.sample(r) for r in (2, 3, 4)])
    for key in timing['keys']:
      self.assertLen(timing['round_seconds'][key], 3)
      self.assertTrue(np.all(np.asarray(timing['round_seconds'][key]) > 0))
      self.assertGreater(timing['warm_up_seconds'][key], 0)

  def test_needs_a_timed_round(self):
    task = tasks.build_task('synthetic_mlp', tasks.TaskOptions(
        num_train_clients=2, num_eval_clients=1, examples_per_client=8, batch_size=8))
    sampler = program_logic.ClientSampler(tuple(task.train_data.client_ids), 1, seed=0)

    async def body():
      return await experiment_runs.interleaved_round_times(
          [experiments.RunSpec('fedavg', 'fedavg', ())], task, None,
          lambda spec: algorithms.Hyperparameters(), sampler, rounds=0)

    with self.assertRaisesRegex(ValueError, 'timed rounds must be positive, got 0'):
      tff_test_utils.run_on_local_backend(body)


if __name__ == '__main__':
  absltest.main()
