#!/usr/bin/env bash
# The demo: installs what is missing, then on the embedded speech corpus
# - trains dense FedAvg and a compressed variant side by side with the TFF training program:
#   both start from the shipped pretrained Conformer-CTC and train the same rounds on the same
#   speaker clients;
# - exports the compressed run's final model to a TFLite bundle with on-device training
#   signatures and verifies it against its Keras model in the TFLite interpreter (the dense
#   run's bundle is left out: its size follows from the parameter count, and a conversion
#   takes a minute and a half);
# - prints the two side by side: WER per split with the paired 95% interval, client bytes per
#   round, final model and TFLite sizes.
# DEMO_METHOD picks the compressed variant (fedaqt, omc or fp); DEMO_ROUNDS the rounds.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
bash tools/setup.sh
# TF C++ start-up notices (CUDA plugin registration on a CPU machine) are noise here.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
method="${DEMO_METHOD:-fedaqt}"
rounds="${DEMO_ROUNDS:-8}"
case "${method}" in
  fedaqt) method_flags=(--algorithm=fedaqt --aqt_bits=8 --aqt_rounding=stochastic) ;;
  omc) method_flags=(--algorithm=omc --omc_format=S1E4M6 --omc_fraction=0.9
                     --omc_rounding=stochastic) ;;
  fp) method_flags=(--algorithm=fp --fp_sparsity=0.3 --fp_adaptive --fp_refine_start=2
                    --fp_finetune_start=3) ;;
  *) echo "error: DEMO_METHOD=${method} is unknown; known: fedaqt, omc, fp" >&2; exit 2 ;;
esac
run_dir="${root}/runs/demo-$(date +%Y%m%d-%H%M%S)"
data_dir="${root}/data/embedded_corpus"
quiet=(--ui_event_filters=-info,-stdout,-stderr --noshow_progress)
bazel run "${quiet[@]}" //tff_programs:corpus -- --data_dir="${data_dir}" --domain=main
common=(--task=speech_ctc --initial_model_dir=checkpoints/conformer_ctc_tiny
        --data_dir="${data_dir}" --total_rounds="${rounds}" --clients_per_round=4
        --batch_size=8 --client_optimizer=adam --client_learning_rate=0.0002
        --evaluation_period="${rounds}"
        # One evaluation per run, at the end, on test-clean only: the table compares the two
        # final models (no round is chosen on dev), and the WER comes from transcription.
        --evaluate_initial=false --evaluation_splits=test --nofederated_evaluation)
# The dense run goes on in the background while the compressed run trains and exports: on
# 2 cores their single-threaded phases (imports, model and computation builds, transcription)
# overlap. Both train the same clients and rounds; the comparison shows no timings.
mkdir -p "${run_dir}"
dense_log="${run_dir}/fedavg.log"
bazel build "${quiet[@]}" //tff_programs:train //tff_programs:compare //tflite_export:export
bazel run "${quiet[@]}" //tff_programs:train -- "${common[@]}" --algorithm=fedavg \
  --root_output_dir="${run_dir}/fedavg" > "${dense_log}" 2>&1 &
dense_pid=$!
trap 'kill "${dense_pid}" 2>/dev/null || true' EXIT
echo
echo "dense FedAvg is training in the background (its output: ${dense_log})"
echo
bazel run "${quiet[@]}" //tff_programs:train -- "${common[@]}" "${method_flags[@]}" \
  --root_output_dir="${run_dir}/${method}"
echo
bazel run "${quiet[@]}" //tflite_export:export -- --measure_memory=false \
  --model_dir="${run_dir}/${method}/final_model" --output_dir="${run_dir}/${method}/tflite" \
  --data_dir="${data_dir}"
echo
if ! wait "${dense_pid}"; then
  tail -n 20 "${dense_log}" >&2
  echo "error: the dense FedAvg run failed; its output: ${dense_log}" >&2
  exit 1
fi
trap - EXIT
# Its WER only: its round times were measured while the other run shared the CPU.
echo "dense FedAvg, trained in the background (its whole output: ${dense_log}):"
sed -n '/^Word and character error rates/,$p' "${dense_log}"
echo
bazel run "${quiet[@]}" //tff_programs:compare -- --baseline_run="${run_dir}/fedavg" \
  --run="${run_dir}/${method}"
