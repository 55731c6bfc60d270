"""Speech model benchmark: client-step throughput of the tiny models, cost of a large step.

  bazel run //tff_programs:benchmark_speech -- --output_dir=runs/benchmark_speech

1. Training throughput (utterances per second of a client SGD step) of `tiny` (CTC) and
   `tiny_transducer` on the same real batches of the corpus's training clients, measured side
   by side in this process after a warm-up pass, reported with their ratio.
2. One client step of a large configuration (`conformer_l` by default) on a short random batch,
   in a fresh process: step time and peak memory (see fl_compression.benchmarks.client_step).

Writes `speech_benchmark.md` and `speech_benchmark.json` to --output_dir.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import itertools
import json
import time

from absl import app
from absl import flags
import tensorflow as tf

from fl_compression import tasks
from fl_compression.benchmarks import client_step
from fl_compression.models import asr
from fl_compression.models import registry
from tff_programs import flag_utils
from tff_programs import program_main

_DATA_DIR = flags.DEFINE_string('data_dir', 'data/embedded_corpus',
                                'LibriSpeech-layout corpus (generated here if absent).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'runs/benchmark_speech', 'Report directory.')
_BATCHES = flags.DEFINE_integer('batches', 12, 'Timed training batches per tiny model.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Utterances per tiny-model batch.')
_LARGE_MODEL = flags.DEFINE_enum('large_model', 'conformer_l', list(asr.NAMED_CONFIGS),
                                 'Configuration of the large client step.')
_LARGE_BATCH = flags.DEFINE_integer('large_batch_size', 4, 'Utterances in the large step.')
_LARGE_SECONDS = flags.DEFINE_float('large_seconds', 4.0, 'Audio seconds per utterance.')
_LARGE_LABELS = flags.DEFINE_integer('large_label_length', 20, 'Tokens per utterance.')
_LARGE_STEPS = flags.DEFINE_integer('large_steps', 3, 'Timed large steps (median reported).')


def _throughput(task: tasks.Task, batches: list) -> dict:
  model = registry.build_keras_model(task.model_config)
  optimizer = tf.keras.optimizers.SGD(1e-3)

  @tf.function(reduce_retracing=True)
  def step(batch):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(asr.per_example_loss(model, batch, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  for batch in batches:  # Warm-up: traces every batch shape.
    step(batch)
  started = time.perf_counter()
  for batch in batches:
    step(batch).numpy()
  elapsed = time.perf_counter() - started
  utterances = sum(int(b['feature_length'].shape[0]) for b in batches)
  return {'model': task.model_config['name'], 'parameters': int(model.count_params()),
          'utterances': utterances, 'seconds': elapsed,
          'utterances_per_second': utterances / elapsed,
          'seconds_per_step': elapsed / len(batches)}


def run() -> None:
  for name in ('batches', 'batch_size', 'large_batch_size', 'large_label_length',
               'large_steps'):
    flag_utils.require_positive(name, flags.FLAGS[name].value)
  flag_utils.require_positive('large_seconds', _LARGE_SECONDS.value)
  output_dir = flag_utils.ensure_writable_dir('output_dir',
                                              flag_utils.resolve_path(_OUTPUT_DIR.value))
  options = tasks.TaskOptions(data_dir=flag_utils.resolve_path(_DATA_DIR.value),
                              batch_size=_BATCH_SIZE.value)
  results = {'throughput': {}}
  for task_name in ('speech_ctc', 'speech_transducer'):
    try:
      task = tasks.TASKS[task_name](options)
    except (ValueError, OSError, RuntimeError) as e:
      raise flag_utils.FlagError(f'--data_dir={_DATA_DIR.value}: {e}') from None
    batches = list(itertools.islice(
        (b for c in task.train_data.client_ids for b in task.train_dataset(c)), _BATCHES.value))
    row = _throughput(task, batches)
    results['throughput'][task_name] = row
    print(f'{task_name:<18} {row["parameters"]:>10,} params  '
          f'{row["utterances_per_second"]:6.1f} utterances/s  '
          f'{row["seconds_per_step"]:.3f} s/step of {_BATCH_SIZE.value}', flush=True)
  ctc, rnnt = (results['throughput'][k]['utterances_per_second']
               for k in ('speech_ctc', 'speech_transducer'))
  results['throughput']['transducer_over_ctc'] = rnnt / ctc

  config = asr.named_config(_LARGE_MODEL.value)
  large = client_step.measure_in_subprocess(
      config, batch_size=_LARGE_BATCH.value, seconds=_LARGE_SECONDS.value,
      label_length=_LARGE_LABELS.value, steps=_LARGE_STEPS.value)
  large['config'] = _LARGE_MODEL.value
  results['large_step'] = large
  mib = lambda b: b / 2**20  # noqa: E731
  print(f'{_LARGE_MODEL.value}: {large["parameters"]:,} params, step {large["step_seconds"]:.2f} s '
        f'(first {large["first_step_seconds"]:.1f} s), peak RSS {mib(large["peak_rss_bytes"]):.0f} '
        f'MiB, step working memory {mib(large["step_working_bytes"]):.0f} MiB', flush=True)

  lines = [
      '# Speech model benchmark', '',
      f'Client SGD steps on this machine ({os.cpu_count()} CPU cores), '
      f'`bazel run //tff_programs:benchmark_speech`.', '',
      '## Training throughput of the tiny models (same real batches, side by side)', '',
      '| model | parameters | utterances/s | s/step | relative |', '|---|---|---|---|---|']
  for task_name in ('speech_ctc', 'speech_transducer'):
    row = results['throughput'][task_name]
    lines.append(f'| {row["model"]} | {row["parameters"]:,} | {row["utterances_per_second"]:.1f} '
                 f'| {row["seconds_per_step"]:.3f} | '
                 f'{row["utterances_per_second"] / ctc:.2f}x |')
  lines += [
      '', f'{_BATCHES.value} batches of up to {_BATCH_SIZE.value} utterances, padded per length '
      'bucket; timed after a warm-up pass over the same batches.', '',
      f'## One client step of `{_LARGE_MODEL.value}` (fresh process)', '',
      '| parameters | parameter MiB | batch | step s (median) | first step s | '
      'RSS after build MiB | peak RSS MiB | step working MiB |', '|---|---|---|---|---|---|---|---|',
      f'| {large["parameters"]:,} | {mib(large["parameter_bytes"]):.0f} | '
      f'{large["batch_size"]} x {_LARGE_SECONDS.value:g} s, {large["label_length"]} tokens | '
      f'{large["step_seconds"]:.2f} | {large["first_step_seconds"]:.1f} | '
      f'{mib(large["rss_built_bytes"]):.0f} | {mib(large["peak_rss_bytes"]):.0f} | '
      f'{mib(large["step_working_bytes"]):.0f} |']
  with open(os.path.join(output_dir, 'speech_benchmark.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  with open(os.path.join(output_dir, 'speech_benchmark.json'), 'w') as f:
    json.dump(results, f, indent=2)
  print(f'report: {os.path.join(output_dir, "speech_benchmark.md")}', flush=True)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
