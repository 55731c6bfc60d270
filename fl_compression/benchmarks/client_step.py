"""Time and peak memory of one client training step, measured in a fresh process.

Peak memory is the process's peak resident set size, so each measurement runs in its own
process: nothing another model allocated earlier can hide in it. It is read from `VmHWM` in
`/proc/self/status`, the high-water mark of this process's own address space. `ru_maxrss` is
not used: Linux carries it across `exec`, so a child started by a large parent (the benchmark
program) would report the parent's resident size instead of its own. The child reports
the RSS after building the model and the peak after the steps; their difference is the
step's working memory on top of the parameters (activations, gradients, and the TF graph the
first step builds). That peak includes the first step, where TF traces and optimizes the
step's graph; after it the child trims the C heap, resets the high-water mark
(`/proc/self/clear_refs`) and also reports the peak RSS of the steady-state steps alone
(`step_peak_rss_bytes`).

The process RSS also holds the TF runtime and the step's graph and executor state. The
tensors a step needs are measured apart from them: `step_tensor_bytes` is the peak of TF's CPU
allocator during the steady-state steps above what it held before them
(`tf.config.experimental.get_memory_info`): activations kept for the backward pass, gradients
and temporaries. `tensor_peak_bytes` adds the parameters held (`held_parameter_bytes`, exact
sizes): the memory of a compiled step on a device (weights plus its arena). The allocator's
absolute count is not used, because variables created eagerly are not all in it; everything a
step allocates runs in the step's graph and is. TF's default CPU allocator keeps no
statistics (only the oneDNN allocator, on by default on CPUs with AVX-512, does, and not for
small allocations), so the child runs TF's BFC allocator on the CPU (`ALLOCATOR_ENV`), which
counts every allocation on every machine; results record it (`allocator`) and results taken
with another allocator are not reused.

`compression` measures the decompress-on-use step of OMC or FedAQT
(`fl_compression.compression.on_the_fly`): {'codec': 'omc', 'format': 'S1E4M6'} or
{'codec': 'aqt', 'bits': 8} (FedAQT also quantizes the dense layers' inputs). Its parameters
are counted as held (`held_parameter_bytes`: packed kernels, other variables float32).
`rematerialize` recomputes the Conformer subsampling and blocks in the backward pass
(`conformer.set_rematerialization`) instead of keeping their activations, for either step.
`profile_top` runs one more step under TF's profiler and lists the tensors alive at its
allocator peak, by op (`memory_profile`; `peak_live_tensors`).

  python -m fl_compression.benchmarks.client_step --config_json='{"name": ...}'
"""

import ctypes
import json
import os
import resource
import sys
import time
from typing import Any

from fl_compression.benchmarks import fresh_process

# The measuring process's CPU allocator: BFC, whose statistics count every allocation.
ALLOCATOR_ENV = {'TF_CPU_ALLOCATOR_USE_BFC': 'true'}
ALLOCATOR = 'bfc'
# Revision of the rematerialized step that results record: 2 computes each dropout mask after
# the tensor it masks. Revision 1 let TF compute every block's (stateless) mask up front and
# hold it until the backward pass: 566 MiB of step tensors on conformer_l, 283 MiB since.
REMAT_REVISION = 2

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


def reset_peak_rss() -> bool:
  """Resets this process's `VmHWM` to its current RSS; False where Linux does not allow it."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def trim_heap() -> bool:
  """Returns the C heap's free memory to the OS (`malloc_trim`); False without glibc or
  when there was nothing to release."""
  try:
    return bool(ctypes.CDLL('libc.so.6').malloc_trim(0))
  except (OSError, AttributeError):
    return False


def _allocator_bytes(field: str, reset: bool = False):
  """TF's CPU allocator statistic `field` ('current' or 'peak'), after resetting the peak if
  asked; None where this TF build keeps no CPU allocator statistics."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    if reset:
      tf.config.experimental.reset_memory_stats('CPU:0')
    return int(tf.config.experimental.get_memory_info('CPU:0')[field])
  except (ValueError, RuntimeError, tf.errors.OpError):
    return None


