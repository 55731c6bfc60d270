"""Counts test cases from Bazel's JUnit XML reports and prints `N passed, N failed, N skipped`.

A test target that failed without writing a report (a crash, a timeout) counts as one failure.
Usage: test_summary.py BAZEL_TESTLOGS_DIR [TARGET_STATUS_FILE]
"""

import os
import sys
import xml.etree.ElementTree as ET


def count_report(path: str) -> tuple[int, int, int]:
  passed = failed = skipped = 0
  for case in ET.parse(path).getroot().iter('testcase'):
    if case.find('failure') is not None or case.find('error') is not None:
      failed += 1
    elif case.find('skipped') is not None or case.get('status') == 'notrun':
      skipped += 1
    else:
      passed += 1
  return passed, failed, skipped


def main(testlogs: str, failed_targets_file: str = '') -> int:
  passed = failed = skipped = 0
  reported_targets = set()
  for directory, _, files in os.walk(testlogs):
    if 'test.xml' in files:
      p, f, s = count_report(os.path.join(directory, 'test.xml'))
      passed, failed, skipped = passed + p, failed + f, skipped + s
      if f or p or s:
        reported_targets.add(os.path.relpath(directory, testlogs))
  # Targets Bazel marked failed but whose report names no failing case (crash, timeout).
  if failed_targets_file and os.path.exists(failed_targets_file):
    with open(failed_targets_file) as fh:
      for target in (line.strip() for line in fh if line.strip()):
        path = target.lstrip('/').replace(':', '/')
        report = os.path.join(testlogs, path, 'test.xml')
        if not os.path.exists(report) or count_report(report)[1] == 0:
          print(f'target failed without a failing test case: {target}')
          failed += 1
  print(f'{passed} passed, {failed} failed, {skipped} skipped')
  return 0


if __name__ == '__main__':
  sys.exit(main(*sys.argv[1:]))
