"""//tff_programs:profile_step as users run it."""

import json
import os
import tempfile

from absl.testing import absltest

from tests import tff_test_utils
from tff_programs import profile_step


class ProfileStepTest(absltest.TestCase):

  def _run(self, *flags):
    return tff_test_utils.run_program('profile_step', *flags, timeout=600)

  def test_fedaqt_step_table_and_json(self):
    path = os.path.join(tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir()), 'p.json')
    result = self._run('--model=tiny', '--batch_size=2', '--seconds=1', '--label_length=4',
                       '--compression=aqt:8', '--top=5', f'--output_json={path}')
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    self.assertIn('compression aqt:8, plain step', result.stdout)
    with open(path) as f:
      saved = json.load(f)
    self.assertEqual(saved['compression'], {'codec': 'aqt', 'bits': 8})
    rows = saved['profile']['peak_live_tensors']
    self.assertBetween(len(rows), 1, 5)
    self.assertEqual([r['bytes'] for r in rows], sorted((r['bytes'] for r in rows), reverse=True))
    # Each listed group is a line of the printed table.
    for row in rows:
      self.assertIn(f'{row["count"]:>5}  {row["op"]}', result.stdout)

  def test_bad_input_is_named_in_one_line(self):
    cases = [(['--compression=aqt:3'],
              '--compression=aqt:3: 3-bit quantization is outside the supported'),
             (['--compression=omc:E4M6'], '--compression=omc:E4M6'),
             (['--compression=int8'], '--compression=int8: expected none'),
             (['--model=huge'], "--model=huge: unknown model 'huge'"),
             (['--batch_size=0'], '--batch_size')]
    tff_test_utils.assert_bad_input(self, profile_step, cases, launcher=self._run)


if __name__ == '__main__':
  absltest.main()
