"""Time and peak memory of a TFLite model's signatures in the TFLite interpreter, in a fresh
process (so nothing the exporting process allocated hides in the peak).

The child loads the model, runs `train` once (the interpreter allocates its tensors and the
Flex delegate its kernels), resets the resident high-water mark and runs `steps` more steps:
`train_step_peak_rss_bytes` is the peak of those steady-state steps, what a phone needs for
training; `first_train_peak_rss_bytes` includes the allocation. It also times `infer` on
`infer_seconds` of features and `transcribe` on that much audio in a second interpreter (as an
inference-only app runs them), and checks that `infer` still runs in the training interpreter
after the steps (`infer_after_train`). Inputs are seeded random features (100 frames per
second) and labels.

  python -m tflite_export.memory '{"model_path": ..., "batch_size": 4, ...}'
"""

import json
import os
import sys
import time
from typing import Any

from fl_compression.benchmarks import fresh_process

FRAMES_PER_SECOND = 100
SAMPLE_RATE = 16000


def _rss_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _median(values):
  return sorted(values)[len(values) // 2]


def measure(model_path: str, *, batch_size: int = 4, seconds: float = 4.0,
            label_length: int = 20, steps: int = 3, infer_seconds: float = 10.0,
            vocab_size: int = 29, num_mel_bins: int = 80, seed: int = 0) -> dict[str, Any]:
  """Runs in this process (see the module docstring)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from fl_compression.benchmarks import client_step  # pylint: disable=g-import-not-at-top

  rss_start = _rss_bytes()
  interpreter = tf.lite.Interpreter(model_path=model_path)
  rss_loaded = _rss_bytes()
  rng = np.random.default_rng(seed)
  frames = int(seconds * FRAMES_PER_SECOND)
  batch = dict(
      features=rng.standard_normal((batch_size, frames, num_mel_bins), dtype=np.float32),
      feature_length=np.full([batch_size], frames, np.int32),
      labels=rng.integers(1, vocab_size, (batch_size, label_length), dtype=np.int32),
      label_length=np.full([batch_size], label_length, np.int32))
  result: dict[str, Any] = {'model_path': model_path, 'file_bytes': os.path.getsize(model_path),
                            'rss_start_bytes': rss_start, 'rss_loaded_bytes': rss_loaded}
  runners = interpreter.get_signature_list()
  if 'train' in runners:
    train = interpreter.get_signature_runner('train')
    started = time.perf_counter()
    train(**batch)
    result['first_train_seconds'] = time.perf_counter() - started
    result['first_train_peak_rss_bytes'] = client_step.peak_rss_bytes()
    reset = client_step.reset_peak_rss()
    times = []
    for _ in range(steps):
      started = time.perf_counter()
      train(**batch)
      times.append(time.perf_counter() - started)
    result.update(train_batch=[batch_size, frames, label_length],
                  train_step_seconds=_median(times), all_train_step_seconds=times,
                  train_step_peak_rss_bytes=client_step.peak_rss_bytes() if reset else None)
  infer_frames = int(infer_seconds * FRAMES_PER_SECOND)
  features = rng.standard_normal((1, infer_frames, num_mel_bins), dtype=np.float32)
  audio = (0.1 * rng.standard_normal(int(infer_seconds * SAMPLE_RATE))).astype(np.float32)
  inference_inputs = {
      'infer': dict(features=features, feature_length=np.array([infer_frames], np.int32)),
      'transcribe': dict(audio=audio)}
  # Inference is timed in an interpreter of its own, as an inference-only app runs it.
  inference = tf.lite.Interpreter(model_path=model_path)
  for name, inputs in inference_inputs.items():
    if name not in runners:
      continue
    runner = inference.get_signature_runner(name)
    runner(**inputs)  # Allocation and first-run costs.
    times = []
    for _ in range(3):
      started = time.perf_counter()
      runner(**inputs)
      times.append(time.perf_counter() - started)
    result[f'{name}_seconds'] = _median(times)
  if 'train' in runners and 'infer' in runners:
    # An app trains and then recognizes with the same interpreter.
    try:
      interpreter.get_signature_runner('infer')(**inference_inputs['infer'])
      result['infer_after_train'] = 'ok'
    except (RuntimeError, ValueError) as e:
      result['infer_after_train'] = f'failed: {e}'
  result.update(infer_audio_seconds=infer_seconds, peak_rss_bytes=client_step.peak_rss_bytes())
  return result


def measure_in_subprocess(model_path: str, timeout: float = 1800, **kwargs) -> dict[str, Any]:
  """`measure` in a fresh Python process (same interpreter and import path)."""
  return fresh_process.run_module('tflite_export.memory', dict(model_path=model_path, **kwargs),
                                  timeout=timeout, what=f'TFLite measurement of {model_path}')

if __name__ == '__main__':
  request = json.loads(sys.argv[1])
  print(json.dumps(measure(request.pop('model_path'), **request)), flush=True)
