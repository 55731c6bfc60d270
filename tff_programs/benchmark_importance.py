"""Uses of a layer-importance ranking, measured: targeted federated dropout on the held-out
domain, and importance-aware pruning and OMC allocation on the main domain.

  bazel run //tff_programs:benchmark_importance -- \\
      --initial_model_dir=$PWD/checkpoints/conformer_ctc_deep \\
      --ranking=$PWD/reports/layer_importance/deep/ranking.json \\
      --output_dir=$PWD/reports/layer_importance

`--experiments=targeted_fd`: fine-tunes the pretrained model federatedly on the held-out
short-form domain with no dropout, with 50% dropout of the N most ambient or N most critical
encoder blocks (`--block_counts`), and with flat dropout at the rate that drops about as many
parameters as the largest Amb-N; each run's best held-out-dev round is transcribed on the
held-out test split and on the main domain's (what fine-tuning forgets). It also fine-tunes
only the N most critical, and the N most ambient, blocks (`--trainable_counts`), with client
bytes up and client-step memory against training every block. Writes `targeted_fd.json` (one
object per dropout row), `trainable.json`, `targeted_fd.md`, `targeted_fd_results.json`.

`--experiments=allocation`: on the main domain, federated pruning at 30/50% with uniform,
magnitude-adaptive and importance allocation of per-block sparsity, and OMC at three formats
with uniform and importance allocation of mantissa bits, next to float32 FedAvg. Writes
`allocation.md` and `allocation_results.json`.

Every run: the same clients, seed and rounds (fl_compression/benchmarks/importance_experiments.py).
Results are written after every run; a killed benchmark started again skips what is done and
resumes an unfinished run from its last round.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import dataclasses
import hashlib
import json
import sys
import time

from absl import app
from absl import flags

from fl_compression import tasks
from fl_compression.benchmarks import importance_experiments as experiments
from fl_compression.benchmarks import method_experiments
from fl_compression.benchmarks import pruning_experiments as common
from fl_compression.data import corpus
from fl_compression.importance import targets as importance_targets
from fl_compression.learning import algorithms
from fl_compression.models import checkpoint
from tff_programs import experiment_runs
from tff_programs import flag_utils
from tff_programs import program_main

_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'reports/layer_importance', 'Report directory.')
_DATA_DIR = flags.DEFINE_string('data_dir', 'data/embedded_corpus',
                                'LibriSpeech-layout corpus with both domains (generated here '
                                'if absent).')
_INITIAL_MODEL_DIR = flags.DEFINE_string('initial_model_dir', 'checkpoints/conformer_ctc_deep',
                                         'The model pretrained on the main domain.')
_RANKING = flags.DEFINE_string('ranking', 'reports/layer_importance/deep/ranking.json',
                               'ranking.json of //tff_programs:layer_importance for that model.')
_BLOCK_COUNTS = flags.DEFINE_list('block_counts', [str(n) for n in experiments.BLOCK_COUNTS],
                                  'N of the Amb-N and Crit-N rows.')
_EXPERIMENTS = flags.DEFINE_list('experiments', ['targeted_fd', 'allocation'],
                                 'targeted_fd (held-out domain) and/or allocation (main domain).')
_TRAINABLE_COUNTS = flags.DEFINE_list('trainable_counts', ['8'],
                                      'targeted_fd: N of the rows that train only the N most '
                                      'critical (or ambient) blocks; empty: none.')
_STEP_SECONDS = flags.DEFINE_float('step_seconds', 6.0, 'Audio seconds per utterance of the '
                                   'client-step memory measurement of those rows.')
_ONLY = flags.DEFINE_list('only', [], 'Run only these run keys (e.g. none,fd/ambient:2/0.5); '
                          'empty: every row.')
_TOTAL_ROUNDS = flags.DEFINE_integer('total_rounds', 30, 'Rounds of every run.')
_EVALUATION_PERIOD = flags.DEFINE_integer('evaluation_period', 5,
                                          'Rounds between held-out dev transcriptions.')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 8, 'Speakers per round.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Client batch size.')
_CLIENT_LEARNING_RATE = flags.DEFINE_float('client_learning_rate', 2e-4, 'Client Adam rate.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of client sampling and augmentation.')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False,
                                 'Write the report from the stored results, running nothing.')


def _counts(flag, num_blocks: int, allow_empty: bool = False) -> list[int]:
  """`flag`'s block counts, each in [1, num_blocks - 1]; one-line errors name the flag."""
  text = ','.join(flag.value)
  try:
    counts = [int(n) for n in flag.value]
  except ValueError:
    raise flag_utils.FlagError(f'--{flag.name}={text}: expected integers') from None
  bad = [n for n in counts if not 1 <= n < num_blocks]
  if (not counts and not allow_empty) or bad:
    raise flag_utils.FlagError(f'--{flag.name}={text}: each must be in [1, {num_blocks - 1}] '
                               f'(the model has {num_blocks} blocks)')
  return sorted(set(counts))