def parse_compression(spec: str) -> dict[str, Any] | None:
  """`none`, `omc:<format>` (e.g. `omc:S1E4M6`) or `aqt:<bits>` -> the probe's `compression`
  setting (None for float32); a `ValueError` says what is wrong with `spec`."""
  kind, _, argument = spec.partition(':')
  if kind == 'none' and not argument:
    return None
  if kind == 'omc':
    compression = {'codec': 'omc', 'format': argument}
  elif kind == 'aqt':
    try:
      compression = {'codec': 'aqt', 'bits': int(argument)}
    except ValueError:
      raise ValueError(f'{argument!r} is not a bit width') from None
  else:
    raise ValueError('expected none, omc:<format> or aqt:<bits>')
  compression_codec(compression)  # Validates the format or bit width.
  return compression


def compression_codec(compression: dict[str, Any]):
  """(codec, activation bits) of a `compression` setting: the codec of the decompress-on-use
  step and the bits its layer inputs are quantized to (0: float inputs)."""
  from fl_compression.compression import codecs  # pylint: disable=g-import-not-at-top
  from fl_compression.compression import float_format  # pylint: disable=g-import-not-at-top

  kind = compression.get('codec')
  if kind == 'omc':
    return codecs.OmcCodec(float_format.parse(compression['format'])), 0
  if kind == 'aqt':
    bits = int(compression['bits'])
    return codecs.AqtCodec(bits), bits if compression.get('activations', True) else 0
  raise ValueError(f'unknown compression codec {kind!r}; known: omc, aqt')


def _compressed_model(model_config, compression: dict[str, Any], learning_rate: float):
  """The decompress-on-use model of a `compression` setting."""
  from fl_compression.compression import on_the_fly  # pylint: disable=g-import-not-at-top

  codec, bits = compression_codec(compression)
  return on_the_fly.build_model(model_config, codec, learning_rate, bits)


