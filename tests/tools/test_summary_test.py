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

  def _summary(self, targets, failed_targets=()):
    with tempfile.TemporaryFile('w+') as out:
      with contextlib.redirect_stdout(out):
        counts = test_summary.summarize(self.logs, list(targets), list(failed_targets))
      out.seek(0)
      return counts, out.read()

  def test_counts_each_case_by_outcome(self):
    self._write_report('pkg/a_test')
    self.assertEqual(
        test_summary.count_report(os.path.join(self.logs, 'pkg/a_test/test.xml')), (2, 2, 2))

  def test_sums_over_the_given_targets_only(self):
    self._write_report('pkg/a_test')
    self._write_report('pkg/b_test')
    self._write_report('pkg/removed_test')  # A stale report of a target that no longer exists.
    counts, _ = self._summary(['//pkg:a_test', '//pkg:b_test'])
    self.assertEqual(counts, (4, 4, 4))

  def test_sharded_target_sums_its_shards_and_a_missing_shard_fails(self):
    self._write_report('pkg/sharded_test/shard_1_of_2')
    self._write_report('pkg/sharded_test/shard_2_of_2')
    self._write_report('pkg/half_test/shard_1_of_2')
    counts, output = self._summary(['//pkg:sharded_test', '//pkg:half_test'])
    self.assertEqual(counts, (4, 4 + 1, 4))
    self.assertIn('1 of 2 shard reports', output)

  def test_slowest_targets_from_bazels_log(self):
    log = ['//tests/a:x_test                  PASSED in 12.5s',
           '//tests/b:y_test         (cached) PASSED in 3.0s',
           '//tests/c:z_test                  FAILED in 2 out of 2 in 80.1s',
           '//tests/d:w_test                  PASSED in 40.0s',
           'INFO: Build completed successfully']
    self.assertEqual(test_summary.slowest(log, 2), [('//tests/c:z_test', 80.1),
                                                    ('//tests/d:w_test', 40.0)])

  def test_failed_target_without_failing_case_counts_once(self):
    ok_only = _REPORT.replace('<failure message="boom"/>', '').replace(
        '<error message="crash"/>', '')
    self._write_report('pkg/timeout_test', ok_only)
    counts, output = self._summary(['//pkg:timeout_test'], ['//pkg:timeout_test'])
    self.assertEqual(counts, (4, 1, 2))
    self.assertIn('crash or timeout', output)

  def test_empty_or_missing_report_counts_as_one_failure(self):
    self._write_report('pkg/crashed_test', '')  # absltest's report before it is filled in.
    counts, output = self._summary(['//pkg:crashed_test', '//pkg:never_ran_test'],
                                   ['//pkg:crashed_test'])
    self.assertEqual(counts, (0, 2, 0))
    self.assertIn('//pkg:crashed_test: no usable test report', output)

  def test_main_prints_the_closing_line(self):
    self._write_report('pkg/a_test')
    targets = os.path.join(self.logs, 'targets')
    with open(targets, 'w') as f:
      f.write('//pkg:a_test\n')
    with tempfile.TemporaryFile('w+') as out:
      with contextlib.redirect_stdout(out):
        test_summary.main(self.logs, targets, '')
      out.seek(0)
      self.assertEqual(out.read().strip().splitlines()[-1], '2 passed, 2 failed, 2 skipped')


if __name__ == '__main__':
  absltest.main()
