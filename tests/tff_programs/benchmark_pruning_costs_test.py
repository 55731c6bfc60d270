"""//tff_programs:benchmark_pruning's costs experiment end to end, with the costs at another
model (`--cost_model`): its runs start from that model's initialization and are not
evaluated."""

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


class BenchmarkPruningCostsTest(absltest.TestCase):

  def test_costs_at_another_model_run_from_its_initialization(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    data_dir, out = os.path.join(tmp, 'corpus'), os.path.join(tmp, 'report')
    corpus.generate(data_dir, _TINY, log=lambda message: None)
    model_dir = os.path.join(tmp, 'initial')
    tff_test_utils.save_small_speech_model(model_dir)
    command = tff_test_utils.program_command('benchmark_pruning') + [
        f'--data_dir={data_dir}', f'--initial_model_dir={model_dir}', f'--output_dir={out}',
        '--experiments=costs', '--total_rounds=2', '--clients_per_round=1', '--batch_size=2',
        '--memory_model=', '--cost_model=micro_transducer', '--step_seconds=0.5',
        '--phase_repeats=1']
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('4 federated runs, 0 already done', result.stdout)

    with open(os.path.join(out, 'results.json')) as f:
      results = json.load(f)['results']
    dense = results['fedavg']
    base = results['costs/micro_transducer/fedavg']
    pruned = results['costs/micro_transducer/fp/column/magnitude/0.5']
    self.assertIsNotNone(dense['error_rates'])
    # Cost runs are not evaluated, and they train the other model.
    self.assertIsNone(base['error_rates'])
    self.assertIsNone(pruned['error_rates'])
    self.assertGreater(base['model_parameters'], dense['model_parameters'])
    self.assertLess(pruned['model_parameters'], base['model_parameters'])
    self.assertLess(pruned['client_bytes_down'], base['client_bytes_down'])
    for run in (base, pruned):
      self.assertLen(run['round_seconds'], 2)
    scale = results['scale_costs']
    self.assertEqual(scale['model'], 'micro_transducer')
    self.assertEqual(scale['parameters'], base['model_parameters'])
    self.assertAlmostEqual(scale['ratios']['client_bytes'],
                           (pruned['client_bytes_down'] + pruned['client_bytes_up']) /
                           (base['client_bytes_down'] + base['client_bytes_up']))
    self.assertGreater(scale['fedavg']['client_step_seconds'], 0)
    self.assertIn('costs', results)  # The tiny model's costs as well.
    phases = results['round_phases']
    self.assertEqual((phases['model'], phases['repeats']), ('micro_transducer', 1))
    for key in ('fedavg', 'fp/column/magnitude/0.5'):
      self.assertAlmostEqual(sum(phases[key][p] for p in ('distributor', 'client_work',
                                                           'aggregator', 'finalizer')),
                             phases[key]['round'])

    with open(os.path.join(out, 'report.md')) as f:
      report = f.read()
    self.assertIn('### The same costs with `micro_transducer`', report)
    self.assertRegex(report, r'50% column \(`micro_transducer`\): client bytes per round')
    self.assertRegex(report, r'\| costs/micro_transducer/fedavg \|  \|  \|  \|  \| [\d,]+ \|')
    self.assertRegex(report, r'\| client_work \| [\d.]+ \| [\d.]+ \| [+-][\d.]+ \|')


if __name__ == '__main__':
  absltest.main()
