"""Centralized (server-side) pretraining of a dense speech model on the main domain's
train-clean-100, until its dev WER plateaus.

  bazel run //tff_programs:pretrain -- --root_output_dir=runs/pretrain --max_minutes=120

`--model=tiny` is the Conformer-CTC the demo ships, `--model=wide` the same at twice the width;
`--model=tiny_transducer` the tiny encoder with a transducer head.

This is the labelled, non-federated mode: the server trains on the pooled training split (the
same utterances the federated clients hold), as the papers start their methods from one
pretrained dense model; the held-out short-form domain is never read. Training stops at the
first of: the dev plateau (`plateau_reached`: over the last `--plateau_fraction` of the steps,
the best dev WER improved on the best before them by less than `--plateau_min_improvement`,
relative; no plateau is declared before `--plateau_from_step`), `--max_steps`, `--max_minutes`
(wall time summed over resumed invocations). `--plateau_from_step` is for a model that sits on
CTC's early plateau (blank outputs, dev WER near 100%) for thousands of steps before it learns,
as the 16-block `deep` model does; like the budgets, it says when to stop, not what to train,
so a resumed run may change it.
The best model by dev WER is written to <root_output_dir>/final_model with its initial weights;
`curve.csv` holds step, loss, dev WER/CER and cumulative elapsed time, `signatures.csv`
the numerical signature of every module and encoder block at each evaluation, and
`movement.csv` how far each block's kernels moved relative to their initial norm
(`fl_compression/importance/signatures.py`). Run the same command again to resume from the
last checkpoint.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import csv
import glob
import json
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression import tasks
from fl_compression.data import corpus
from fl_compression.data import features
from fl_compression.data import speech_data
from fl_compression.evaluation import error_rates
from fl_compression.evaluation import plateau as plateau_lib
from fl_compression.evaluation import speech_eval
from fl_compression.importance import layers as importance_layers
from fl_compression.importance import signatures
from fl_compression.models import asr
from fl_compression.models import checkpoint
from fl_compression.models import registry
from tff_programs import flag_utils
from tff_programs import program_main

_DATA_DIR = flags.DEFINE_string('data_dir', 'data/embedded_corpus',
                                'LibriSpeech-layout corpus (generated here if absent).')
_ROOT_OUTPUT_DIR = flags.DEFINE_string('root_output_dir', 'runs/pretrain', 'Output directory.')
_MAX_MINUTES = flags.DEFINE_float(
    'max_minutes', 120.0, 'Wall-time budget for training, summed over resumed invocations.')
_MAX_STEPS = flags.DEFINE_integer('max_steps', 100000, 'Step budget for training.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Utterances per step.')
_LEARNING_RATE = flags.DEFINE_float('learning_rate', 2e-3, 'Peak Adam learning rate.')
_WARMUP_STEPS = flags.DEFINE_integer('warmup_steps', 300, 'Linear warm-up steps.')
_EVAL_EVERY = flags.DEFINE_integer('eval_every_steps', 250, 'Dev evaluation period.')
_MODEL = flags.DEFINE_enum('model', 'tiny', ['tiny', 'wide', 'deep', 'deep_narrow', 'deep_preln',
                                             'tiny_transducer', 'micro'],
                           'Model configuration (fl_compression.models.asr.named_config).')
_PLATEAU_FRACTION = flags.DEFINE_float(
    'plateau_fraction', 0.25, 'Plateau rule: the trailing fraction of the steps, in (0, 1).')
_PLATEAU_MIN_IMPROVEMENT = flags.DEFINE_float(
    'plateau_min_improvement', 0.01, 'Plateau rule: relative dev WER improvement that the '
    'trailing steps must bring to go on.')
_PLATEAU_MIN_EVALUATIONS = flags.DEFINE_integer(
    'plateau_min_evaluations', 4, 'Plateau rule: dev evaluations the trailing steps must hold '
    'before a plateau can be declared.')
_PLATEAU_FROM_STEP = flags.DEFINE_integer(
    'plateau_from_step', 0, 'Plateau rule: no plateau is declared before this step (a resumed '
    'run may change it).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the model, data order and augmentation.')


def _train_dataset(cache_dir: str, batch_size: int, seed: int) -> tf.data.Dataset:
  files = sorted(glob.glob(os.path.join(cache_dir, '*.tfrecord')))
  bins = features.FeatureConfig().num_mel_bins
  augment = features.SpecAugmentConfig()
  dataset = tf.data.TFRecordDataset(files).map(lambda r: speech_data.parse_example(r, bins))
  dataset = dataset.cache().shuffle(4096, seed=seed).repeat().enumerate()
  dataset = dataset.map(lambda i, e: dict(e, features=features.spec_augment(
      e['features'], tf.stack([tf.constant(seed, tf.int64), i]), augment)),
                        num_parallel_calls=tf.data.AUTOTUNE)
  return speech_data.padded_batches(dataset, batch_size, bins,
                                    bucket_boundaries=(300, 400, 500, 650)).prefetch(2)


class WarmupInverseSqrt(tf.keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up to `peak`, then decay with the inverse square root of the step."""

  def __init__(self, peak: float, warmup_steps: int):
    self.peak, self.warmup_steps = peak, warmup_steps

  def __call__(self, step):
    ratio = tf.cast(step + 1, tf.float32) / float(self.warmup_steps)
    return self.peak * tf.minimum(ratio, tf.math.rsqrt(ratio))

  def get_config(self):
    return {'peak': self.peak, 'warmup_steps': self.warmup_steps}


