import os
import tempfile

from absl.testing import absltest
import numpy as np
import tensorflow_federated as tff

from fl_compression import tasks
from fl_compression.learning import algorithms
from fl_compression.learning import stages
from tests import tff_test_utils
from tff_programs import program_logic


class ClientSamplerTest(absltest.TestCase):

  def test_sample_depends_only_on_seed_and_round(self):
    ids = tuple(f'c{i}' for i in range(10))
    a = program_logic.ClientSampler(ids, 4, seed=3)
    b = program_logic.ClientSampler(ids, 4, seed=3)
    self.assertEqual([a.sample(r) for r in range(1, 6)], [b.sample(r) for r in range(1, 6)])
    for r in range(1, 6):
      self.assertLen(set(a.sample(r)), 4)
    self.assertNotEqual(a.sample(1), a.sample(2))
    self.assertNotEqual(a.sample(1), program_logic.ClientSampler(ids, 4, seed=4).sample(1))

  def test_clients_per_round_out_of_range(self):
    with self.assertRaisesRegex(ValueError, r'must be between 1 and 3, the number of training'):
      program_logic.ClientSampler(('a', 'b', 'c'), 4, seed=0)


class TrainModelTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.task = tasks.build_task('synthetic_mlp', tasks.TaskOptions(
        num_train_clients=6, num_eval_clients=2, examples_per_client=16, batch_size=8))
    cls.train_process = algorithms.get('fedavg').build(
        cls.task.model_fn, algorithms.Hyperparameters())

  def _train(self, root, total_rounds, evaluation_period=2, initial_model_weights=None,
             training=None):
    managers = {name: tff.program.MemoryReleaseManager() for name in ('train', 'eval', 'model')}

    async def body():
      return await program_logic.train_model(
          training=training or stages.StagedTraining(self.train_process, self.task.model_config,
                                                     self.task.model_fn),
          task=self.task,
          sampler=program_logic.ClientSampler(tuple(self.task.train_data.client_ids), 3, 0),
          total_rounds=total_rounds, evaluation_period=evaluation_period,
          program_state_manager=tff.program.FileProgramStateManager(
              os.path.join(root, 'program_state')),
          train_metrics_manager=managers['train'],
          evaluation_metrics_manager=managers['eval'],
          model_output_manager=managers['model'],
          initial_model_weights=initial_model_weights)

    result = tff_test_utils.run_on_local_backend(body)
    return result, {name: dict(m.values()) for name, m in managers.items()}

  def test_resumed_training_equals_uninterrupted_training(self):
    tmp = absltest.get_default_test_tmpdir()
    whole_root, split_root = tempfile.mkdtemp(dir=tmp), tempfile.mkdtemp(dir=tmp)
    whole, whole_releases = self._train(whole_root, total_rounds=4)
    first, _ = self._train(split_root, total_rounds=2)
    resumed, resumed_releases = self._train(split_root, total_rounds=4)

    self.assertEqual(whole.resumed_from_round, 0)
    self.assertEqual(first.resumed_from_round, 0)
    self.assertEqual(resumed.resumed_from_round, 2)
    self.assertEqual(sorted(resumed_releases['train']), [3, 4])
    self.assertEqual(sorted(whole_releases['train']), [1, 2, 3, 4])
    self.assertEqual(sorted(whole_releases['eval']), [0, 2, 4])  # 0: the initial model.
    self.assertEqual(sorted(resumed_releases['eval']), [4])

    whole_config, whole_model = whole_releases['model'][4]
    resumed_config, resumed_model = resumed_releases['model'][4]
    self.assertEqual(whole_config, self.task.model_config)
    self.assertEqual(resumed_config, self.task.model_config)
    for a, b in zip(whole_model.trainable, resumed_model.trainable):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(resumed.train_metrics['client_work']['train']['loss'],
                               whole.train_metrics['client_work']['train']['loss'], rtol=1e-6)
    np.testing.assert_allclose(resumed.eval_metrics['eval']['loss'],
                               whole.eval_metrics['eval']['loss'], rtol=1e-6)
    # Training moved the model: round 4's loss is below round 1's.
    self.assertLess(whole_releases['train'][4]['client_work']['train']['loss'],
                    whole_releases['train'][1]['client_work']['train']['loss'])

  def test_training_starts_from_given_initial_weights(self):
    tmp = absltest.get_default_test_tmpdir()
    _, default_run = self._train(tempfile.mkdtemp(dir=tmp), total_rounds=1)

    async def initial_weights():
      process = self.train_process
      return await tff.program.materialize_value(
          process.get_model_weights(process.initialize()))

    weights = tff_test_utils.run_on_local_backend(initial_weights)
    _, same_start = self._train(tempfile.mkdtemp(dir=tmp), total_rounds=1,
                                initial_model_weights=weights)
    shifted = tff.learning.models.ModelWeights(
        trainable=[w + 0.5 for w in weights.trainable], non_trainable=weights.non_trainable)
    _, shifted_start = self._train(tempfile.mkdtemp(dir=tmp), total_rounds=1,
                                   initial_model_weights=shifted)
    for a, b, c in zip(default_run['model'][1][1].trainable,
                       same_start['model'][1][1].trainable,
                       shifted_start['model'][1][1].trainable):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
      self.assertGreater(np.max(np.abs(a - c)), 0.1)
    # The evaluation before the first round is of the initial weights.
    loss = lambda run: run['eval'][0]['eval']['loss']  # noqa: E731
    self.assertAlmostEqual(loss(default_run), loss(same_start), places=5)
    self.assertGreater(abs(loss(default_run) - loss(shifted_start)), 0.01)

  def test_stage_change_converts_state_and_resumes_on_either_side(self):
    """Rounds 1-2 and 3-4 run processes with different state types (server momentum, then
    none); the program converts at round 3 and loads a saved state with its round's type."""
    task = self.task
    with_momentum = algorithms.get('fedavg').build(
        task.model_fn, algorithms.Hyperparameters(server_optimizer='sgdm',
                                                  server_learning_rate=0.5))
    plain = algorithms.get('fedavg').build(
        task.model_fn, algorithms.Hyperparameters(server_learning_rate=0.5))

    class TwoStages(stages.StagedTraining):
      conversions = 0

      def __init__(self):
        super().__init__(with_momentum, task.model_config, task.model_fn)
        self._second = stages.Stage('second', plain, task.model_config, task.model_fn,
                                    plain.get_model_weights)

      def stage_key(self, round_num):
        return 'all rounds' if round_num <= 2 else 'second'

      def build_stage(self, key):
        return self._stage if key == 'all rounds' else self._second

      def convert_state(self, state, from_stage, to_stage):
        type(self).conversions += 1
        weights = from_stage.model_weights(state)
        return plain.set_model_weights(plain.initialize(), weights)

    tmp = absltest.get_default_test_tmpdir()
    whole_root, root = tempfile.mkdtemp(dir=tmp), tempfile.mkdtemp(dir=tmp)
    whole, whole_releases = self._train(whole_root, total_rounds=4, training=TwoStages())
    self.assertEqual(TwoStages.conversions, 1)
    # Stopped after round 2 (first stage's state), then after round 3 (second stage's state).
    self._train(root, total_rounds=2, training=TwoStages())
    self._train(root, total_rounds=3, training=TwoStages())
    resumed, resumed_releases = self._train(root, total_rounds=4, training=TwoStages())
    self.assertEqual(TwoStages.conversions, 2)
    self.assertEqual(resumed.resumed_from_round, 3)
    for a, b in zip(whole_releases['model'][4][1].trainable,
                    resumed_releases['model'][4][1].trainable):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # The second stage really ran: momentum in all four rounds ends elsewhere.
    _, momentum_only = self._train(
        tempfile.mkdtemp(dir=tmp), total_rounds=4,
        training=stages.StagedTraining(with_momentum, task.model_config, task.model_fn))
    self.assertGreater(max(np.max(np.abs(a - b)) for a, b in zip(
        whole_releases['model'][4][1].trainable, momentum_only['model'][4][1].trainable)), 1e-4)

  def test_state_beyond_requested_rounds_is_an_error(self):
    root = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    self._train(root, total_rounds=2)
    with self.assertRaisesRegex(ValueError, 'at round 2, past the requested 1 rounds'):
      self._train(root, total_rounds=1)


if __name__ == '__main__':
  absltest.main()
