"""//tff_programs:train on a speech task end to end: transducer rounds on TFF on the held-out
short-form domain, WER reports with per-utterance errors."""

import csv
import json
import os
import re
import subprocess
import sys
import tempfile

from absl.testing import absltest

from fl_compression.data import corpus
from fl_compression.models import checkpoint
from tests import tff_test_utils

_TINY = corpus.CorpusConfig(
    main=corpus.DomainSize(num_train_speakers=1, num_test_speakers=1,
                           train_utterances_per_speaker=1, dev_utterances_per_speaker=1,
                           test_utterances_per_speaker=1),
    short_form=corpus.DomainSize(num_train_speakers=2, num_test_speakers=1,
                                 train_utterances_per_speaker=2, dev_utterances_per_speaker=1,
                                 test_utterances_per_speaker=2),
    seed=5)


class SpeechProgramTest(absltest.TestCase):

  def test_transducer_trains_federatedly_and_reports_wer_per_split(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    data_dir, root = os.path.join(tmp, 'corpus'), os.path.join(tmp, 'run')
    corpus.generate(data_dir, _TINY, log=lambda message: None)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        tff_test_utils.program_command('train') + [
            '--task=speech_transducer', '--model=micro_transducer', f'--data_dir={data_dir}',
            f'--root_output_dir={root}', '--domain=short-form', '--total_rounds=1',
            '--clients_per_round=2', '--batch_size=2', '--trainable=blocks:1'],
        capture_output=True, text=True, env=env, timeout=900)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    out = result.stdout
    self.assertRegex(out, r'evaluation of the initial model \| held-out loss [\d.]+ \| '
                          r'WER dev-short [\d.]+% \| CER dev-short [\d.]+% \| WER test-short')
    self.assertNotIn('clean', out.split('evaluation of the initial model')[1])
    self.assertRegex(out, r'round 1/1 \| loss [\d.]+')
    # The final WER table: both splits, initial and final rates, the change with its interval.
    row = re.search(r'test-short +2 +(\d+) +([\d.]+)% +([\d.]+)% +[+-][\d.]+% '
                    r'\[[+-][\d.]+%, [+-][\d.]+%\] +([\d.]+)% +([\d.]+)%', out)
    self.assertIsNotNone(row, out)
    # The short-form domain's speakers were the clients: only their features were cached
    # (one file per client), none of the main domain's.
    derived = data_dir + '.features'
    cached = {name[:-len('.tfrecord')] for cache in os.listdir(derived)
              for name in os.listdir(os.path.join(derived, cache)) if name.endswith('.tfrecord')}
    self.assertTrue(all(name.split('-')[1] == 'short'
                        for name in os.listdir(os.path.join(derived, 'decoded'))))
    short_speakers = (set(os.listdir(os.path.join(data_dir, 'train-short'))) |
                      set(os.listdir(os.path.join(data_dir, 'test-short'))))
    self.assertEqual(cached, short_speakers)
    self.assertLen(short_speakers, 3)
    with open(os.path.join(root, 'run_config.json')) as f:
      self.assertEqual(json.load(f)['domain'], 'short-form')
    # Per-utterance errors of each evaluation, matching the released rate.
    with open(os.path.join(root, 'utterance_errors', 'round_0001.json')) as f:
      errors = json.load(f)['test-short']
    self.assertLen(errors['utterance_ids'], 2)
    self.assertAlmostEqual(100 * sum(errors['errors']) / sum(errors['words']),
                           float(row.group(3)), places=2)

    with open(os.path.join(root, 'final_model', 'config.json')) as f:
      model_config = json.load(f)['model']
    self.assertEqual(model_config['name'], 'conformer_transducer')
    self.assertEqual(model_config['trainable_blocks'], [1])
    with open(os.path.join(root, 'evaluation_metrics.csv')) as f:
      rows = list(csv.DictReader(f))
    self.assertEqual([int(r['key']) for r in rows], [0, 1])
    final_wer = float(rows[-1]['transcription/test-short/wer'])
    # Numerical signatures at each evaluation: 0 before any training (nothing moved), the
    # trained block 1 after it.
    signature_columns = [c for c in rows[0] if c.startswith('signature/attention/query/')]
    self.assertNotEmpty(signature_columns)
    self.assertEqual({float(rows[0][c]) for c in signature_columns}, {0.0})
    self.assertEqual(max(float(rows[-1][c]) for c in signature_columns), 1.0)
    # --trainable=blocks:1: only that block moved.
    moved = {c.rsplit('/', 1)[1] for c in signature_columns if float(rows[-1][c]) > 0}
    self.assertEqual(moved, {'block_01'})
    self.assertIn('signature/attention/query/block_00', rows[-1])
    # The final model carries the weights training started from.
    initial = checkpoint.load_weights(os.path.join(root, 'final_model'),
                                      checkpoint.INITIAL_WEIGHTS_FILE)
    trained = checkpoint.load_weights(os.path.join(root, 'final_model'))
    self.assertEqual([w.shape for w in initial.trainable], [w.shape for w in trained.trainable])
    self.assertAlmostEqual(100 * final_wer, float(row.group(3)), places=2)

    # The evaluation program scores the saved model the same way.
    evaluated = subprocess.run(
        tff_test_utils.program_command('evaluate') + [
            f'--model_dir={os.path.join(root, "final_model")}', f'--data_dir={data_dir}',
            '--domain=short-form', f'--output_json={os.path.join(tmp, "wer.json")}'],
        capture_output=True, text=True, env=env, timeout=300)
    self.assertEqual(evaluated.returncode, 0, evaluated.stderr[-3000:])
    with open(os.path.join(tmp, 'wer.json')) as f:
      self.assertAlmostEqual(json.load(f)['test-short']['wer'], final_wer, places=6)

    # The side-by-side comparison of two runs (here the run with itself, and a bundle file
    # listed in the run's TFLite manifest): no difference, a zero-width interval.
    os.makedirs(os.path.join(root, 'tflite'))
    with open(os.path.join(root, 'tflite', 'manifest.json'), 'w') as f:
      json.dump({'files': {'model.tflite': {'bytes': 1234}, 'vocab.txt': {'bytes': 9}}}, f)
    compared = subprocess.run(
        tff_test_utils.program_command('compare') + [
            f'--baseline_run={root}', f'--run={root}'],
        capture_output=True, text=True, env=env, timeout=300)
    self.assertEqual(compared.returncode, 0, compared.stderr[-3000:])
    self.assertRegex(compared.stdout, rf'test-short WER +{100 * final_wer:.2f}% +'
                     rf'{100 * final_wer:.2f}% +\+0\.0% \[\+0\.0%, \+0\.0%\]')
    self.assertRegex(compared.stdout, r'TFLite model\.tflite +1,234 +1,234 +1\.00x')
    self.assertIn('test-short: fedavg is within +10% relative WER of fedavg', compared.stdout)
    missing = tff_test_utils.run_program('compare', f'--baseline_run={root}',
                                         f'--run={tmp}/nowhere')
    tff_test_utils.assert_one_line_error(self, missing, f'--run={tmp}/nowhere: '
                                         f'{tmp}/nowhere/summary.json is missing')

  def test_zerofl_trains_sparsely_and_saves_the_top_k_model(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    data_dir, root = os.path.join(tmp, 'corpus'), os.path.join(tmp, 'run')
    corpus.generate(data_dir, _TINY, log=lambda message: None)
    result = tff_test_utils.run_program(
        'train', '--task=speech_ctc', '--model=micro', f'--data_dir={data_dir}',
        f'--root_output_dir={root}', '--domain=short-form', '--total_rounds=2',
        '--clients_per_round=2', '--batch_size=2',
        '--algorithm=zerofl', '--zerofl_sparsity=0.8', '--zerofl_mask_ratio=0.1',
        '--zerofl_compress=omc', '--omc_format=S1E4M6', '--evaluate_initial=false',
        timeout=900)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(os.path.join(root, 'metrics.csv')) as f:
      rows = list(csv.DictReader(f))
    self.assertLen(rows, 2)
    up, down = (float(rows[-1][f'communication/client_bytes_{d}']) for d in ('up', 'down'))
    self.assertLess(up, 0.6 * down)  # 30% of the block kernels' entries, 11-bit values.
    self.assertGreater(float(rows[-1]['client_work/uploaded_fraction']), 0.0)
    self.assertIn('client_work/top_k_changes', rows[-1])
    # The saved model is what the clients computed with: each block kernel at 20% density.
    model_dir = os.path.join(root, 'final_model')
    weights = checkpoint.load_weights(model_dir)
    model, _ = checkpoint.load_keras_model(model_dir)
    for variable, value in zip(model.trainable_variables, weights.trainable):
      if 'block_' in variable.name and 'kernel' in variable.name and value.ndim == 2:
        self.assertAlmostEqual((value != 0).mean(), 0.2, delta=0.01, msg=variable.name)
    bad = tff_test_utils.run_program(
        'train', '--task=speech_ctc', f'--data_dir={data_dir}', f'--root_output_dir={root}_bad',
        '--algorithm=zerofl', '--zerofl_sparsity=0.9', '--zerofl_mask_ratio=0.2',
        '--omc_format=S1E3M2')
    tff_test_utils.assert_one_line_error(
        self, bad, '--omc_format does not apply to --algorithm=zerofl without '
        '--zerofl_compress=omc')


if __name__ == '__main__':
  absltest.main()