def _read_curve(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, newline='') as f:
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


# Written at each evaluation next to `curve.csv` (by `_append_signatures`).
_MEASURE_FILES = ('signatures.csv', 'movement.csv')


def _append_row(path: str, row: dict) -> None:
  new_file = not os.path.exists(path)
  with open(path, 'a', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(row))
    if new_file:
      writer.writeheader()
    writer.writerow(row)


def _append_signatures(root: str, step: int, model: tf.keras.Model,
                       initial: tff.learning.models.ModelWeights) -> str:
  """Rows at `step` of `signatures.csv` (per module and encoder block, how far the kernels
  moved from their initial values relative to the block that moved most) and `movement.csv`
  (per block, how far its kernels moved relative to their initial norm); returns the movement's
  range for the log ('' for a model without encoder blocks)."""
  variables = model.trainable_variables + model.non_trainable_variables
  names = [v.name for v in variables]
  if not importance_layers.num_blocks(names):
    return ''
  values = [v.numpy() for v in variables]
  start = list(initial.trainable) + list(initial.non_trainable)
  _append_row(os.path.join(root, 'signatures.csv'), {
      'step': step, **signatures.flat(signatures.signatures(names, values, start))})
  moved = signatures.movement(names, values, start)
  _append_row(os.path.join(root, 'movement.csv'), {
      'step': step, **{f'movement/block_{b:02d}': m for b, m in enumerate(moved)}})
  return f' | blocks moved {100 * min(moved):.0f}-{100 * max(moved):.0f}%'


# Flags a resumed run must keep (the budget flags may change).
_RUN_DEFINING_FLAGS = ('model', 'seed', 'batch_size', 'learning_rate', 'warmup_steps',
                       'eval_every_steps', 'plateau_fraction', 'plateau_min_improvement',
                       'plateau_min_evaluations')


def _check_run_config(root: str) -> None:
  """Refuses to resume a run in `root` with other settings; records them for a new run."""
  config = {name: flags.FLAGS[name].value for name in _RUN_DEFINING_FLAGS}
  path = os.path.join(root, 'run_config.json')
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    changed = [f'--{k}={config[k]} (the run has {saved[k]})' for k in config
               if k in saved and saved[k] != config[k]]
    if changed:
      raise flag_utils.FlagError(f'--root_output_dir={root} holds a run with other settings: '
                                 f'{"; ".join(changed)}; use another --root_output_dir')
  elif not os.path.exists(os.path.join(root, 'checkpoints')):
    with open(path, 'w') as f:
      json.dump(config, f, indent=2, sort_keys=True)


