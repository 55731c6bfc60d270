"""//tff_programs:prune_report as users run it."""

import json
import os
import tempfile

from absl.testing import absltest

from tests import tff_test_utils
from tff_programs import prune_report


class PruneReportTest(absltest.TestCase):

  def _run(self, *flags):
    return tff_test_utils.run_program('prune_report', *flags, timeout=300)

  def test_table_and_json(self):
    path = os.path.join(tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir()), 't.json')
    result = self._run('--model=tiny', '--pattern=column', '--sparsities=0.2,0.5',
                       f'--output_json={path}')
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    self.assertIn('tiny: 1,164,797 parameters', result.stdout)
    with open(path) as f:
      table = json.load(f)
    ratios = {s: row['zero_parameter_ratio'] for s, row in table['sparsities'].items()}
    # Column pruning removes more than the target: the feed-forward coupling.
    self.assertGreater(ratios['0.2'], 0.2)
    self.assertGreater(ratios['0.5'], ratios['0.2'])
    row = table['sparsities']['0.5']
    self.assertEqual(row['parameters_before'], 1164797)
    self.assertLess(row['parameters_after'],
                    row['parameters_before'] - 0.5 * table['prunable_parameters'])

  def test_bad_input_is_named_in_one_line(self):
    cases = [(['--sparsities=0.2,1.0'], '--sparsities=1.0 is outside [0, 1)'),
             (['--pattern=diagonal'], "--pattern='diagonal' is unknown"),
             (['--sparsities=0.2,x'], '--sparsities=0.2,x'),
             (['--model=conformer_xl'], "--model=conformer_xl")]
    tff_test_utils.assert_bad_input(self, prune_report, cases, launcher=self._run)


if __name__ == '__main__':
  absltest.main()
