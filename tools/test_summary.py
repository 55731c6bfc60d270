"""Counts test cases from Bazel's JUnit XML reports and prints `N passed, N failed, N skipped`.

Only the reports of the given test targets are read (stale reports of removed targets are not).
A sharded target's reports are its shards' (`shard_<i>_of_<n>/test.xml`), summed. A target with
no usable report (or a missing shard), or one Bazel marked failed whose report names no failing
case (a crash or a timeout leaves absltest's report empty), counts as one failure.
With Bazel's log of the run (`bazel test` output), it also prints the five slowest targets.
Usage: test_summary.py BAZEL_TESTLOGS_DIR TARGETS_FILE FAILED_TARGETS_FILE [BAZEL_LOG]
"""

import glob
import os
import re
import sys
import xml.etree.ElementTree as ET


def count_report(path: str) -> tuple[int, int, int]:
  """(passed, failed, skipped) test cases of one report; raises ValueError if unreadable."""
  try:
    root = ET.parse(path).getroot()
  except (ET.ParseError, OSError) as e:
    raise ValueError(f'{path}: unreadable report ({e})') from None
  passed = failed = skipped = 0
  for case in root.iter('testcase'):
    if case.find('failure') is not None or case.find('error') is not None:
      failed += 1
    elif case.find('skipped') is not None or case.get('status') == 'notrun':
      skipped += 1
    else:
      passed += 1
  return passed, failed, skipped


def _read_lines(path: str) -> list[str]:
  if not path or not os.path.exists(path):
    return []
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


def count_target(directory: str) -> tuple[int, int, int]:
  """(passed, failed, skipped) of a target's report, or of all its shards' reports."""
  shards = sorted(glob.glob(os.path.join(directory, 'shard_*_of_*', 'test.xml')))
  if not shards or os.path.exists(os.path.join(directory, 'test.xml')):
    return count_report(os.path.join(directory, 'test.xml'))
  total = int(re.search(r'shard_\d+_of_(\d+)', shards[0]).group(1))
  if len(shards) != total:
    raise ValueError(f'{directory}: {len(shards)} of {total} shard reports')
  counts = [count_report(path) for path in shards]
  return tuple(sum(c[i] for c in counts) for i in range(3))


def summarize(testlogs: str, targets: list[str], failed_targets: list[str]) -> tuple[int, int, int]:
  passed = failed = skipped = 0
  for target in targets:
    directory = os.path.join(testlogs, target.lstrip('/').replace(':', '/'))
    try:
      p, f, s = count_target(directory)
    except ValueError as e:
      print(f'{target}: no usable test report: {e}')
      failed += 1
      continue
    if target in failed_targets and f == 0:
      print(f'{target}: failed without a failing test case (crash or timeout)')
      f = 1
    passed, failed, skipped = passed + p, failed + f, skipped + s
  return passed, failed, skipped


_TARGET_TIME = re.compile(r'^(//\S+)\s+(?:\(cached\) )?(?:PASSED|FAILED|FLAKY|TIMEOUT)'
                          r'.*? in (?:\d+ out of \d+ in )?([\d.]+)s')


def slowest(log_lines: list[str], count: int = 5) -> list[tuple[str, float]]:
  """The `count` slowest targets of a `bazel test` log, from its `//t PASSED in 12.3s` lines
  (a sharded target's longest shard)."""
  found = {}
  for line in log_lines:
    match = _TARGET_TIME.match(line.strip())
    if match:
      found[match.group(1)] = max(found.get(match.group(1), 0.0), float(match.group(2)))
  return sorted(found.items(), key=lambda x: -x[1])[:count]


def main(testlogs: str, targets_file: str, failed_targets_file: str = '',
         log_file: str = '') -> int:
  passed, failed, skipped = summarize(
      testlogs, _read_lines(targets_file), _read_lines(failed_targets_file))
  for target, seconds in slowest(_read_lines(log_file)):
    print(f'slowest: {target} {seconds:.0f} s')
  print(f'{passed} passed, {failed} failed, {skipped} skipped')
  return 0


if __name__ == '__main__':
  sys.exit(main(*sys.argv[1:]))