def _hparams() -> algorithms.Hyperparameters:
  return algorithms.Hyperparameters(
      client_optimizer='adam', client_learning_rate=_CLIENT_LEARNING_RATE.value,
      server_optimizer='sgd', server_learning_rate=1.0)


def _dropout(model_config: dict, options: dict):
  """The federated dropout of `options` for `model_config`, unbuilt (for its plan)."""
  return algorithms.get('fd').staged(algorithms.BuildContext(
      model_config=model_config, make_model_fn=None, hparams=_hparams(), total_rounds=1,
      options=options))


def _flat_rate(model_config: dict, ranking_path: str, top: int) -> dict:
  """The flat rate whose dropped parameters are closest to Amb-`top`'s, with both fractions."""
  amb = _dropout(model_config, {'pattern': 'column', 'rate': experiments.RATE,
                                'target': f'ambient:{top}', 'ranking': ranking_path})
  flat = _dropout(model_config, {'pattern': 'column', 'rate': 0.5, 'target': 'flat'})
  target = amb.dropped_fraction()
  rate = experiments.match_flat_rate(target, lambda r: flat.dropped_fraction(sparsity=r))
  return {'rate': rate, 'ambient_dropped': target,
          'flat_dropped': flat.dropped_fraction(sparsity=rate)}


EXPERIMENTS = ('targeted_fd', 'allocation')


def _model() -> tuple[dict, str]:
  """The starting model's config and weights hash; one-line errors name the flag."""
  model_dir = flag_utils.resolve_path(_INITIAL_MODEL_DIR.value)
  try:
    model_config = checkpoint.load_config(model_dir)['model']
    with open(os.path.join(model_dir, checkpoint.WEIGHTS_FILE), 'rb') as f:
      weights_hash = hashlib.sha256(f.read()).hexdigest()[:16]
  except (OSError, ValueError, KeyError) as e:
    raise flag_utils.FlagError(f'--initial_model_dir={_INITIAL_MODEL_DIR.value}: {e}') from None
  if not model_config.get('encoder', {}).get('num_blocks', 0):
    raise flag_utils.FlagError(f'--initial_model_dir={_INITIAL_MODEL_DIR.value}: the '
                               f'{model_config.get("name")} model has no encoder blocks')
  return model_config, weights_hash


def _store(name: str, settings: dict) -> common.ResultStore:
  try:
    return common.ResultStore(os.path.join(_output_dir(), f'{name}_results.json'), settings)
  except ValueError as e:
    raise flag_utils.FlagError(f'--output_dir={_OUTPUT_DIR.value}: {e}') from None


_CREATED_OUTPUT_DIR = []


def _output_dir() -> str:
  """--output_dir, created (and checked writable) once, after every other flag check."""
  if not _CREATED_OUTPUT_DIR:
    _CREATED_OUTPUT_DIR.append(flag_utils.ensure_writable_dir(
        'output_dir', flag_utils.resolve_path(_OUTPUT_DIR.value)))
  return _CREATED_OUTPUT_DIR[0]


def _run_one(domain: str, also_test: tuple[str, ...]):
  def run_one(spec: common.RunSpec, state_dir: str):
    options = spec.option_dict
    result = experiment_runs.run_in_subprocess(experiment_runs.RunJob(
        key=spec.key, algorithm=spec.algorithm,
        options=method_experiments.algorithm_options(spec),
        hparams=dataclasses.asdict(_hparams()), initial_model_dir=_INITIAL_MODEL_DIR.value,
        data_dir=_DATA_DIR.value, batch_size=_BATCH_SIZE.value, seed=_SEED.value,
        sampler_seed=_SEED.value, clients_per_round=_CLIENTS_PER_ROUND.value,
        total_rounds=_TOTAL_ROUNDS.value, state_dir=state_dir, log_dir=_output_dir(),
        evaluation_period=_EVALUATION_PERIOD.value,
        select_from_round=options.get('select_from_round', 1), domain=domain,
        also_test=also_test, trainable_blocks=options.get('trainable_blocks')),
        timeout=12 * 3600)
    if options.get('trainable_blocks') is not None:
      result['trainable_blocks'] = list(options['trainable_blocks'])
    return result
  return run_one


