"""End-to-end tests of //tff_programs:train as users run it: a separate process per run."""

import csv
import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from absl.testing import absltest
import numpy as np

from fl_compression.data import corpus
from fl_compression.models import checkpoint
from tests import tff_test_utils

_COMMON_FLAGS = ['--num_train_clients=8', '--clients_per_round=3', '--examples_per_client=32',
                 '--num_eval_clients=2', '--evaluation_period=4']


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _tree_digest(root):
  digest = hashlib.sha256()
  for directory, _, files in sorted(os.walk(root)):
    for name in sorted(files):
      path = os.path.join(directory, name)
      digest.update(path.encode())
      with open(path, 'rb') as f:
        digest.update(f.read())
  return digest.hexdigest()


class TrainProgramTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.marker = f'FLC_TEST_RUN={uuid.uuid4().hex}'
    self.env = dict(os.environ, FLC_TEST_RUN=self.marker.split('=', 1)[1])
    self.env['PYTHONPATH'] = os.pathsep.join(sys.path)

  def _start(self, root, *flags):
    process = subprocess.Popen(
        tff_test_utils.program_command('train') + [f'--root_output_dir={root}', *_COMMON_FLAGS, *flags],
        env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self.addCleanup(process.kill)  # A failed assertion must not leave the program running.
    return process

  def _run(self, root, *flags, timeout=300):
    process = self._start(root, *flags)
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr

  def _assert_no_worker_left(self):
    deadline = time.monotonic() + 10
    while tff_test_utils.processes_with_env(self.marker) and time.monotonic() < deadline:
      time.sleep(0.2)
    self.assertEmpty(tff_test_utils.processes_with_env(self.marker),
                     'a process started by the program outlived it')

  def _kill_and_resume(self, flags, kill_after_round, total_rounds, columns, timeout=300):
    """Runs `flags` to the end once, and once killed (SIGKILL) right after round
    `kill_after_round` was saved and started again; both must end alike: every round's
    `columns`, the last evaluation and the final model."""
    tmp = absltest.get_default_test_tmpdir()
    whole_root, killed_root = tempfile.mkdtemp(dir=tmp), tempfile.mkdtemp(dir=tmp)
    flags = [f'--total_rounds={total_rounds}', *flags]

    code, stdout, stderr = self._run(whole_root, *flags, timeout=timeout)
    self.assertEqual(code, 0, stderr[-3000:])
    self.assertIn('Final result', stdout)
    self._assert_no_worker_left()

    process = self._start(killed_root, *flags)
    state_dir = os.path.join(killed_root, 'program_state')
    deadline = time.monotonic() + timeout
    # A finished save is renamed into place; program_state_3_tempNNNN is one still being written.
    while not os.path.isdir(os.path.join(state_dir, f'program_state_{kill_after_round}')):
      self.assertIsNone(process.poll(), 'the run ended before it could be killed')
      self.assertLess(time.monotonic(), deadline, f'no program state after {timeout} s')
      time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    self.assertEqual(process.returncode, -signal.SIGKILL)
    self._assert_no_worker_left()  # The worker dies with its program, even on SIGKILL.
    self.assertFalse(os.path.exists(os.path.join(killed_root, 'final_model')))

    code, stdout, stderr = self._run(killed_root, *flags, timeout=timeout)
    self.assertEqual(code, 0, stderr[-3000:])
    resumed_after = int(re.search(r'resumed after round +(\d+)\n', stdout).group(1))
    self.assertBetween(resumed_after, kill_after_round, total_rounds - 1)
    self._assert_no_worker_left()

    whole_rows = _read_csv(os.path.join(whole_root, 'metrics.csv'))
    resumed_rows = _read_csv(os.path.join(killed_root, 'metrics.csv'))
    self.assertEqual([r['key'] for r in resumed_rows],
                     [str(i) for i in range(1, total_rounds + 1)])
    for whole, resumed in zip(whole_rows, resumed_rows):
      for column in columns:
        np.testing.assert_allclose(float(resumed[column]), float(whole[column]), rtol=1e-5,
                                   err_msg=f'round {whole["key"]} {column}')
    whole_eval = _read_csv(os.path.join(whole_root, 'evaluation_metrics.csv'))[-1]
    resumed_eval = _read_csv(os.path.join(killed_root, 'evaluation_metrics.csv'))[-1]
    for column in whole_eval:
      if column.startswith(('eval/loss', 'transcription/')) and column.endswith(('loss', 'wer')):
        np.testing.assert_allclose(float(resumed_eval[column]), float(whole_eval[column]),
                                   rtol=1e-5, err_msg=column)
    whole_model, _ = checkpoint.load_keras_model(os.path.join(whole_root, 'final_model'))
    resumed_model, config = checkpoint.load_keras_model(os.path.join(killed_root, 'final_model'))
    self.assertEqual(config['round'], total_rounds)
    for a, b in zip(whole_model.get_weights(), resumed_model.get_weights()):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    return whole_root

  def test_killed_run_resumes_and_ends_like_an_uninterrupted_run(self):
    self._kill_and_resume([], 3, 24, ('client_work/train/loss', 'client_work/train/accuracy',
                                      'communication/client_bytes_down'))

  def test_killed_omc_run_resumes_like_an_uninterrupted_run(self):
    self._kill_and_resume(['--algorithm=omc', '--omc_format=S1E4M6', '--omc_fraction=0.5',
                           '--omc_rounding=stochastic'], 2, 6,
                          ('client_work/train/loss', 'client_work/held_parameter_bytes',
                           'communication/client_bytes_up'))

  def test_killed_pruning_run_resumes_across_its_stage_change(self):
    # Killed in the refining stage; the resumed run converts its state into the fine-tuning
    # stage (a smaller server model) at round 4, as the uninterrupted run did.
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    data_dir = os.path.join(tmp, 'corpus')
    corpus.generate(data_dir, corpus.SMALL, log=lambda message: None)
    root = self._kill_and_resume(
        ['--task=speech_ctc', '--model=micro', f'--data_dir={data_dir}', '--algorithm=fp',
         '--fp_sparsity=0.3',
         '--fp_refine_start=2', '--fp_finetune_start=4', '--clients_per_round=2',
         '--batch_size=2', '--evaluation_period=5', '--client_optimizer=adam',
         '--client_learning_rate=0.001', '--evaluate_initial=false',
         '--evaluation_splits=test', '--nofederated_evaluation'], 2, 5,
        ('client_work/train/loss', 'communication/client_bytes_down'), timeout=900)
    rows = _read_csv(os.path.join(root, 'metrics.csv'))
    build = [float(r['stage_build_seconds']) for r in rows]
    self.assertGreater(build[3], 0, 'round 4 did not start a new (fine-tuning) stage')
    # Only test-clean transcribed, and no federated evaluation.
    evaluated = _read_csv(os.path.join(root, 'evaluation_metrics.csv'))
    self.assertEqual([r['key'] for r in evaluated], ['5'])
    columns = set(evaluated[0])
    self.assertIn('transcription/test-clean/wer', columns)
    self.assertFalse([c for c in columns if 'dev-clean' in c or c.startswith('eval/')], columns)

  def test_compressed_algorithms_train_from_the_program(self):
    base = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    bytes_down = {}
    for name, flags in [('fedavg', []), ('omc', ['--omc_format=S1E4M6']),
                        ('fedaqt', ['--aqt_bits=8', '--aqt_variant=fedavg',
                                    '--evaluate_initial=false'])]:
      root = os.path.join(base, name)
      code, stdout, stderr = self._run(root, f'--algorithm={name}', '--total_rounds=2', *flags)
      self.assertEqual(code, 0, stderr[-3000:])
      self.assertIn('Final result', stdout)
      rows = _read_csv(os.path.join(root, 'metrics.csv'))
      self.assertLen(rows, 2)
      self.assertTrue(np.isfinite(float(rows[-1]['client_work/train/loss'])), name)
      bytes_down[name] = float(rows[-1]['communication/client_bytes_down'])
      _, config = checkpoint.load_keras_model(os.path.join(root, 'final_model'))
      self.assertEqual(config['round'], 2)
      evaluated = [r['key'] for r in _read_csv(os.path.join(root, 'evaluation_metrics.csv'))]
      self.assertEqual(evaluated, ['2'] if '--evaluate_initial=false' in flags else ['0', '2'],
                       name)
    # The MLP's weight matrices dominate: 11 bits and 8 bits instead of 32 (its biases and,
    # for FedAQT, one float32 scale per output channel stay).
    self.assertLess(bytes_down['omc'], 0.40 * bytes_down['fedavg'])
    self.assertLess(bytes_down['fedaqt'], 0.40 * bytes_down['fedavg'])
    self._assert_no_worker_left()

  def test_bad_input_fails_in_one_line_and_keeps_saved_state(self):
    root = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    code, _, stderr = self._run(root, '--total_rounds=2')
    self.assertEqual(code, 0, stderr[-3000:])
    before = _tree_digest(root)
    a_file = os.path.join(root, 'metrics.csv')
    # Every flag check is tested in process (train_flags_test); here, as users meet them: the
    # checks that need a saved run, and one of each other kind, as one-line errors with exit
    # status 2 that leave the saved run as it was.
    cases = [
        (['--total_rounds=1'], '--total_rounds=1 is below round 2'),
        (['--seed=5'], '--seed=5 (the run has 0)'),
        (['--client_learning_rate=nan'], '--client_learning_rate must be positive and finite'),
        (['--algorithm=fp', f'--root_output_dir={root}_fp'], 'the mlp model has nothing prunable'),
        ([f'--root_output_dir={a_file}/run'], f'--root_output_dir={a_file}/run cannot be'),
    ]
    for flags, message in cases:
      code, stdout, stderr = self._run(root, *flags)
      self.assertEqual(code, 2, flags)
      last_line = stderr.strip().splitlines()[-1]
      self.assertTrue(last_line.startswith('error: '), (flags, stderr[-2000:]))
      self.assertIn(message, last_line, flags)
      self.assertNotIn('Traceback', stderr, flags)
      self.assertNotIn('Final result', stdout, flags)
    self.assertEqual(_tree_digest(root), before, 'a failed run changed the saved run')
    self.assertFalse(os.path.exists(f'{root}_fp'), 'a failed run left a directory behind')
    self._assert_no_worker_left()


if __name__ == '__main__':
  absltest.main()
