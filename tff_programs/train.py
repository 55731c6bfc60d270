"""Federated training program: `--algorithm` on `--task`, on a local or multi-worker backend.

  bazel run //tff_programs:train -- --root_output_dir=runs/demo --total_rounds=10

Writes under --root_output_dir: program_state/ (resumable), metrics.csv,
evaluation_metrics.csv, tensorboard/, final_model/ (config.json + weights.npz), summary.json;
speech tasks also utterance_errors/round_<r>.json (the word errors of every evaluated
utterance, per split, for paired comparisons with `fl_compression.evaluation.bootstrap`).
Run again with the same --root_output_dir to resume after the last saved round.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import asyncio
import dataclasses
import json
import shutil
import subprocess

from absl import app
from absl import flags
import numpy as np
import tensorflow_federated as tff

from fl_compression import variants  # pylint: disable=unused-import
from fl_compression import tasks
from fl_compression.data import corpus
from fl_compression.evaluation import bootstrap
from fl_compression.evaluation import error_rates
from fl_compression.importance import layers as importance_layers
from fl_compression.importance import signatures
from fl_compression.importance import targets as importance_targets
from fl_compression.learning import algorithms
from fl_compression.learning import optimizers
from fl_compression.models import asr
from fl_compression.models import checkpoint
from fl_compression.models import registry
from fl_compression.compression import process as compression_process
from fl_compression.pruning import plan as plan_lib
from fl_compression.zerofl import process as zerofl_process
from tff_programs import backends
from tff_programs import flag_utils
from tff_programs import program_main
from tff_programs import program_logic
from tff_programs import release

_TASK = flags.DEFINE_string('task', 'synthetic_mlp', f'Task: {", ".join(sorted(tasks.TASKS))}.')
_MODEL = flags.DEFINE_string(
    'model', '', 'Speech tasks: a named model configuration in place of the task\'s own '
    f'(tiny, tiny_transducer), one of: {", ".join(asr.NAMED_CONFIGS)}; empty: the task\'s.')
_ALGORITHM = flags.DEFINE_string(
    'algorithm', 'fedavg', f'Learning process: {", ".join(algorithms.names())}.')
_BACKEND = flags.DEFINE_string(
    'backend', 'local', 'local: TFF C++ runtime in a worker process started here; workers: '
    'TFF worker services at --workers, each round\'s clients split across them.')
_WORKERS = flags.DEFINE_string('workers', '', 'host:port[,host:port...] for --backend=workers.')
_WORKER_CONNECT_TIMEOUT = flags.DEFINE_float(
    'worker_connect_timeout', 30.0, 'Seconds to wait for each worker to answer.')
_ROOT_OUTPUT_DIR = flags.DEFINE_string(
    'root_output_dir', 'runs/train', 'Output directory; an existing run there is resumed.')
_TOTAL_ROUNDS = flags.DEFINE_integer('total_rounds', 10, 'Federated rounds to train.')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 5, 'Clients sampled each round.')
_EVALUATION_PERIOD = flags.DEFINE_integer(
    'evaluation_period', 5, 'Evaluate on held-out clients every this many rounds (and at the end).')
_EVALUATE_INITIAL = flags.DEFINE_bool(
    'evaluate_initial', True, 'Also evaluate the starting model before round 1 (skip it when '
    'another run already evaluated the same starting model on the same splits).')
_EVALUATION_SPLITS = flags.DEFINE_list(
    'evaluation_splits', ['dev', 'test'], 'Speech tasks: the splits every evaluation transcribes '
    '(the domain\'s dev and test splits, e.g. dev-clean and test-clean): dev, test or both.')
_FEDERATED_EVALUATION = flags.DEFINE_bool(
    'federated_evaluation', True, 'Also run the TFF evaluation process on the held-out clients '
    '(its loss and metrics under eval/); speech WER comes from the transcription either way.')
_CLIENT_OPTIMIZER = flags.DEFINE_enum('client_optimizer', 'sgd', optimizers.OPTIMIZERS,
                                      'Client optimizer.')
_CLIENT_LEARNING_RATE = flags.DEFINE_float('client_learning_rate', 0.1, 'Client learning rate.')
_SERVER_OPTIMIZER = flags.DEFINE_enum('server_optimizer', 'sgd', optimizers.OPTIMIZERS,
                                      'Server optimizer.')
_SERVER_LEARNING_RATE = flags.DEFINE_float('server_learning_rate', 1.0, 'Server learning rate.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Client batch size.')
_LOCAL_EPOCHS = flags.DEFINE_integer('local_epochs', 1, 'Passes over local data per round.')
_NUM_TRAIN_CLIENTS = flags.DEFINE_integer(
    'num_train_clients', 20, 'Training clients (generated tasks only).')
_NUM_EVAL_CLIENTS = flags.DEFINE_integer(
    'num_eval_clients', 4, 'Held-out evaluation clients (generated tasks only).')
_EXAMPLES_PER_CLIENT = flags.DEFINE_integer(
    'examples_per_client', 64, 'Examples per client (generated tasks only).')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', 'data/embedded_corpus',
    'Speech tasks: LibriSpeech-layout directory (train-clean-100/, dev-clean/, test-clean/); '
    'the embedded corpus is generated there if it does not exist.')
_DOMAIN = flags.DEFINE_enum(
    'domain', corpus.MAIN, list(corpus.DOMAINS),
    'Speech tasks: the corpus domain to train and evaluate on: main (train-clean-100, '
    'dev-clean, test-clean) or the held-out short-form domain (train-short, dev-short, '
    'test-short; added to an embedded corpus that lacks it).')
_PARTITION = flags.DEFINE_enum('partition', 'speaker', ['speaker', 'iid'],
                               'Speech tasks: one client per speaker, or an IID partition.')
_STRICT_DATA = flags.DEFINE_bool(
    'strict_data', False, 'Speech tasks: fail on the first bad utterance instead of skipping it.')
_INITIAL_MODEL_DIR = flags.DEFINE_string(
    'initial_model_dir', None,
    'Start a new run from this saved model (config.json + weights.npz), e.g. a pretrained one; '
    'its model config must be the task\'s.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed for data generation, initial model and sampling.')
# Federated pruning (--algorithm=fp) and dropout (fd); see fl_compression/pruning/process.py.
_FP_SPARSITY = flags.DEFINE_float('fp_sparsity', 0.3, 'fp, fd: target sparsity in [0, 1).')
_FP_PATTERN = flags.DEFINE_string('fp_pattern', 'column',
                                  'fp, fd: row, column, half_row or half_column.')
_FP_IMPORTANCE = flags.DEFINE_string(
    'fp_importance', 'magnitude', 'fp: magnitude, gradient (momentum of the gradient '
    'magnitude; the first round is dense), weight_gradient or random.')
_FP_NORM = flags.DEFINE_string('fp_norm', 'l2', 'fp: l1 or l2 norm of a unit\'s scores.')
_FP_MOMENTUM = flags.DEFINE_float('fp_momentum', 0.9, 'fp: momentum of the gradient magnitude.')
_FP_SCHEDULE = flags.DEFINE_string('fp_schedule', 'constant',
                                   'fp: constant, or step (sparsity rises in steps).')
_FP_RAMP_STEPS = flags.DEFINE_integer('fp_ramp_steps', 4, 'fp: steps of the step schedule.')
_FP_REFINE_START = flags.DEFINE_integer(
    'fp_refine_start', 0, 'fp: first round of mask refinement (0: a third of the rounds in).')
_FP_FINETUNE_START = flags.DEFINE_integer(
    'fp_finetune_start', 0, 'fp: first round of fine-tuning (0: two thirds of the rounds in).')
_FP_ADAPTIVE = flags.DEFINE_bool('fp_adaptive', False,
                                 'fp: per-layer sparsity from the layers\' weight magnitudes.')
_FP_MAX_LAYER_SPARSITY = flags.DEFINE_float('fp_max_layer_sparsity', 0.9,
                                            'fp: cap of a layer\'s adaptive sparsity.')
flags.DEFINE_string('fp_compress', 'none', 'fp: also compress the reduced model the clients '
                    'hold and exchange: none, omc (--omc_* flags) or fedaqt (--aqt_* flags).')
flags.DEFINE_string('fp_allocation', '', 'fp: per-layer sparsity: uniform, adaptive (from the '
                    'layers\' weight magnitudes; the same as --fp_adaptive) or importance (from '
                    '--fp_ranking: ambient blocks pruned more); empty: --fp_adaptive decides.')
flags.DEFINE_string('fp_ranking', '', 'fp: ranking.json of //tff_programs:layer_importance for '
                    'the trained model (for --fp_allocation=importance).')
flags.DEFINE_string('fp_prunable', 'paper', 'fp, fd: which dense kernels are prunable: paper '
                    '(the Conformer blocks\' feed-forward and attention kernels) or extended '
                    '(also the convolution modules\' pointwise kernels and the subsampling '
                    'projection).')
_FP_FLAGS = ('fp_sparsity', 'fp_pattern', 'fp_importance', 'fp_norm', 'fp_momentum',
             'fp_schedule', 'fp_ramp_steps', 'fp_refine_start', 'fp_finetune_start',
             'fp_adaptive', 'fp_max_layer_sparsity', 'fp_prunable', 'fp_allocation',
             'fp_ranking')
# Online model compression (--algorithm=omc) and FedAQT (fedaqt); see
# fl_compression/compression/process.py.
flags.DEFINE_string('omc_format', 'S1E4M6',
                    'omc: float format S1E<e>M<m> (1 sign, e exponent, m mantissa bits).')
flags.DEFINE_float('omc_fraction', 1.0, 'omc: fraction of the weight matrices each client holds '
                   'compressed (partial variable quantization), in [0, 1].')
flags.DEFINE_bool('omc_transform', True, 'omc: per-variable transform s * V + b.')
flags.DEFINE_string('omc_scope', 'weights', 'omc: weights (weight matrices only) or all.')
flags.DEFINE_string('omc_rounding', 'nearest', 'omc: how clients recompress after each local '
                    'step: nearest (even), or stochastic (keeps steps smaller than half a '
                    'quantum in expectation).')
flags.DEFINE_string('omc_allocation', 'uniform', 'omc: uniform (--omc_format everywhere) or '
                    'importance (from --omc_ranking: the most ambient third of the encoder blocks '
                    'one mantissa bit fewer, the most critical third one more).')
flags.DEFINE_string('omc_ranking', '', 'omc: ranking.json of //tff_programs:layer_importance '
                    'for the trained model (for --omc_allocation=importance).')
flags.DEFINE_integer('aqt_bits', 8, 'fedaqt: bits of the client model\'s integers, 4 to 8.')
flags.DEFINE_string('aqt_variant', 'fedavg', 'fedaqt: fedavg (local steps, weights requantized '
                    'after each) or fedsgd (the client returns its gradient).')
flags.DEFINE_string('aqt_rounding', 'nearest', 'fedaqt: how clients requantize after each '
                    'local step: nearest, or stochastic (keeps steps smaller than half a '
                    'quantum in expectation).')
flags.DEFINE_bool('aqt_activations', True, 'fedaqt: also quantize the inputs of the Conformer\'s '
                  'dense layers (per tensor, aqt_bits).')
# Flags of the compression that --fp_compress stacks on pruning (and of the algorithm alone).
_COMPRESSION_FLAGS = {
    'omc': ('omc_format', 'omc_fraction', 'omc_transform', 'omc_scope', 'omc_rounding'),
    'fedaqt': ('aqt_bits', 'aqt_variant', 'aqt_activations', 'aqt_rounding'),
}
flags.DEFINE_float('fd_rate', 0.5, 'fd: fraction of the units of each targeted layer a client '
                   'does not get, in (0, 1).')
flags.DEFINE_string('fd_target', 'flat', 'fd: which encoder blocks lose units: flat (all), '
                    'ambient:N or critical:N (the N most ambient or critical blocks of '
                    '--fd_ranking), or blocks:i,j,...')
flags.DEFINE_string('fd_ranking', '', 'fd: ranking.json of //tff_programs:layer_importance for '
                    'the trained model (for --fd_target=ambient:N or critical:N).')
# ZeroFL (--algorithm=zerofl); see fl_compression/zerofl/process.py.
flags.DEFINE_float('zerofl_sparsity', 0.9, 'zerofl: fraction of each SWAT matrix that is zero '
                   'in the clients\' computation (top-k by magnitude kept), in [0, 1).')
flags.DEFINE_float('zerofl_mask_ratio', 0.2, 'zerofl: clients upload the top 1 - sparsity + '
                   'mask_ratio of each SWAT matrix\'s entries (by trained magnitude).')
flags.DEFINE_float('zerofl_activation_sparsity', 0.0, 'zerofl: fraction of a SWAT layer\'s '
                   'input activations zeroed (smallest magnitudes) for its kernel gradient.')
flags.DEFINE_string('zerofl_aggregation', 'mean_of_senders', 'zerofl: mean_of_senders (each '
                    'entry averaged over the clients that sent it) or zero_fill (unsent '
                    'entries count as no change).')
flags.DEFINE_string('zerofl_upload', 'sparse', 'zerofl: sparse (top-k entries) or whole (SWAT '
                    'training with the whole update uploaded).')
flags.DEFINE_string('zerofl_compress', 'none', 'zerofl: none, or omc (the uploaded values in '
                    '--omc_format).')
flags.DEFINE_integer('zerofl_ramp_rounds', 0, 'zerofl: rounds over which the sparsity rises '
                     'to --zerofl_sparsity in --zerofl_ramp_steps equal steps (0: from round 1).')
flags.DEFINE_integer('zerofl_ramp_steps', 4, 'zerofl: steps of that ramp (a process each).')
_ZEROFL_FLAGS = ('zerofl_sparsity', 'zerofl_mask_ratio', 'zerofl_activation_sparsity',
                 'zerofl_aggregation', 'zerofl_upload', 'zerofl_compress', 'zerofl_ramp_rounds',
                 'zerofl_ramp_steps')
_FD_FLAGS = ('fp_pattern', 'fp_norm', 'fp_prunable', 'fd_rate', 'fd_target', 'fd_ranking')
_ALGORITHM_FLAGS = {
    'fp': _FP_FLAGS + ('fp_compress',) + sum(_COMPRESSION_FLAGS.values(), ()), 'fd': _FD_FLAGS,
    **_COMPRESSION_FLAGS,
    # Per-block formats from a ranking: OMC alone (not stacked on pruning's reduced model).
    'omc': _COMPRESSION_FLAGS['omc'] + ('omc_allocation', 'omc_ranking'),
    'zerofl': _ZEROFL_FLAGS + ('omc_format', 'omc_transform'),
}
_RUN_DEFINING_ALGORITHM_FLAGS = tuple(sorted({f for group in _ALGORITHM_FLAGS.values()
                                             for f in group}))
_TRAINABLE = flags.DEFINE_string(
    'trainable', 'all', 'Speech tasks: which encoder blocks the clients train and upload (the '
    'rest of the model frozen): all, critical:N or ambient:N (of --ranking), or blocks:i,j,...')
_RANKING = flags.DEFINE_string('ranking', '', 'ranking.json of //tff_programs:layer_importance '
                               'for the trained model (for --trainable=critical:N or '
                               'ambient:N).')
_KEEP_STATES = flags.DEFINE_integer('keep_program_states', 3, 'Saved program states to keep.')


def _validated_flags() -> None:
  for name in ('total_rounds', 'clients_per_round', 'evaluation_period', 'batch_size',
               'local_epochs', 'num_train_clients', 'num_eval_clients', 'examples_per_client',
               'keep_program_states'):
    flag_utils.require_positive(name, flags.FLAGS[name].value)
  for name in ('client_learning_rate', 'server_learning_rate', 'worker_connect_timeout'):
    flag_utils.require_positive(name, flags.FLAGS[name].value)
  if _TASK.value not in tasks.TASKS:
    raise flag_utils.FlagError(
        f'--task={_TASK.value} is unknown; known: {", ".join(sorted(tasks.TASKS))}')
  if _MODEL.value and not _TASK.value.startswith('speech_'):
    raise flag_utils.FlagError(f'--model={_MODEL.value}: --task={_TASK.value} has one model; '
                               '--model applies to the speech tasks')
  if _MODEL.value and _MODEL.value not in asr.NAMED_CONFIGS:
    raise flag_utils.FlagError(f'--model={_MODEL.value} is unknown; known: '
                               f'{", ".join(asr.NAMED_CONFIGS)}')
  try:
    algorithms.get(_ALGORITHM.value)
  except ValueError:
    raise flag_utils.FlagError(f'--algorithm={_ALGORITHM.value} is unknown; known: '
                               f'{", ".join(algorithms.names())}') from None
  _check_algorithm_flags_apply()
  unknown = [s for s in _EVALUATION_SPLITS.value if s not in ('dev', 'test')]
  if unknown or not _EVALUATION_SPLITS.value:
    raise flag_utils.FlagError(f'--evaluation_splits={",".join(_EVALUATION_SPLITS.value)}: '
                               'give dev, test or dev,test')
  if _BACKEND.value not in backends.BACKENDS:
    raise flag_utils.FlagError(f'--backend={_BACKEND.value} is unknown; known: '
                               f'{", ".join(backends.BACKENDS)}')
  if _BACKEND.value == 'workers':
    try:
      backends.parse_worker_addresses(_WORKERS.value)
    except ValueError as e:
      raise flag_utils.FlagError(str(e)) from None


def _transcription_splits() -> list[str]:
  """The domain's split names of --evaluation_splits, in dev, test order."""
  spec = corpus.domain(_DOMAIN.value)
  return [name for role, name in (('dev', spec.dev_split), ('test', spec.test_split))
          if role in _EVALUATION_SPLITS.value]


