"""//tff_programs:benchmark_methods end to end on a tiny corpus: dev-selected rounds, paired
intervals in the report, resumption, and one-line errors."""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

from fl_compression.data import corpus
from tests import tff_test_utils
from tff_programs import benchmark_methods

_SMALL = corpus.CorpusConfig(
    main=corpus.DomainSize(num_train_speakers=2, num_test_speakers=1,
                           train_utterances_per_speaker=2, dev_utterances_per_speaker=2,
                           test_utterances_per_speaker=3),
    short_form=None, seed=6)


class BenchmarkMethodsTest(absltest.TestCase):

  def test_runs_select_by_dev_report_intervals_and_resume(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    data_dir, out = os.path.join(tmp, 'corpus'), os.path.join(tmp, 'report')
    corpus.generate(data_dir, _SMALL, log=lambda message: None)
    model_dir = os.path.join(tmp, 'initial')
    tff_test_utils.save_small_speech_model(model_dir)
    command = tff_test_utils.program_command('benchmark_methods') + [
        f'--data_dir={data_dir}', f'--initial_model_dir={model_dir}', f'--output_dir={out}',
        '--models=tiny', '--only=fedavg,fp/column/adaptive/0.3', '--total_rounds=3',
        '--evaluation_period=1', '--clients_per_round=1', '--batch_size=2']
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('2 federated runs, 0 already done', result.stdout)

    with open(os.path.join(out, 'results.json')) as f:
      results = json.load(f)['results']
    dense, pruned = results['fedavg'], results['fp/column/adaptive/0.3']
    test_ids = sorted(results['initial']['tiny'][corpus.TEST_SPLIT]['utterances']
                      ['utterance_ids'])
    self.assertLen(test_ids, 3)
    for run in (dense, pruned):
      curve = run['wer_curves'][corpus.DEV_SPLIT]
      self.assertEqual(sorted(curve, key=int), ['1', '2', '3'])
      # The reported round is the eligible round with the lowest dev WER, and its rates are
      # that round's.
      eligible = {int(r): w for r, w in curve.items()
                  if int(r) >= run['options'].get('finetune_start', 1)}
      self.assertEqual(run['selected_round'], min(eligible, key=lambda r: (eligible[r], r)))
      self.assertEqual(run['error_rates'][corpus.DEV_SPLIT]['wer'],
                       curve[str(run['selected_round'])])
      errors = run['utterance_errors'][corpus.TEST_SPLIT]
      self.assertEqual(sorted(errors['utterance_ids']), test_ids)
      self.assertAlmostEqual(sum(errors['errors']) / sum(errors['words']),
                             run['error_rates'][corpus.TEST_SPLIT]['wer'])
    # Pruning runs its phases within the budget and is chosen among its fine-tuning rounds.
    self.assertEqual(pruned['options']['finetune_start'], 3)
    self.assertEqual(pruned['selected_round'], 3)
    self.assertLess(pruned['model_parameters'], dense['model_parameters'])

    with open(os.path.join(out, 'report.md')) as f:
      report = f.read()
    self.assertRegex(report, r'\| FP column 30% within \+10% relative of dense \| [\d.]+% vs '
                     r'[\d.]+%: [+-][\d.]+% \[[+-][\d.]+%, [+-][\d.]+%\] \| (met|\*\*missed\*\*) \|')
    self.assertRegex(report, r'\| FP column 30% \(adaptive\) \| [\d.]+% \| [+-][\d.]+% \[')
    self.assertIn('| OMC 11-bit (S1E4M6) partial no worse than float32 | not run yet | n/a |',
                  report)

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    self.assertEqual(again.returncode, 0, again.stderr[-3000:])
    self.assertIn('2 federated runs, 2 already done', again.stdout)
    with open(os.path.join(out, 'report.md')) as f:
      self.assertEqual(f.read(), report)

  def test_bad_input_is_named_in_one_line(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    cases = [
        (['--models=tiny', f'--initial_model_dir={tmp}/none'],
         f'--initial_model_dir={tmp}/none: {tmp}/none/weights.npz is missing'),
        (['--models=tiny,huge'], '--models: unknown huge'),
        (['--models=tiny', '--only=fedavg,fp/row/0.3'], '--only: fp/row/0.3 not among'),
        (['--evaluation_period=9', '--total_rounds=5'], '--evaluation_period=9 is above'),
    ]
    tff_test_utils.assert_bad_input(self, benchmark_methods, cases, f'--output_dir={tmp}/out')
    self.assertFalse(os.path.exists(f'{tmp}/out'), 'a failed run wrote output')


if __name__ == '__main__':
  absltest.main()