def _report_settings(settings: dict, planned, store) -> dict:
  """The report's settings; `missing_runs`: the planned runs without a result (whatever
  --only chose this time)."""
  return dict(settings, machine=f'{os.cpu_count()} CPU cores',
              command=' '.join(['bazel run //tff_programs:benchmark_importance --'] + [
                  a for a in sys.argv[1:] if not a.startswith('--report_only')]),
              missing_runs=[s.key for s in planned
                            if not experiment_runs.is_current(s, store.get(s.key))])


def _write(name: str, text: str) -> None:
  path = os.path.join(_output_dir(), name)
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


def _trainable_steps(model_config: dict, specs) -> dict:
  """The client step's tensor memory with every block training (`all`) and with each
  trainable-subset run's blocks, each in a fresh process."""
  from fl_compression.benchmarks import client_step  # pylint: disable=g-import-not-at-top
  found = {}
  for key, blocks in [('all', None)] + [(s.key, s.option_dict['trainable_blocks'])
                                       for s in specs]:
    config = dict(model_config)
    if blocks is not None:
      config['trainable_blocks'] = list(blocks)
    measured = client_step.measure_in_subprocess(
        config, batch_size=_BATCH_SIZE.value, seconds=_STEP_SECONDS.value, label_length=20,
        steps=3)
    found[key] = {k: measured[k] for k in ('step_tensor_bytes', 'tensor_peak_bytes',
                                           'step_seconds', 'batch_size', 'frames')}
  return found


def _targeted_fd(settings: dict, model_config: dict, ranking_path: str, ranking: dict,
                 block_counts: list[int], only: set[str], trainable_counts: list[int],
                 blocks_of) -> None:
  store = _store('targeted_fd', dict(settings, corpus=experiment_runs.basis(
      '', _DATA_DIR.value, corpus.SHORT_FORM)['corpus']))
  if store.get('flat_rate') is None:
    store.put('flat_rate', _flat_rate(model_config, ranking_path, max(block_counts)))
  store.put('ambient_first', list(ranking['ambient_first']))
  planned = (experiments.plan_runs(block_counts, ranking_path, store.get('flat_rate')['rate'])
             + experiments.plan_trainable_runs(trainable_counts, blocks_of))
  specs = [s for s in planned if not only or s.key in only]
  trainable = [s for s in specs if s.key.startswith('trainable/')]
  if trainable and not _REPORT_ONLY.value and any(
      s.key not in (store.get('trainable_step') or {}) for s in trainable):
    print('measuring the client step of each trainable subset ...', flush=True)
    store.put('trainable_step', _trainable_steps(model_config, trainable))
  if store.get('initial') is None and not _REPORT_ONLY.value:
    print('transcribing the pretrained model on both domains ...', flush=True)
    task, weights = experiment_runs.load_speech_task(
        _INITIAL_MODEL_DIR.value, _DATA_DIR.value, _BATCH_SIZE.value, _SEED.value,
        domain=corpus.SHORT_FORM)
    initial = {split: {'rates': r.as_dict(), 'utterances': r.utterances.as_dict()}
               for split, r in task.transcription_eval(weights, task.model_config).items()}
    initial.update(experiment_runs.domain_test_errors(
        flag_utils.resolve_path(_DATA_DIR.value), corpus.MAIN, weights, task.model_config))
    store.put('initial', initial)

  def write_report():
    results = store.data['results']
    _write('targeted_fd.json', json.dumps(experiments.rows(results, block_counts), indent=1))
    if trainable_counts:
      _write('trainable.json', json.dumps(experiments.trainable_rows(results, trainable_counts),
                                          indent=1))
    report = experiments.render_report(results, block_counts,
                                       _report_settings(settings, planned, store),
                                       trainable_counts)
    _write('targeted_fd.md', report)
    return report

  _run_all('targeted fine-tuning', specs, store, _run_one(corpus.SHORT_FORM, (corpus.MAIN,)),
           'targeted_fd', write_report)


def _allocation(settings: dict, ranking_path: str, only: set[str]) -> None:
  store = _store('allocation', dict(settings, corpus=experiment_runs.basis(
      '', _DATA_DIR.value, corpus.MAIN)['corpus']))
  planned = experiments.plan_allocation_runs(_TOTAL_ROUNDS.value, ranking_path)
  specs = [s for s in planned if not only or s.key in only]

  def write_report():
    report = experiments.allocation_report(store.data['results'],
                                           _report_settings(settings, planned, store))
    _write('allocation.md', report)
    return report

  _run_all('allocation', specs, store, _run_one(corpus.MAIN, ()), 'allocation', write_report)