def _check_algorithm_flags_apply() -> None:
  """An algorithm flag given on the command line must be one the run uses: a silently ignored
  `--omc_format` would train something other than what was asked for."""
  if _ALGORITHM.value == 'fp':  # Only the flags of the compression it stacks.
    used = set(_FP_FLAGS + ('fp_compress',) + _COMPRESSION_FLAGS.get(
        flags.FLAGS['fp_compress'].value, ()))
  elif _ALGORITHM.value == 'zerofl':
    used = set(_ZEROFL_FLAGS + (('omc_format', 'omc_transform')
                                if flags.FLAGS['zerofl_compress'].value == 'omc' else ()))
  else:
    used = set(_ALGORITHM_FLAGS.get(_ALGORITHM.value, ()))
  stacked_on = {name: compress for compress, group in _COMPRESSION_FLAGS.items()
                for name in group}
  for name in sorted(set(_RUN_DEFINING_ALGORITHM_FLAGS) - used):
    if flags.FLAGS[name].present:
      hint = (f' without --fp_compress={stacked_on[name]}'
              if _ALGORITHM.value == 'fp' and name in stacked_on else
              ' without --zerofl_compress=omc' if _ALGORITHM.value == 'zerofl'
              and name in ('omc_format', 'omc_transform') else '')
      raise flag_utils.FlagError(
          f'--{name} does not apply to --algorithm={_ALGORITHM.value}{hint}')


