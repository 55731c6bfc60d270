#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, runs `bazel test //...`, and prints
# `N passed, N failed, N skipped` counted from the test cases' XML reports.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
bash tools/setup.sh || exit 1

log="$(mktemp)"
bazel test //... "$@" 2>&1 | tee "${log}"
status=${PIPESTATUS[0]}
failed_targets="$(mktemp)"
grep -E '^//[^ ]+ +(FAILED|TIMEOUT|NO STATUS|FAILED TO BUILD)' "${log}" | awk '{print $1}' > "${failed_targets}"
testlogs="$(bazel info bazel-testlogs 2>/dev/null)"
.venv/bin/python3 tools/test_summary.py "${testlogs}" "${failed_targets}"
rm -f "${log}" "${failed_targets}"
# Bazel exits 4 when no test target exists; anything else non-zero is a failure.
exit "${status}"
