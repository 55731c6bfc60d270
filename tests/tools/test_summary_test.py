import contextlib
import os
import tempfile

from absl.testing import absltest

from tools import test_summary

_REPORT = """<?xml version="1.0"?>
<testsuites><testsuite name="S">
  <testcase name="a" status="run"></testcase>
  <testcase name="b" status="run"><failure message="boom"/></testcase>
  <testcase name="c" status="run"><error message="crash"/></testcase>
  <testcase name="d" status="notrun"></testcase>
  <testcase name="e" status="run"><skipped/></testcase>
  <testcase name="f" status="run"></testcase>
</testsuite></testsuites>
"""


class TestSummaryTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.logs = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())

  def _write_report(self, target_path, text=_REPORT):
    os.makedirs(os.path.join(self.logs, target_path))
    with open(os.path.join(self.logs, target_path, 'test.xml'), 'w') as f:
      f.write(text)

  def _summary(self, failed_targets=()):
    failed_file = os.path.join(self.logs, 'failed.txt')
    with open(failed_file, 'w') as f:
      f.write('\n'.join(failed_targets))
    with tempfile.TemporaryFile('w+') as out:
      with contextlib.redirect_stdout(out):
        test_summary.main(self.logs, failed_file)
      out.seek(0)
      return out.read().strip().splitlines()[-1]

  def test_counts_each_case_by_outcome(self):
    self.assertEqual(test_summary.count_report(self._report_path('pkg/a_test')), (2, 2, 2))

  def test_sums_over_targets(self):
    self._write_report('pkg/a_test')
    self._write_report('pkg/b_test')
    self.assertEqual(self._summary(), '4 passed, 4 failed, 4 skipped')

  def test_failed_target_without_failing_case_counts_once(self):
    ok_only = _REPORT.replace('<failure message="boom"/>', '').replace('<error message="crash"/>', '')
    self._write_report('pkg/timeout_test', ok_only)
    self.assertEqual(self._summary(['//pkg:timeout_test', '//pkg:crashed_test']),
                     '4 passed, 2 failed, 2 skipped')

  def _report_path(self, target_path):
    self._write_report(target_path)
    return os.path.join(self.logs, target_path, 'test.xml')


if __name__ == '__main__':
  absltest.main()
