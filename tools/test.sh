#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, runs `bazel test //...`, and prints
# `N passed, N failed, N skipped` counted from the test cases' XML reports.
# Extra arguments go to `bazel test` (and `bazel info`), e.g. `bash tools/test.sh -c opt`.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
bash tools/setup.sh || exit 1

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
bazel query 'tests(//...)' 2>/dev/null | sort > "${work}/targets"
bazel test //... "$@" 2>&1 | tee "${work}/log"
status=${PIPESTATUS[0]}
grep -E '^//[^ ]+ +(FAILED|TIMEOUT|NO STATUS|FAILED TO BUILD|INCOMPLETE)' "${work}/log" \
  | awk '{print $1}' > "${work}/failed"
testlogs="$(bazel info "$@" bazel-testlogs 2>/dev/null)"
.venv/bin/python3 tools/test_summary.py "${testlogs}" "${work}/targets" "${work}/failed" \
  "${work}/log"
exit "${status}"
