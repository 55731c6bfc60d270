"""//tff_programs:corpus as users run it: the split table, feature caches, one-line errors."""

import os
import tempfile

from absl.testing import absltest

from fl_compression.data import corpus
from tests import tff_test_utils


class CorpusProgramTest(absltest.TestCase):

  def test_generates_caches_and_reports_each_split(self):
    data_dir = os.path.join(tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir()), 'c')
    result = tff_test_utils.run_program('corpus', f'--data_dir={data_dir}', '--preset=small',
                                        timeout=300)
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    size = corpus.SMALL.main
    self.assertRegex(result.stdout, rf'main +test-clean +{size.num_test_speakers} +'
                     rf'{size.num_test_speakers * size.test_utterances_per_speaker} +\d+ +[\d.]+')
    self.assertRegex(result.stdout, r'generation \d+ s, feature caches \d+ s, total \d+ s')
    derived = sorted(os.listdir(data_dir + '.features'))
    self.assertLen(derived, 4)  # One feature cache per split, and the decoded splits' record.
    self.assertIn('decoded', derived)
    self.assertCountEqual([name.rsplit('-', 1)[0] for name in
                           os.listdir(os.path.join(data_dir + '.features', 'decoded'))],
                          ['train-clean-100', 'dev-clean', 'test-clean'])
    self.assertTrue(os.path.exists(os.path.join(data_dir, corpus.MANIFEST)))

  def test_bad_input_is_named_in_one_line(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    with open(os.path.join(tmp, 'notes.txt'), 'w') as f:
      f.write('not a corpus')
    cases = [
        (['--preset=small', '--domain=short-form', f'--data_dir={tmp}/c'],
         '--domain=short-form: --preset=small has no short-form domain'),
        (['--preset=small', f'--data_dir={tmp}'], f'--data_dir={tmp}: {tmp} is not empty and '
         'holds no generated corpus'),
    ]
    for flags, message in cases:
      tff_test_utils.assert_one_line_error(
          self, tff_test_utils.run_program('corpus', *flags, timeout=120), message, flags)
    self.assertEqual(os.listdir(tmp), ['notes.txt'])


if __name__ == '__main__':
  absltest.main()
