"""//tff_programs:benchmark_pruning end to end on a tiny corpus: runs, report, resumption."""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

from fl_compression.data import corpus
from tests import tff_test_utils

_TINY = corpus.CorpusConfig(
    main=corpus.DomainSize(num_train_speakers=2, num_test_speakers=1,
                           train_utterances_per_speaker=2, dev_utterances_per_speaker=1,
                           test_utterances_per_speaker=2),
    short_form=None, seed=5)


class BenchmarkPruningTest(absltest.TestCase):

  def test_refinement_experiment_runs_reports_and_resumes(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    data_dir, out = os.path.join(tmp, 'corpus'), os.path.join(tmp, 'report')
    corpus.generate(data_dir, _TINY, log=lambda message: None)
    # A starting model of the task's configuration (not the shipped checkpoint).
    model_dir = os.path.join(tmp, 'initial')
    tff_test_utils.save_small_speech_model(model_dir)
    command = tff_test_utils.program_command('benchmark_pruning') + [
        f'--data_dir={data_dir}', f'--initial_model_dir={model_dir}', f'--output_dir={out}',
        '--experiments=refinement', '--sparsities=0.4', '--total_rounds=3',
        '--clients_per_round=1', '--batch_size=2', '--memory_model=']
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('3 federated runs, 0 already done', result.stdout)

    with open(os.path.join(out, 'results.json')) as f:
      results = json.load(f)['results']
    dense = results['fedavg']
    refined = results['fp/column/magnitude/0.4']
    frozen = results['fp/column/magnitude/0.4/no_refinement']
    for run in (dense, refined, frozen):
      self.assertLen(run['round_seconds'], 3)
      for split, count in ((corpus.DEV_SPLIT, 2), (corpus.TEST_SPLIT, 2)):
        # The stored rate is the corpus-level rate of the stored per-utterance errors, and a
        # model trained 3 rounds from its initialization transcribes almost nothing right.
        errors = run['utterance_errors'][split]
        self.assertLen(errors['utterance_ids'], count)
        self.assertAlmostEqual(run['error_rates'][split]['wer'],
                               sum(errors['errors']) / sum(errors['words']))
        self.assertGreater(run['error_rates'][split]['wer'], 0.5)
    # Pruned clients hold and exchange a smaller model than FedAvg's.
    self.assertLess(refined['model_parameters'], dense['model_parameters'])
    self.assertLess(refined['client_bytes_down'], dense['client_bytes_down'])
    self.assertEqual(refined['model_parameters'], frozen['model_parameters'])
    # Phases: masks form in round 1; without refinement they never change after it, and
    # fine-tuning (round 3 of both) freezes them.
    self.assertGreater(refined['mask_changes'][0], 0)
    self.assertEqual(frozen['mask_changes'][1:], [0.0, 0.0])
    self.assertEqual(refined['mask_changes'][2], 0.0)
    # One shape set per run: computations built once, in the first round.
    self.assertGreater(refined['build_seconds'], 0)

    with open(os.path.join(out, 'report.md')) as f:
      report = f.read()
    self.assertIn('## 4. With and without mask refinement at 0.4', report)
    self.assertRegex(report, r'\| with refinement \| [\d.]+% \| [+-][\d.]+% \[[^|]*\] \| '
                             r'[\d.]+% \| \d+ \|')
    self.assertRegex(report, r'refinement beats no refinement at 40% \| [\d.]+% vs [\d.]+%: '
                             r'[+-][\d.]+% \[')

    # Started again, it finds everything done and rewrites the same report.
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    self.assertEqual(again.returncode, 0, again.stderr[-3000:])
    self.assertIn('3 federated runs, 3 already done', again.stdout)
    with open(os.path.join(out, 'report.md')) as f:
      self.assertEqual(f.read(), report)
    # Other settings in the same directory are refused, naming the flag.
    other = subprocess.run(command + ['--total_rounds=4'], capture_output=True, text=True,
                           env=env, timeout=600)
    self.assertNotEqual(other.returncode, 0)
    self.assertIn('--total_rounds=4 (the results have 3)', other.stderr)


if __name__ == '__main__':
  absltest.main()
