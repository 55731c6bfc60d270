#!/usr/bin/env bash
# The demo: installs what is missing, generates the embedded speech corpus if absent, then runs
# the TFF training program: it evaluates the shipped pretrained Conformer-CTC (round 0), trains
# it with federated averaging over speaker clients for a few rounds, and prints the WER table.
# Extra arguments go to the program, e.g. `bash tools/demo.sh --total_rounds=6`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
bash tools/setup.sh
# TF C++ start-up notices (CUDA plugin registration on a CPU machine) are noise here.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
run_dir="runs/demo-$(date +%Y%m%d-%H%M%S)"
exec bazel run --ui_event_filters=-info,-stdout,-stderr --noshow_progress //tff_programs:train -- \
  --task=speech_ctc --initial_model_dir=checkpoints/conformer_ctc_tiny \
  --root_output_dir="${run_dir}" --total_rounds=3 --clients_per_round=4 --batch_size=8 \
  --client_optimizer=adam --client_learning_rate=0.0002 --evaluation_period=3 "$@"
