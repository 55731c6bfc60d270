#!/usr/bin/env bash
# The demo: installs what is missing, then runs federated training with the TFF program on the
# embedded default task and prints progress per round and a final result table.
# Extra arguments go to the program, e.g. `bash tools/demo.sh --total_rounds=40`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
bash tools/setup.sh
run_dir="runs/demo-$(date +%Y%m%d-%H%M%S)"
exec bazel run --ui_event_filters=-info,-stdout,-stderr --noshow_progress //tff_programs:train -- \
  --root_output_dir="${run_dir}" --total_rounds=20 --evaluation_period=5 "$@"
