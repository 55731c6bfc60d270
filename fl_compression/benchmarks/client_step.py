"""Time and peak memory of one client training step, measured in a fresh process.

Peak memory is the process's peak resident set size, so each measurement runs in its own
process: nothing another model allocated earlier can hide in it. It is read from `VmHWM` in
`/proc/self/status`, the high-water mark of this process's own address space. `ru_maxrss` is
not used: Linux carries it across `exec`, so a child started by a large parent (the benchmark
program) would report the parent's resident size instead of its own. The child reports
the RSS after building the model and the peak after the steps; their difference is the step's
working memory (activations, gradients, optimizer scratch) on top of the parameters.

  python -m fl_compression.benchmarks.client_step --config_json='{"name": ...}'
"""

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

# A training step of a client: plain SGD (no optimizer state), random features of the
# requested duration (100 frames per second) and random labels.
FRAMES_PER_SECOND = 100


def peak_rss_bytes() -> int:
  """This process's peak resident set size since it started (or exec'd), in bytes."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # No /proc: kilobytes.


def measure(model_config: dict[str, Any], *, batch_size: int, seconds: float,
            label_length: int, steps: int, seed: int = 0) -> dict[str, Any]:
  """Runs in this process: builds the model, times `steps` SGD steps after a traced first one."""
  import psutil  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from fl_compression.models import asr  # pylint: disable=g-import-not-at-top
  from fl_compression.models import registry  # pylint: disable=g-import-not-at-top

  process = psutil.Process()
  rss_start = process.memory_info().rss
  model = registry.build_keras_model(model_config)
  frames = int(seconds * FRAMES_PER_SECOND)
  bins = model.inputs[0].shape[-1]
  batch = dict(
      features=tf.random.stateless_normal([batch_size, frames, bins], seed=[seed, 1]),
      feature_length=tf.fill([batch_size], frames),
      labels=tf.random.stateless_uniform([batch_size, label_length], seed=[seed, 2], minval=1,
                                         maxval=int(model_config['vocab_size']), dtype=tf.int32),
      label_length=tf.fill([batch_size], label_length))
  optimizer = tf.keras.optimizers.SGD(1e-4)

  @tf.function
  def step(batch):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(asr.per_example_loss(model, batch, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  param_bytes = sum(v.numpy().nbytes for v in model.variables)
  rss_built = process.memory_info().rss
  started = time.perf_counter()
  first_loss = float(step(batch))
  first_step = time.perf_counter() - started
  times = []
  for _ in range(steps):
    started = time.perf_counter()
    step(batch).numpy()
    times.append(time.perf_counter() - started)
  peak = peak_rss_bytes()
  return {'model': model_config['name'], 'parameters': int(model.count_params()),
          'parameter_bytes': int(param_bytes), 'batch_size': batch_size, 'frames': frames,
          'label_length': label_length, 'first_step_seconds': first_step,
          'step_seconds': sorted(times)[len(times) // 2], 'all_step_seconds': times,
          'first_loss': first_loss, 'rss_start_bytes': rss_start, 'rss_built_bytes': rss_built,
          'peak_rss_bytes': peak, 'step_working_bytes': peak - rss_built}


def measure_in_subprocess(model_config: dict[str, Any], *, batch_size: int, seconds: float,
                          label_length: int, steps: int = 3, timeout: float = 1800
                          ) -> dict[str, Any]:
  """`measure` in a fresh Python process (same interpreter and import path)."""
  request = dict(model_config=model_config, batch_size=batch_size, seconds=seconds,
                 label_length=label_length, steps=steps)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
             TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run(
      [sys.executable, '-m', 'fl_compression.benchmarks.client_step', json.dumps(request)],
      capture_output=True, text=True, env=env, timeout=timeout, check=False)
  if result.returncode != 0:
    raise RuntimeError(f'client step measurement of {model_config["name"]} failed '
                       f'(exit {result.returncode}):\n{result.stderr[-3000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == '__main__':
  print(json.dumps(measure(**json.loads(sys.argv[1]))), flush=True)