def _format_table(rows: list[tuple[str, str]]) -> str:
  width = max(len(name) for name, _ in rows)
  lines = [f'{"metric":<{width}}  value', f'{"-" * width}  {"-" * 12}']
  lines += [f'{name:<{width}}  {value}' for name, value in rows]
  return '\n'.join(lines)


def _result_rows(result: program_logic.TrainingResult, final_model_dir: str):
  train = release.flatten_metrics(result.train_metrics)
  evaluation = release.flatten_metrics(result.eval_metrics)
  rows = [('rounds', str(result.rounds))]
  if result.resumed_from_round:
    rows.append(('resumed after round', str(result.resumed_from_round)))
  for label, key in (('train loss (last round)', 'client_work/train/loss'),
                     ('train accuracy (last round)', 'client_work/train/accuracy'),
                     ('eval loss (held-out clients)', 'eval/loss'),
                     ('eval accuracy (held-out clients)', 'eval/accuracy')):
    source = evaluation if key.startswith('eval/') else train
    if key in source:
      rows.append((label, f'{float(source[key]):.4f}'))
  for label, key in (('bytes down per client per round', 'communication/client_bytes_down'),
                     ('bytes up per client per round', 'communication/client_bytes_up')):
    if key in train:
      rows.append((label, f'{int(train[key]):,}'))
  if result.mean_round_seconds is not None:
    rows.append(('mean round time (s)', f'{result.mean_round_seconds:.3f}'))
  rows.append(('final model', final_model_dir))
  return rows