def measure(model_config: dict[str, Any], *, batch_size: int, seconds: float,
            label_length: int, steps: int, seed: int = 0,
            compression: dict[str, Any] | None = None,
            rematerialize: bool = False, profile_top: int = 0,
            swat: dict[str, Any] | None = None) -> dict[str, Any]:
  """Runs in this process: builds the model, times `steps` SGD steps after a traced first one
  (and profiles one more if `profile_top`). `swat` ({'sparsity', 'activation_sparsity'})
  measures ZeroFL's client step: the model's SWAT layers (`fl_compression.zerofl`)."""
  import psutil  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from fl_compression.compression import on_the_fly  # pylint: disable=g-import-not-at-top
  from fl_compression.models import asr  # pylint: disable=g-import-not-at-top
  from fl_compression.models import conformer  # pylint: disable=g-import-not-at-top
  from fl_compression.models import registry  # pylint: disable=g-import-not-at-top

  process = psutil.Process()
  rss_start = process.memory_info().rss
  learning_rate = 1e-4
  if compression:
    model = _compressed_model(model_config, compression, learning_rate)
  elif swat:
    from fl_compression.models import pruned_dense  # pylint: disable=g-import-not-at-top
    from fl_compression.zerofl import process as zerofl  # pylint: disable=g-import-not-at-top
    config = zerofl.ZeroFLConfig(sparsity=swat['sparsity'], mask_ratio=0.0,
                                 activation_sparsity=swat.get('activation_sparsity', 0.0))
    with pruned_dense.building_dense(zerofl.swat_factory(config)):
      model = registry.build_keras_model(model_config)
  else:
    model = registry.build_keras_model(model_config)
  if rematerialize and not conformer.set_rematerialization(model, True):
    raise ValueError(f'model {model_config["name"]!r} has no Conformer encoder to rematerialize')
  frames = int(seconds * FRAMES_PER_SECOND)
  bins = model.inputs[0].shape[-1]
  batch = dict(
      features=tf.random.stateless_normal([batch_size, frames, bins], seed=[seed, 1]),
      feature_length=tf.fill([batch_size], frames),
      labels=tf.random.stateless_uniform([batch_size, label_length], seed=[seed, 2], minval=1,
                                         maxval=int(model_config['vocab_size']), dtype=tf.int32),
      label_length=tf.fill([batch_size], label_length))
  loss_fn = lambda model, batch: tf.reduce_mean(  # noqa: E731
      asr.per_example_loss(model, batch, training=True))
  # Both steps are plain SGD with the same rate; the compressed one updates its packed kernels
  # inside the backward pass.
  step = on_the_fly.sgd_step(model, loss_fn, learning_rate)

  param_bytes = sum(v.numpy().nbytes for v in model.variables)
  held_bytes = on_the_fly.held_parameter_bytes(model)
  rss_built = process.memory_info().rss
  started = time.perf_counter()
  first_loss = float(step(batch))
  first_step = time.perf_counter() - started
  peak_with_trace = peak_rss_bytes()
  trim_heap()
  rss_rest = process.memory_info().rss
  reset = reset_peak_rss()
  tensors_rest = _allocator_bytes('current', reset=True)  # See the module docstring.
  times = []
  for _ in range(steps):
    started = time.perf_counter()
    step(batch).numpy()
    times.append(time.perf_counter() - started)
  steady_peak = peak_rss_bytes()
  tensors_peak = _allocator_bytes('peak')
  step_tensors = (tensors_peak - tensors_rest
                  if tensors_peak is not None and tensors_rest is not None else None)
  peak = max(peak_with_trace, steady_peak)
  profile = None
  if profile_top > 0:
    from fl_compression.benchmarks import memory_profile  # pylint: disable=g-import-not-at-top
    start = _allocator_bytes('current', reset=True)
    _, groups = memory_profile.live_at_peak(
        memory_profile.trace_allocations(lambda: step(batch).numpy()))
    end_peak = _allocator_bytes('peak')
    profile = {'step_tensor_bytes': (end_peak - start if None not in (start, end_peak)
                                     else None),
               'peak_live_tensors': memory_profile.top_groups(groups, profile_top)}
  allocator = (ALLOCATOR if all(os.environ.get(k) == v for k, v in ALLOCATOR_ENV.items())
               else 'default')
  return {'model': model_config['name'], 'compression': compression, 'swat': swat,
          'rematerialize': bool(rematerialize), 'allocator': allocator,
          'remat_revision': REMAT_REVISION if rematerialize else None,
          'parameters': on_the_fly.parameter_count(model),
          'parameter_bytes': int(param_bytes), 'held_parameter_bytes': int(held_bytes),
          'batch_size': batch_size, 'frames': frames,
          'label_length': label_length, 'first_step_seconds': first_step,
          'step_seconds': sorted(times)[len(times) // 2], 'all_step_seconds': times,
          'first_loss': first_loss, 'rss_start_bytes': rss_start, 'rss_built_bytes': rss_built,
          'peak_rss_bytes': peak, 'step_working_bytes': peak - rss_built,
          'step_peak_rss_bytes': steady_peak if reset else None, 'rss_rest_bytes': rss_rest,
          'step_tensor_bytes': step_tensors,
          'tensor_peak_bytes': int(held_bytes) + step_tensors if step_tensors is not None
                               else None,
          'profile': profile}


def is_current(result: dict[str, Any] | None, *, batch_size: int, seconds: float,
               rematerialize: bool = False) -> bool:
  """Whether a stored `measure` result is for this batch, duration and rematerialization and
  was taken by this probe (with the BFC allocator; older results lack the tensor memory or
  took it from the oneDNN allocator, which leaves out small allocations; rematerialized ones
  must be of the current `REMAT_REVISION`)."""
  return bool(result) and result.get('allocator') == ALLOCATOR and (
      result.get('batch_size') == batch_size and
      result.get('frames') == int(seconds * FRAMES_PER_SECOND) and
      bool(result.get('rematerialize', False)) == bool(rematerialize) and
      (not rematerialize or result.get('remat_revision') == REMAT_REVISION))


def measure_in_subprocess(model_config: dict[str, Any], *, batch_size: int, seconds: float,
                          label_length: int, steps: int = 3, timeout: float = 1800,
                          compression: dict[str, Any] | None = None,
                          rematerialize: bool = False, profile_top: int = 0,
                          swat: dict[str, Any] | None = None) -> dict[str, Any]:
  """`measure` in a fresh Python process (same interpreter and import path)."""
  request = dict(model_config=model_config, batch_size=batch_size, seconds=seconds,
                 label_length=label_length, steps=steps, compression=compression,
                 rematerialize=rematerialize, profile_top=profile_top, swat=swat)
  return fresh_process.run_module('fl_compression.benchmarks.client_step', request,
                                  timeout=timeout, env=ALLOCATOR_ENV,
                                  what=f'client step measurement of {model_config["name"]}')

if __name__ == '__main__':
  print(json.dumps(measure(**json.loads(sys.argv[1]))), flush=True)
