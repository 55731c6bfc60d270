"""//tff_programs:profile_step as users run it."""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

from tests import tff_test_utils


class ProfileStepTest(absltest.TestCase):

  def _run(self, *flags):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run(tff_test_utils.program_command('profile_step') + list(flags),
                          capture_output=True, text=True, env=env, timeout=600)

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
    for flags, message in ((['--compression=aqt:3'], '--compression=aqt:3: 3 bits'),
                           (['--compression=omc:E4M6'], '--compression=omc:E4M6'),
                           (['--compression=int8'], '--compression=int8: expected none'),
                           (['--model=huge'], "--model=huge: unknown model 'huge'"),
                           (['--batch_size=0'], '--batch_size')):
      result = self._run(*flags)
      self.assertEqual(result.returncode, 2, (flags, result.stderr[-2000:]))
      last_line = result.stderr.strip().splitlines()[-1]
      self.assertTrue(last_line.startswith('error: '), last_line)
      self.assertIn(message, last_line)


if __name__ == '__main__':
  absltest.main()