def _drop_rows_after(path: str, step: int) -> None:
  """Removes the rows of CSV file `path` past `step` (its header kept as it is)."""
  if not os.path.exists(path):
    return
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    rows = list(reader)
    fieldnames = reader.fieldnames
  if not fieldnames or all(int(r['step']) <= step for r in rows):
    return
  with open(path + '.tmp', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(r for r in rows if int(r['step']) <= step)
  os.replace(path + '.tmp', path)


def _write_curve(path: str, rows: list[dict]) -> None:
  with open(path + '.tmp', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=['step', 'loss', 'dev_wer', 'dev_cer',
                                           'elapsed_seconds'])
    writer.writeheader()
    writer.writerows({**row, 'step': int(row['step'])} for row in rows)
  os.replace(path + '.tmp', path)


def run() -> None:
  for name in ('batch_size', 'max_steps', 'warmup_steps', 'eval_every_steps',
               'plateau_min_evaluations'):
    flag_utils.require_positive(name, flags.FLAGS[name].value)
  flag_utils.require_positive('max_minutes', _MAX_MINUTES.value)
  if _PLATEAU_FROM_STEP.value < 0:
    raise flag_utils.FlagError(f'--plateau_from_step must be 0 or more, got '
                               f'{_PLATEAU_FROM_STEP.value}')
  if not 0 < _PLATEAU_FRACTION.value < 1:
    raise flag_utils.FlagError(f'--plateau_fraction must be in (0, 1), got '
                               f'{_PLATEAU_FRACTION.value}')
  if not 0 <= _PLATEAU_MIN_IMPROVEMENT.value < 1:
    raise flag_utils.FlagError(f'--plateau_min_improvement must be in [0, 1), got '
                               f'{_PLATEAU_MIN_IMPROVEMENT.value}')
  root = flag_utils.ensure_writable_dir('root_output_dir',
                                        flag_utils.resolve_path(_ROOT_OUTPUT_DIR.value))
  _check_run_config(root)
  data_dir = flag_utils.resolve_path(_DATA_DIR.value)
  options = tasks.TaskOptions(data_dir=data_dir, seed=_SEED.value)
  tokenizer = features.CharTokenizer()
  try:
    reports = tasks.load_speech_splits(options, tokenizer)
  except (ValueError, OSError, RuntimeError) as e:
    raise flag_utils.FlagError(f'--data_dir={_DATA_DIR.value}: {e}') from None
  clients = speech_data.assign_clients(reports[corpus.TRAIN_SPLIT].utterances)
  cache = speech_data.build_feature_cache(clients, data_dir.rstrip(os.sep) + '.features',
                                          tokenizer, features.FeatureConfig())
  model_config = asr.named_config(_MODEL.value, tokenizer.vocab_size, seed=_SEED.value)
  model = registry.build_keras_model(model_config)
  # The exact starting weights, kept from the first invocation on (a resumed run restores the
  # trained ones over them).
  initial_path = os.path.join(root, checkpoint.INITIAL_WEIGHTS_FILE)
  if not os.path.exists(initial_path):
    checkpoint.save_weights(initial_path, _model_weights(model))
  initial_weights = checkpoint.read_weights(initial_path)
  optimizer = tf.keras.optimizers.Adam(
      learning_rate=WarmupInverseSqrt(_LEARNING_RATE.value, _WARMUP_STEPS.value), beta_2=0.98)
  step = tf.Variable(0, dtype=tf.int64)
  ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
  manager = tf.train.CheckpointManager(ckpt, os.path.join(root, 'checkpoints'), max_to_keep=2)
  if manager.latest_checkpoint:
    ckpt.restore(manager.latest_checkpoint).expect_partial()
    print(f'resumed from step {int(step.numpy())}', flush=True)

  @tf.function(reduce_retracing=True)
  def train_step(batch):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(asr.per_example_loss(model, batch, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    grads, _ = tf.clip_by_global_norm(grads, 5.0)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  dev = reports[corpus.DEV_SPLIT].utterances
  dev_data = speech_eval.utterance_dataset(dev, features.FeatureConfig(), 32).cache()
  curve_path = os.path.join(root, 'curve.csv')
  best_path = os.path.join(root, 'best.json')
  best = {'dev_wer': float('inf')}
  if os.path.exists(best_path):
    with open(best_path) as f:
      best = json.load(f)
  curve = _read_curve(curve_path)
  if curve and curve[-1]['step'] > int(step.numpy()):
    # Rows written after the last checkpoint: that training is redone.
    curve = [row for row in curve if row['step'] <= int(step.numpy())]
    _write_curve(curve_path, curve)
  # An evaluation's measures are written before its curve row: rows past the curve belong to
  # an evaluation that did not finish, and it is made again.
  for name in _MEASURE_FILES:
    _drop_rows_after(os.path.join(root, name), int(curve[-1]['step']) if curve else 0)
  dev_curve = [(int(row['step']), row['dev_wer']) for row in curve]
  plateau = lambda: plateau_lib.plateau_reached(  # noqa: E731
      dev_curve, _PLATEAU_FRACTION.value, _PLATEAU_MIN_IMPROVEMENT.value,
      _PLATEAU_MIN_EVALUATIONS.value, _PLATEAU_FROM_STEP.value)
  earlier_seconds = curve[-1]['elapsed_seconds'] if curve else 0.0
  started = time.monotonic()
  losses = []

  def evaluate(current: int, elapsed: float) -> bool:
    """Checkpoints, scores dev, records the curve row, signatures and the best model; True
    when the plateau rule says stop. The checkpoint comes first: a crash after it leaves a step
    without its row, which a resumed run evaluates first (see below)."""
    nonlocal best
    manager.save(checkpoint_number=current)
    hypotheses = speech_eval.transcribe(model, dev_data, tokenizer)
    rates = error_rates.error_rates([u.transcript for u in dev], hypotheses)
    recent = losses[-_EVAL_EVERY.value:]
    row = {'step': current, 'loss': float(np.mean(recent)) if recent else float('nan'),
           'dev_wer': rates.wer, 'dev_cer': rates.cer, 'elapsed_seconds': round(elapsed, 1)}
    moved = _append_signatures(root, current, model, initial_weights)
    _append_row(curve_path, row)
    dev_curve.append((current, rates.wer))
    print(f'step {current:>6} | loss {row["loss"]:.3f} | dev WER {100 * rates.wer:.2f}% '
          f'CER {100 * rates.cer:.2f}%{moved} | {elapsed / 60:.1f} min', flush=True)
    if rates.wer < best['dev_wer']:
      best = {'dev_wer': rates.wer, 'dev_cer': rates.cer, 'step': current}
      checkpoint.save_model(os.path.join(root, 'final_model'), model_config,
                            _model_weights(model), {
          'mode': 'centralized pretraining (server-side, train-clean-100)',
          'round': current, 'seed': _SEED.value, 'dev_wer': rates.wer},
                            initial_weights=initial_weights)
      with open(best_path, 'w') as f:
        json.dump(best, f)
    if plateau():
      print(f'dev WER plateaued: the best of the last {100 * _PLATEAU_FRACTION.value:g}% of '
            f'the steps is not {100 * _PLATEAU_MIN_IMPROVEMENT.value:g}% below the best '
            'before them', flush=True)
      return True
    return False

  if int(step.numpy()) and (not dev_curve or dev_curve[-1][0] < int(step.numpy())):
    # Checkpointed but not evaluated before the previous invocation stopped.
    if evaluate(int(step.numpy()), earlier_seconds):
      return
  print(f'centralized pretraining of {_MODEL.value} ({model_config["name"]}, '
        f'{model.count_params():,} parameters) on {sum(map(len, clients.values()))} '
        f'utterances; budget {_MAX_MINUTES.value} min, {_MAX_STEPS.value} steps, or the dev '
        f'plateau', flush=True)
  if plateau() or int(step.numpy()) >= _MAX_STEPS.value:
    print(f'already finished at step {int(step.numpy())}', flush=True)
    return
  for batch in _train_dataset(cache, _BATCH_SIZE.value, _SEED.value + int(step.numpy())):
    losses.append(float(train_step(batch)))
    step.assign_add(1)
    current = int(step.numpy())
    elapsed = earlier_seconds + time.monotonic() - started
    done = current >= _MAX_STEPS.value or elapsed > 60 * _MAX_MINUTES.value
    if current % _EVAL_EVERY.value == 0 or done:
      done = evaluate(current, elapsed) or done
    if done:
      break
  print(f'best dev WER {100 * best["dev_wer"]:.2f}% at step {best.get("step")}; model in '
        f'{os.path.join(root, "final_model")}', flush=True)


def _model_weights(model: tf.keras.Model) -> tff.learning.models.ModelWeights:
  return tff.learning.models.ModelWeights(
      trainable=[v.numpy() for v in model.trainable_variables],
      non_trainable=[v.numpy() for v in model.non_trainable_variables])


if __name__ == '__main__':
  app.run(program_main.make_main(run))