def _run_all(what, specs, store, run_one, name, write_report) -> None:
  pending = [s for s in specs if not experiment_runs.is_current(s, store.get(s.key))]
  print(f'{what}: {len(specs)} runs, {len(specs) - len(pending)} already done; '
        f'{_TOTAL_ROUNDS.value} rounds x {_CLIENTS_PER_ROUND.value} clients each', flush=True)
  if not _REPORT_ONLY.value:
    experiment_runs.run_pending(specs, store, run_one,
                                os.path.join(_output_dir(), f'{name}_states'),
                                after_each=write_report)
  write_report()
  print(f'report: {os.path.join(_output_dir(), name + ".md")}', flush=True)


def run() -> None:
  for name in ('total_rounds', 'evaluation_period', 'clients_per_round', 'batch_size'):
    flag_utils.require_positive(name, flags.FLAGS[name].value)
  flag_utils.require_positive('client_learning_rate', _CLIENT_LEARNING_RATE.value)
  if _EVALUATION_PERIOD.value > _TOTAL_ROUNDS.value:
    raise flag_utils.FlagError(f'--evaluation_period={_EVALUATION_PERIOD.value} is above '
                               f'--total_rounds={_TOTAL_ROUNDS.value}')
  unknown = sorted(set(_EXPERIMENTS.value) - set(EXPERIMENTS))
  if unknown or not _EXPERIMENTS.value:
    raise flag_utils.FlagError(f'--experiments={",".join(_EXPERIMENTS.value)}: known: '
                               f'{", ".join(EXPERIMENTS)}')
  model_config, weights_hash = _model()
  ranking_path = flag_utils.resolve_path(_RANKING.value)
  try:
    ranking = importance_targets.load_ranking(ranking_path, model_config, 'ranking')
  except importance_targets.TargetError as e:
    raise flag_utils.FlagError(str(e)) from None
  with open(ranking_path, 'rb') as f:
    ranking_hash = hashlib.sha256(f.read()).hexdigest()[:16]
  num_blocks = model_config['encoder']['num_blocks']
  block_counts = _counts(_BLOCK_COUNTS, num_blocks)
  trainable_counts = _counts(_TRAINABLE_COUNTS, num_blocks, allow_empty=True)
  blocks_of = lambda spec: importance_targets.target_blocks(  # noqa: E731
      spec, num_blocks, ranking, 'trainable_counts', 'ranking')
  known = set()
  if 'targeted_fd' in _EXPERIMENTS.value:
    known |= {s.key for s in experiments.plan_runs(block_counts, ranking_path, 0.5)
              if not s.key.startswith('fd/flat/')}
    known |= {k for k in _ONLY.value if k.startswith('fd/flat/')}  # Its rate is chosen later.
    known |= {s.key for s in experiments.plan_trainable_runs(trainable_counts, blocks_of)}
  if 'allocation' in _EXPERIMENTS.value:
    known |= {s.key for s in experiments.plan_allocation_runs(_TOTAL_ROUNDS.value, '')}
  unknown = sorted(set(_ONLY.value) - known)
  if unknown:
    raise flag_utils.FlagError(f'--only: {", ".join(unknown)} not among the runs; known: '
                               f'{", ".join(sorted(known))}')
  data_dir = flag_utils.resolve_path(_DATA_DIR.value)
  try:  # Both domains: fine-tuning on the held-out one, forgetting measured on the main one.
    for domain in (corpus.MAIN, corpus.SHORT_FORM):
      tasks.ensure_domain(data_dir, domain, _SEED.value)
  except (OSError, ValueError, RuntimeError) as e:
    raise flag_utils.FlagError(f'--data_dir={_DATA_DIR.value}: {e}') from None
  _output_dir()
  settings = {
      'initial_model_dir': _INITIAL_MODEL_DIR.value, 'initial_model': weights_hash,
      'ranking': _RANKING.value, 'ranking_sha256': ranking_hash, 'data_dir': _DATA_DIR.value,
      'total_rounds': _TOTAL_ROUNDS.value, 'evaluation_period': _EVALUATION_PERIOD.value,
      'clients_per_round': _CLIENTS_PER_ROUND.value, 'batch_size': _BATCH_SIZE.value,
      'client_learning_rate': _CLIENT_LEARNING_RATE.value, 'seed': _SEED.value}
  started = time.monotonic()
  only = set(_ONLY.value)
  if 'targeted_fd' in _EXPERIMENTS.value:
    _targeted_fd(settings, model_config, ranking_path, ranking, block_counts, only,
                 trainable_counts, blocks_of)
  if 'allocation' in _EXPERIMENTS.value:
    _allocation(settings, ranking_path, only)
  print(f'({(time.monotonic() - started) / 60:.1f} min this invocation)', flush=True)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
