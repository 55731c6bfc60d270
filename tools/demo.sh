#!/usr/bin/env bash
# The demo: installs what is missing, generates the embedded speech corpus if absent, then
# - runs the TFF training program with federated pruning: it evaluates the shipped pretrained
#   Conformer-CTC (round 0), prunes 20% of its Conformer columns and trains the reduced model
#   over speaker clients for a few rounds (prune, refine, fine-tune), and prints the WER table;
# - exports the trained reduced model to a TFLite bundle with on-device training signatures
#   and verifies it against the Keras model in the TFLite interpreter.
# Extra arguments go to the training program, e.g. `bash tools/demo.sh --total_rounds=6`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
bash tools/setup.sh
# TF C++ start-up notices (CUDA plugin registration on a CPU machine) are noise here.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
run_dir="runs/demo-$(date +%Y%m%d-%H%M%S)"
quiet=(--ui_event_filters=-info,-stdout,-stderr --noshow_progress)
bazel run "${quiet[@]}" //tff_programs:train -- \
  --task=speech_ctc --algorithm=fp --initial_model_dir=checkpoints/conformer_ctc_tiny \
  --root_output_dir="${run_dir}" --total_rounds=3 --clients_per_round=4 --batch_size=8 \
  --client_optimizer=adam --client_learning_rate=0.0002 --evaluation_period=3 \
  --fp_sparsity=0.2 --fp_refine_start=2 --fp_finetune_start=3 "$@"
echo
bazel run "${quiet[@]}" //tflite_export:export -- \
  --model_dir="${run_dir}/final_model" --output_dir="${run_dir}/tflite"
