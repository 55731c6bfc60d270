"""//tff_programs:benchmark_pruning end to end on a tiny corpus: the refinement experiment and
the costs experiment, also at another model (`--cost_model`, whose runs start from that model's
initialization and are not evaluated), in one invocation that shares the FedAvg run; report,
resumption."""

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

  def test_refinement_and_costs_experiments_run_report_and_resume(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    data_dir, out = os.path.join(tmp, 'corpus'), os.path.join(tmp, 'report')
    corpus.generate(data_dir, _TINY, log=lambda message: None)
    # A starting model of the task's configuration (not the shipped checkpoint).
    model_dir = os.path.join(tmp, 'initial')
    tff_test_utils.save_small_speech_model(model_dir)
    command = tff_test_utils.program_command('benchmark_pruning') + [
        f'--data_dir={data_dir}', f'--initial_model_dir={model_dir}', f'--output_dir={out}',
        '--experiments=refinement,costs', '--sparsities=0.4', '--total_rounds=3',
        '--clients_per_round=1', '--batch_size=2', '--memory_model=',
        '--cost_model=micro_transducer', '--step_seconds=0.5', '--phase_repeats=1']
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    # FedAvg, 40% with and without refinement, 50% for the costs; both at the other model.
    self.assertIn('6 federated runs, 0 already done', result.stdout)

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

    self._assert_costs(results)

    with open(os.path.join(out, 'report.md')) as f:
      report = f.read()
    self.assertIn('## 4. With and without mask refinement at 0.4', report)
    self.assertRegex(report, r'\| with refinement \| [\d.]+% \| [+-][\d.]+% \[[^|]*\] \| '
                             r'[\d.]+% \| \d+ \|')
    self.assertRegex(report, r'refinement beats no refinement at 40% \| [\d.]+% vs [\d.]+%: '
                             r'[+-][\d.]+% \[')

    self.assertIn('### The same costs with `micro_transducer`', report)
    self.assertRegex(report, r'50% column \(`micro_transducer`\): client bytes per round')
    self.assertRegex(report, r'\| costs/micro_transducer/fedavg \|  \|  \|  \|  \| [\d,]+ \|')
    self.assertRegex(report, r'\| client_work \| [\d.]+ \| [\d.]+ \| [+-][\d.]+ \|')

    # Started again, it finds everything done, measures nothing and rewrites the same report.
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    self.assertEqual(again.returncode, 0, again.stderr[-3000:])
    self.assertIn('6 federated runs, 6 already done', again.stdout)
    self.assertNotRegex(again.stdout, r'(?m)^costs( \(micro_transducer\))?: \{')
    with open(os.path.join(out, 'report.md')) as f:
      self.assertEqual(f.read(), report)
    # Other settings in the same directory are refused, naming the flag.
    other = subprocess.run(command + ['--total_rounds=4'], capture_output=True, text=True,
                           env=env, timeout=600)
    self.assertNotEqual(other.returncode, 0)
    self.assertIn('--total_rounds=4 (the results have 3)', other.stderr)

  def _assert_costs(self, results):
    dense = results['fedavg']
    base = results['costs/micro_transducer/fedavg']
    pruned = results['costs/micro_transducer/fp/column/magnitude/0.5']
    self.assertIsNotNone(results['fp/column/magnitude/0.5']['error_rates'])
    # Cost runs are not evaluated, and they train the other model.
    self.assertIsNone(base['error_rates'])
    self.assertIsNone(pruned['error_rates'])
    self.assertGreater(base['model_parameters'], dense['model_parameters'])
    self.assertLess(pruned['model_parameters'], base['model_parameters'])
    self.assertLess(pruned['client_bytes_down'], base['client_bytes_down'])
    for run in (base, pruned):
      self.assertLen(run['round_seconds'], 3)
    scale = results['scale_costs']
    self.assertEqual(scale['model'], 'micro_transducer')
    self.assertEqual(scale['parameters'], base['model_parameters'])
    self.assertAlmostEqual(scale['ratios']['client_bytes'],
                           (pruned['client_bytes_down'] + pruned['client_bytes_up']) /
                           (base['client_bytes_down'] + base['client_bytes_up']))
    self.assertGreater(scale['fedavg']['client_step_seconds'], 0)
    self.assertIn('costs', results)  # The test model's costs as well.
    phases = results['round_phases']
    self.assertEqual((phases['model'], phases['repeats']), ('micro_transducer', 1))
    for key in ('fedavg', 'fp/column/magnitude/0.5'):
      self.assertAlmostEqual(sum(phases[key][p] for p in ('distributor', 'client_work',
                                                           'aggregator', 'finalizer')),
                             phases[key]['round'])


if __name__ == '__main__':
  absltest.main()