def _error_rate_table(result: program_logic.TrainingResult) -> str:
  """Per split: utterances, words, and WER/CER of the initial (if known) and final model, with
  the relative WER change and its paired bootstrap 95% interval over utterances."""
  final = (result.eval_metrics or {}).get('transcription')
  if not final:
    return ''
  initial = (result.initial_eval_metrics or {}).get('transcription') or {}
  header = ['split', 'utterances', 'words']
  if initial:
    header += ['initial WER', 'final WER', 'WER change [95% CI]', 'initial CER', 'final CER']
  else:
    header += ['WER', 'CER']
  rows = [header]
  for split, rates in final.items():
    row = [split, str(int(rates['num_utterances'])), str(int(rates['num_reference_words']))]
    for kind in ('wer', 'cer'):
      if initial:
        row.append(f'{100 * float(initial[split][kind]):.2f}%')
      row.append(f'{100 * float(rates[kind]):.2f}%')
      if initial and kind == 'wer':
        row.append(_wer_change(result, split))
    rows.append(row)
  widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
  return '\n'.join('  '.join(c.ljust(w) if i == 0 else c.rjust(w)
                              for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def _wer_change(result: program_logic.TrainingResult, split: str) -> str:
  """Relative WER change from the initial to the final model, with its paired interval."""
  before = (result.initial_utterance_errors or {}).get(split)
  after = (result.utterance_errors or {}).get(split)
  if not before or not after:
    return 'n/a'
  return bootstrap.paired_bootstrap(
      error_rates.UtteranceErrors.from_dict(before),
      error_rates.UtteranceErrors.from_dict(after)).describe_relative()


def _output_managers(root: str, task: tasks.Task, metadata: dict,
                     initial_weights=None) -> dict:
  """The program state manager and release managers that write under `root`."""
  progress = release.ProgressReleaseManager(_TOTAL_ROUNDS.value, {
      'loss': 'client_work/train/loss', 'accuracy': 'client_work/train/accuracy',
      'round s': 'round_time_seconds'})
  return dict(
      program_state_manager=tff.program.FileProgramStateManager(
          os.path.join(root, 'program_state'), keep_total=_KEEP_STATES.value, keep_first=False),
      train_metrics_manager=tff.program.GroupingReleaseManager([
          progress,
          tff.program.LoggingReleaseManager(),
          tff.program.CSVFileReleaseManager(os.path.join(root, 'metrics.csv')),
          tff.program.TensorBoardReleaseManager(os.path.join(root, 'tensorboard', 'train')),
      ]),
      evaluation_metrics_manager=tff.program.GroupingReleaseManager([
          release.EvaluationLineReleaseManager(),
          tff.program.LoggingReleaseManager(),
          tff.program.CSVFileReleaseManager(os.path.join(root, 'evaluation_metrics.csv')),
          tff.program.TensorBoardReleaseManager(os.path.join(root, 'tensorboard', 'eval')),
      ]),
      model_output_manager=release.ModelDirReleaseManager(
          os.path.join(root, 'final_model'), task.model_config, metadata, initial_weights),
  )


# Flags that must stay the same when a run is resumed (total_rounds may grow).
_RUN_DEFINING_FLAGS = (
    'task', 'model', 'algorithm', 'clients_per_round', 'client_optimizer', 'client_learning_rate',
    'server_optimizer', 'server_learning_rate', 'batch_size', 'local_epochs',
    'num_train_clients', 'num_eval_clients', 'examples_per_client', 'seed', 'partition',
    'domain', 'initial_model_dir', 'trainable', 'ranking') + _RUN_DEFINING_ALGORITHM_FLAGS
_RUN_CONFIG = 'run_config.json'


def _check_run_config(root: str) -> dict:
  """Refuses to resume a run in `root` with different settings or past its last round."""
  config = {name: flags.FLAGS[name].value for name in _RUN_DEFINING_FLAGS}
  path = os.path.join(root, _RUN_CONFIG)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    changed = [f'--{name}={config[name]} (the run has {saved[name]})'
               for name in _RUN_DEFINING_FLAGS if name in saved and saved[name] != config[name]]
    if changed:
      raise flag_utils.FlagError(
          f'--root_output_dir={root} holds a run with other settings: {"; ".join(changed)}; '
          'use another --root_output_dir')
  versions = asyncio.run(tff.program.FileProgramStateManager(
      os.path.join(root, 'program_state')).get_versions()) if os.path.isdir(
          os.path.join(root, 'program_state')) else None
  if versions and max(versions) > _TOTAL_ROUNDS.value:
    raise flag_utils.FlagError(
        f'--total_rounds={_TOTAL_ROUNDS.value} is below round {max(versions)} that the run in '
        f'{root} has already reached')
  return config


def _initial_model_weights(task: tasks.Task):
  """Weights of --initial_model_dir, checked against the task's model config (seed aside)."""
  if not _INITIAL_MODEL_DIR.value:
    return None
  model_dir = flag_utils.resolve_path(_INITIAL_MODEL_DIR.value)
  try:
    config = checkpoint.load_config(model_dir)
    weights = checkpoint.load_weights(model_dir)
  except (OSError, ValueError) as e:
    raise flag_utils.FlagError(f'--initial_model_dir={_INITIAL_MODEL_DIR.value}: {e}') from None
  ignore = ('seed', 'trainable_blocks')
  if (asr.canonical_config(config['model'], ignore)
      != asr.canonical_config(task.model_config, ignore)):
    raise flag_utils.FlagError(
        f'--initial_model_dir={_INITIAL_MODEL_DIR.value} holds a {config["model"].get("name")} '
        f'model whose config differs from --task={_TASK.value}\'s')
  if config['model'].get('trainable_blocks') != task.model_config.get('trainable_blocks'):
    weights = checkpoint.reorder_weights(weights, config['model'], task.model_config)
  return weights


def _trainable_blocks():
  """The encoder blocks --trainable names (None: the whole model trains)."""
  if _TRAINABLE.value == 'all':
    if _RANKING.value:
      raise flag_utils.FlagError('--ranking applies to --trainable=critical:N or ambient:N')
    return None
  if not _TASK.value.startswith('speech_'):
    raise flag_utils.FlagError(f'--trainable={_TRAINABLE.value}: --task={_TASK.value} has no '
                               'encoder blocks; --trainable applies to the speech tasks')
  config = asr.named_config(_MODEL.value or tasks.SPEECH_MODELS[_TASK.value])
  try:
    ranking = (importance_targets.load_ranking(flag_utils.resolve_path(_RANKING.value), config,
                                               'ranking') if _RANKING.value else None)
    blocks = importance_targets.target_blocks(_TRAINABLE.value, config['encoder']['num_blocks'],
                                              ranking, 'trainable', 'ranking')
  except importance_targets.TargetError as e:
    raise flag_utils.FlagError(str(e)) from None
  if blocks is None:
    raise flag_utils.FlagError('--trainable=flat: use --trainable=all')
  return sorted(blocks)


def _algorithm_options() -> dict:
  """The algorithm's flags without their prefix (`fp_sparsity` -> `sparsity`), paths resolved."""
  options = {name.split('_', 1)[1]: flags.FLAGS[name].value
             for name in _ALGORITHM_FLAGS.get(_ALGORITHM.value, ())}
  if options.get('ranking'):
    options['ranking'] = flag_utils.resolve_path(options['ranking'])
  return options


def _reference_initial_weights(task: tasks.Task, initial_weights):
  """The weights the run's model started training from, W(0) of the numerical signatures and
  the `initial_weights.npz` saved with the final model: `--initial_model_dir`'s own initial
  weights when it has them (a fine-tuned pretrained model continues its pretraining's
  reference), else the weights this run starts from. None for a model without encoder blocks."""
  if not importance_layers.num_blocks(sum(registry.variable_names(task.model_config), [])):
    return None
  if _INITIAL_MODEL_DIR.value:
    model_dir = flag_utils.resolve_path(_INITIAL_MODEL_DIR.value)
    try:
      saved = checkpoint.load_weights(model_dir, checkpoint.INITIAL_WEIGHTS_FILE)
    except OSError:
      return initial_weights
    return checkpoint.reorder_weights(saved, checkpoint.load_config(model_dir)['model'],
                                      task.model_config)
  model = registry.build_keras_model(task.model_config)
  return tff.learning.models.ModelWeights(
      [v.numpy() for v in model.trainable_variables],
      [v.numpy() for v in model.non_trainable_variables])


def _signature_fn(reference):
  """Numerical signatures of evaluated weights against `reference`, for a model of the
  reference's shapes (a pruned model's reduced shapes have none)."""
  def signature(weights, model_config):
    values = list(weights[0]) + list(weights[1])
    initial = list(reference.trainable) + list(reference.non_trainable)
    if [np.shape(v) for v in values] != [np.shape(v) for v in initial]:
      return None
    found = signatures.signatures(sum(registry.variable_names(model_config), []), values,
                                  initial)
    return {module: {f'block_{b:02d}': v for b, v in enumerate(per_block)}
            for module, per_block in found.items()}

  return signature


def _write_run_config(root: str, config: dict) -> None:
  path = os.path.join(root, _RUN_CONFIG)
  if not os.path.exists(path):
    with open(path, 'w') as f:
      json.dump(config, f, indent=2, sort_keys=True)


def run() -> None:
  _validated_flags()
  # Checked here, created only once every other check has passed: a run that fails on a flag
  # leaves no directory behind.
  root = flag_utils.check_writable_dir('root_output_dir',
                                       flag_utils.resolve_path(_ROOT_OUTPUT_DIR.value))
  workers = backends.parse_worker_addresses(_WORKERS.value) if _BACKEND.value == 'workers' else []
  options = tasks.TaskOptions(
      batch_size=_BATCH_SIZE.value, local_epochs=_LOCAL_EPOCHS.value,
      num_train_clients=_NUM_TRAIN_CLIENTS.value, num_eval_clients=_NUM_EVAL_CLIENTS.value,
      examples_per_client=_EXAMPLES_PER_CLIENT.value, seed=_SEED.value,
      data_dir=flag_utils.resolve_path(_DATA_DIR.value), partition=_PARTITION.value,
      strict_data=_STRICT_DATA.value, model=_MODEL.value, domain=_DOMAIN.value)
  options = dataclasses.replace(options, trainable_blocks=_trainable_blocks())
  run_config = _check_run_config(root)
  try:
    task = tasks.build_task(_TASK.value, options)
  except (ValueError, OSError, RuntimeError, subprocess.CalledProcessError) as e:
    # Bad data (librispeech.CorpusError names the file), an unusable corpus directory, or a
    # corpus generator that failed.
    raise flag_utils.FlagError(f'--data_dir={_DATA_DIR.value}: {e}') from None
  try:
    sampler = program_logic.ClientSampler(
        tuple(task.train_data.client_ids), _CLIENTS_PER_ROUND.value, _SEED.value)
  except ValueError as e:
    raise flag_utils.FlagError(f'--clients_per_round={_CLIENTS_PER_ROUND.value}: {e}') from None
  hparams = algorithms.Hyperparameters(
      client_optimizer=_CLIENT_OPTIMIZER.value, client_learning_rate=_CLIENT_LEARNING_RATE.value,
      server_optimizer=_SERVER_OPTIMIZER.value, server_learning_rate=_SERVER_LEARNING_RATE.value)
  initial_weights = _initial_model_weights(task)
  reference = (_reference_initial_weights(task, initial_weights)
               if _TASK.value.startswith('speech_') else None)
  context = algorithms.BuildContext(
      model_config=task.model_config, make_model_fn=task.make_model_fn, hparams=hparams,
      total_rounds=_TOTAL_ROUNDS.value, initial_weights=initial_weights,
      options=_algorithm_options())
  try:
    training = algorithms.get(_ALGORITHM.value).staged(context)
  except (plan_lib.PlanError, compression_process.ConfigError, zerofl_process.ConfigError,
          importance_targets.TargetError) as e:
    raise flag_utils.FlagError(str(e)) from None
  new_root = not os.path.exists(root)
  flag_utils.ensure_writable_dir('root_output_dir', root)
  _write_run_config(root, run_config)
  # The algorithm's own flags go with the final model: an export needs, e.g., FedAQT's bits.
  metadata = {'task': _TASK.value, 'algorithm': _ALGORITHM.value, 'seed': _SEED.value,
              'algorithm_flags': {name: flags.FLAGS[name].value
                                  for name in _ALGORITHM_FLAGS.get(_ALGORITHM.value, ())}}
  print(f'Training {_ALGORITHM.value} on {_TASK.value}: {_TOTAL_ROUNDS.value} rounds, '
        f'{_CLIENTS_PER_ROUND.value} clients/round, backend {_BACKEND.value}, output {root}',
        flush=True)
  # The backend is reached before any round runs, so a bad backend changes no saved run; a
  # directory this invocation made for a run that never saved a round is removed again.
  try:
    with backends.federated_context(_BACKEND.value, workers=workers, log_dir=root,
                                    default_num_clients=_CLIENTS_PER_ROUND.value,
                                    connect_timeout=_WORKER_CONNECT_TIMEOUT.value):
      result = asyncio.run(program_logic.train_model(
          training=training, task=task, sampler=sampler,
          total_rounds=_TOTAL_ROUNDS.value, evaluation_period=_EVALUATION_PERIOD.value,
          evaluate_initial=_EVALUATE_INITIAL.value, initial_model_weights=initial_weights,
          evaluate_clients=_FEDERATED_EVALUATION.value,
          transcription_splits=_transcription_splits(),
          utterance_errors_manager=release.JsonFileReleaseManager(
              os.path.join(root, 'utterance_errors')),
          signature_fn=_signature_fn(reference) if reference is not None else None,
          **_output_managers(root, task, metadata, reference)))
  except backends.BackendError:
    state_dir = os.path.join(root, 'program_state')
    if new_root and not (os.path.isdir(state_dir) and os.listdir(state_dir)):
      shutil.rmtree(root, ignore_errors=True)
    raise
  final_model_dir = os.path.join(root, 'final_model')
  rows = _result_rows(result, final_model_dir)
  with open(os.path.join(root, 'summary.json'), 'w') as f:
    json.dump({**metadata, **dataclasses.asdict(result), 'backend': _BACKEND.value}, f,
              indent=2, default=float)
  print('\nFinal result\n' + _format_table(rows), flush=True)
  wer_table = _error_rate_table(result)
  if wer_table:
    print('\nWord and character error rates (greedy decoding)\n' + wer_table, flush=True)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
