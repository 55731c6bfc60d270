"""What the experiment programs share: loading the pretrained model and corpus, one federated
run from that model with its results collected, and the resumable loop over pending runs."""

import asyncio
import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow_federated as tff

from fl_compression import variants  # pylint: disable=unused-import
from fl_compression import tasks
from fl_compression.data import corpus
from fl_compression.benchmarks import fresh_process
from fl_compression.benchmarks import pruning_experiments as experiments
from fl_compression.benchmarks import traffic
from fl_compression.learning import algorithms
from fl_compression.models import asr
from fl_compression.models import checkpoint
from fl_compression.pruning import plan as plan_lib
from tff_programs import backends
from tff_programs import flag_utils
from tff_programs import program_logic
from tff_programs import release


class Collector(tff.program.ReleaseManager):
  """Keeps released values by key (materialized)."""

  def __init__(self):
    self.values: dict[int, Any] = {}

  async def release(self, value, key: int) -> None:
    self.values[key] = await tff.program.materialize_value(value)


def flatten(value, prefix=''):
  if isinstance(value, dict):
    out = {}
    for k, v in value.items():
      out.update(flatten(v, f'{prefix}{k}/'))
    return out
  return {prefix[:-1]: value}


def parameter_count(weights) -> int:
  return int(sum(np.size(w) for w in list(weights.trainable) + list(weights.non_trainable)))


def parameter_bytes(weights) -> int:
  return int(sum(np.asarray(w).nbytes for w in list(weights.trainable) +
                 list(weights.non_trainable)))


def load_speech_task(initial_model_dir: str, data_dir: str, batch_size: int, seed: int,
                     model: str = '', domain: str = corpus.MAIN,
                     trainable_blocks: Sequence[int] | None = None) -> tuple[tasks.Task, Any]:
  """The speech task on `data_dir`'s `domain` and the starting weights: the saved model of
  `initial_model_dir` (its own configuration; a named `model` must be that one), or without
  one the named `model` (default `tiny`) at its initialization (weights None). With
  `trainable_blocks`, only those encoder blocks train (the starting weights rearranged to
  match). Errors name the flag."""
  initial_config = initial_weights = None
  if initial_model_dir:
    model_dir = flag_utils.resolve_path(initial_model_dir)
    try:
      initial_config = checkpoint.load_config(model_dir)['model']
      initial_weights = checkpoint.load_weights(model_dir)
    except (OSError, ValueError) as e:
      raise flag_utils.FlagError(f'--initial_model_dir={initial_model_dir}: {e}') from None
  options = tasks.TaskOptions(batch_size=batch_size, seed=seed,
                              data_dir=flag_utils.resolve_path(data_dir), model=model,
                              domain=domain, model_config=initial_config,
                              trainable_blocks=(list(trainable_blocks)
                                                if trainable_blocks is not None else None))
  try:
    task = tasks.build_task('speech_ctc', options)
  except (ValueError, OSError, RuntimeError) as e:
    raise flag_utils.FlagError(f'--data_dir={data_dir}: {e}') from None
  if initial_config is not None and model and asr.canonical_config(
      initial_config, ('seed',)) != asr.canonical_config(
          asr.named_config(model, task.model_config['vocab_size']), ('seed',)):
    raise flag_utils.FlagError(f'--initial_model_dir={initial_model_dir} holds a '
                               f'{initial_config.get("name")} model that is not the named '
                               f'{model} one')
  if initial_weights is not None and trainable_blocks is not None:
    initial_weights = checkpoint.reorder_weights(initial_weights, initial_config,
                                                 task.model_config)
  return task, initial_weights


def domain_test_errors(data_dir: str, domain: str, weights, model_config: dict
                       ) -> dict[str, dict[str, Any]]:
  """`{test split: {'rates', 'utterances'}}` of `weights` on `domain`'s test split of
  `data_dir`: what a model fine-tuned on one domain still does on another."""
  from fl_compression.data import features  # pylint: disable=g-import-not-at-top
  from fl_compression.evaluation import speech_eval  # pylint: disable=g-import-not-at-top
  split = corpus.domain(domain).test_split
  reports = tasks.load_speech_splits(
      tasks.TaskOptions(data_dir=flag_utils.resolve_path(data_dir), domain=domain),
      features.CharTokenizer(), log=lambda line: None)
  rates = speech_eval.SplitEvaluator({split: reports[split].utterances})(weights, model_config)
  return {split: {'rates': rates[split].as_dict(),
                  'utterances': rates[split].utterances.as_dict()}}


def basis(initial_model_dir: str, data_dir: str, domain: str = corpus.MAIN) -> dict[str, Any]:
  """What stored results depend on beyond the flags: a hash of the starting weights (empty
  without a starting model) and the fingerprint of the corpus domain the runs use (`external`
  for a corpus that was not generated here). A benchmark keeps them in its settings, so results
  of another model or corpus are never mixed in."""
  import hashlib  # pylint: disable=g-import-not-at-top
  found = {'initial_model': '', 'corpus': 'external'}
  if initial_model_dir:
    path = os.path.join(flag_utils.resolve_path(initial_model_dir), checkpoint.WEIGHTS_FILE)
    with open(path, 'rb') as f:
      found['initial_model'] = hashlib.sha256(f.read()).hexdigest()[:16]
  manifest = corpus.read_manifest(flag_utils.resolve_path(data_dir))
  if manifest is not None and domain in manifest['domains']:
    found['corpus'] = f'{domain}:{manifest["domains"][domain]["fingerprint"]}'
  return found


class BestDevModel:
  """Keeps, in `directory`, the evaluated model with the lowest dev WER from round
  `select_from_round` on (ties: the earliest round), so that a run transcribes its test split
  once, for the round dev selects. Survives a restart: the kept model is a file."""

  def __init__(self, directory: str, dev_split: str, select_from_round: int):
    self.directory = directory
    self.dev_split = dev_split
    self.select_from_round = select_from_round

  def best(self) -> dict[str, Any] | None:
    """{'round', 'dev_wer'} of the kept model, or None."""
    path = os.path.join(self.directory, 'best.json')
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  def __call__(self, round_num: int, model_config: dict, weights, metrics: dict) -> None:
    if round_num < self.select_from_round or 'transcription' not in metrics:
      return
    wer = metrics['transcription'][self.dev_split]['wer']
    best = self.best()
    if best is not None and (wer, round_num) >= (best['dev_wer'], best['round']):
      return
    # Weights first, then the record naming them: a crash in between keeps the old record.
    checkpoint.save_model(os.path.join(self.directory, 'model'), model_config, weights,
                          {'round': round_num, 'dev_wer': wer})
    with open(os.path.join(self.directory, 'best.json.tmp'), 'w') as f:
      json.dump({'round': round_num, 'dev_wer': wer}, f)
    os.replace(os.path.join(self.directory, 'best.json.tmp'),
               os.path.join(self.directory, 'best.json'))

  def weights(self):
    return checkpoint.load_weights(os.path.join(self.directory, 'model'))


def federated_run(spec: experiments.RunSpec, task: tasks.Task, initial_weights,
                  hparams: algorithms.Hyperparameters, sampler: program_logic.ClientSampler,
                  state_dir: str, total_rounds: int, evaluation_period: int = 0,
                  select_from_round: int = 1, domain: str = corpus.MAIN,
                  also_test: Sequence[str] = (), data_dir: str = '') -> dict[str, Any]:
  """One run of `spec` from the pretrained weights; a killed run resumes from `state_dir`.

  The model's dev split is transcribed every `evaluation_period` rounds (0: after the last
  round only); the run's result is the evaluated round from `select_from_round` on with the
  lowest dev WER (`selected_round`; ties: the earliest), whose model alone is transcribed on
  the test split, once (`BestDevModel`), and on the test split of each domain of `also_test`
  (of `data_dir`: what fine-tuning on `domain` forgets). Every round's metrics and every
  evaluation are kept in `state_dir` as they are made, so a resumed run reports all its rounds.
  """
  context = algorithms.BuildContext(
      model_config=task.model_config, make_model_fn=task.make_model_fn, hparams=hparams,
      total_rounds=total_rounds, options=spec.option_dict, initial_weights=initial_weights)
  started = time.monotonic()
  # Single-process algorithms (FedAvg) build their computations here, staged ones per stage.
  training = algorithms.get(spec.algorithm).staged(context)
  construction_seconds = time.monotonic() - started
  train = release.JsonFileReleaseManager(os.path.join(state_dir, 'train_metrics'))
  model = Collector()
  evaluations = release.JsonFileReleaseManager(os.path.join(state_dir, 'evaluations'))
  utterances = release.JsonFileReleaseManager(os.path.join(state_dir, 'utterance_errors'))
  evaluated = task.transcription_eval is not None
  splits = corpus.domain(domain)
  keeper = BestDevModel(os.path.join(state_dir, 'best_dev'), splits.dev_split,
                        select_from_round)
  result = asyncio.run(program_logic.train_model(
      training=training, task=task, sampler=sampler, total_rounds=total_rounds,
      evaluation_period=evaluation_period or total_rounds,
      program_state_manager=tff.program.FileProgramStateManager(state_dir, keep_total=1),
      train_metrics_manager=train,
      evaluation_metrics_manager=evaluations if evaluated else None,
      utterance_errors_manager=utterances if evaluated else None,
      model_output_manager=model, initial_model_weights=initial_weights,
      evaluate_clients=False, evaluate_initial=False,
      transcription_splits=[splits.dev_split] if evaluated else None,
      on_evaluation=keeper if evaluated else None))
  selection = {}
  if evaluated:
    curves = {r: v['transcription'] for r, v in evaluations.read().items()}
    selected = select_round({r: c[splits.dev_split]['wer'] for r, c in curves.items()},
                            select_from_round)
    best = keeper.best()
    if best is None or best['round'] != selected:
      raise RuntimeError(f'{spec.key}: the kept best-dev model is of round '
                         f'{best and best["round"]}, the evaluations select round {selected}')
    test_path = os.path.join(state_dir, 'best_dev', 'test.json')
    if not os.path.exists(test_path):
      with open(os.path.join(keeper.directory, 'model', 'config.json')) as f:
        model_config = json.load(f)['model']
      rates = task.transcription_eval(keeper.weights(), model_config, [splits.test_split])
      with open(test_path + '.tmp', 'w') as f:
        json.dump({split: {'rates': r.as_dict(), 'utterances': r.utterances.as_dict()}
                   for split, r in rates.items()}, f)
      os.replace(test_path + '.tmp', test_path)
    with open(test_path) as f:
      test = json.load(f)
    for other in also_test:
      other_path = os.path.join(state_dir, 'best_dev', f'test_{other}.json')
      if not os.path.exists(other_path):
        with open(os.path.join(keeper.directory, 'model', 'config.json')) as f:
          model_config = json.load(f)['model']
        found = domain_test_errors(data_dir, other, keeper.weights(), model_config)
        with open(other_path + '.tmp', 'w') as f:
          json.dump(found, f)
        os.replace(other_path + '.tmp', other_path)
      with open(other_path) as f:
        test.update(json.load(f))
    selection = {
        'error_rates': {**curves[selected], **{s: t['rates'] for s, t in test.items()}},
        'selected_round': selected,
        'utterance_errors': {**utterances.read()[selected],
                             **{s: t['utterances'] for s, t in test.items()}},
        'final_error_rates': curves[total_rounds],
        'wer_curves': {split: {str(r): curves[r][split]['wer'] for r in sorted(curves)}
                       for split in curves[total_rounds]}}
  released = train.read()
  missing = sorted(set(range(1, total_rounds + 1)) - set(released))
  if missing:
    raise RuntimeError(f'{spec.key}: no metrics of rounds {missing[:5]} in {state_dir}')
  rounds = [flatten(released[k]) for k in sorted(released)]
  model_config, weights = model.values[total_rounds]
  built = [r['stage_build_seconds'] for r in rounds]
  steady = [r['round_time_seconds'] for r, b in zip(rounds, built) if b == 0]
  held = [r['client_work/held_parameter_bytes'] for r in rounds
          if 'client_work/held_parameter_bytes' in r]
  return {
      'algorithm': spec.algorithm, 'options': spec.option_dict,
      'error_rates': None, **selection,
      'model_parameters': parameter_count(weights),
      'model_parameter_bytes': parameter_bytes(weights),
      'client_parameters': parameter_count(weights) if spec.algorithm != 'fd' else None,
      'client_held_parameter_bytes': float(np.mean(held)) if held else None,
      'client_bytes_down': float(np.mean([r['communication/client_bytes_down'] for r in rounds])),
      'client_bytes_up': float(np.mean([r['communication/client_bytes_up'] for r in rounds])),
      'round_seconds': [r['round_time_seconds'] for r in rounds],
      # Per round: the time to build a new stage's computations (0 in steady rounds).
      'round_build_seconds': built,
      'mean_round_seconds': float(np.mean(steady)) if steady else None,
      # Stage builds, and this invocation's construction of the algorithm.
      'build_seconds': float(sum(built)) + construction_seconds,
      'mask_changes': [float(r.get('finalizer/mask_changes', 0.0)) for r in rounds],
      # Federated dropout: the fraction of the model's parameters the clients do not get.
      'dropped_fraction': next((float(rounds[-1][k]) for k in rounds[-1]
                                if k.endswith('/dropped_fraction')), None),
      'client_batches': int(sum(r['client_work/train/num_batches'] for r in rounds)),
      'train_loss_last_round': float(rounds[-1]['client_work/train/loss']),
      'pruning_plan': plan_lib.describe(model_config['pruning'])
      if 'pruning' in model_config else None,
      'wall_seconds': time.monotonic() - started,
  }


def select_round(dev_wer: dict[int, float], select_from_round: int = 1) -> int:
  """The round with the lowest dev WER among those from `select_from_round` on (ties: the
  earliest)."""
  candidates = sorted(r for r in dev_wer if r >= select_from_round)
  if not candidates:
    raise ValueError(f'no evaluated round from round {select_from_round} on')
  return min(candidates, key=lambda r: (dev_wer[r], r))


async def interleaved_round_times(specs: Sequence[experiments.RunSpec], task: tasks.Task,
                            initial_weights, hparams: Callable[[experiments.RunSpec],
                                                               algorithms.Hyperparameters],
                            sampler: program_logic.ClientSampler, rounds: int
                            ) -> dict[str, Any]:
  """Round times of several algorithms measured side by side in one process.

  Every algorithm starts from `initial_weights` and first runs one untimed round (it traces and
  optimizes its computations). Then each timed round `r` runs every algorithm once, back to
  back, on the same clients (`sampler.sample(r)`), alternating the order between rounds, so
  load drift on the machine and the clients' data sizes affect all of them alike. Returns the
  round seconds per run key, in round order, and the sampled clients.
  """
  if rounds < 1:
    raise ValueError(f'timed rounds must be positive, got {rounds}')
  processes = {}
  for spec in specs:
    context = algorithms.BuildContext(
        model_config=task.model_config, make_model_fn=task.make_model_fn, hparams=hparams(spec),
        total_rounds=rounds + 1, options=spec.option_dict, initial_weights=initial_weights)
    training = algorithms.get(spec.algorithm).staged(context)
    stage = training.build_stage(training.stage_key(1))
    if training.stage_key(rounds + 1) != stage.key:
      raise ValueError(f'{spec.key}: a staged algorithm changes its process between rounds; '
                       'time it in a federated run instead')
    processes[spec.key] = [stage.train_process, training.initial_state(stage, initial_weights)]

  async def one_round(key: str, round_num: int, client_ids: Sequence[str]) -> float:
    process, state = processes[key]
    started = time.monotonic()
    output = process.next(state, [task.train_dataset(c, round_num) for c in client_ids])
    await tff.program.materialize_value(output.metrics)
    processes[key][1] = output.state
    return time.monotonic() - started

  warm_up = {key: await one_round(key, 1, sampler.sample(1)) for key in processes}
  times: dict[str, list[float]] = {key: [] for key in processes}
  clients = []
  keys = list(processes)
  for round_num in range(2, rounds + 2):
    client_ids = sampler.sample(round_num)
    clients.append(client_ids)
    for key in (keys if round_num % 2 == 0 else keys[::-1]):
      times[key].append(await one_round(key, round_num, client_ids))
  return {'keys': keys, 'rounds': rounds, 'round_seconds': times, 'clients': clients,
          'warm_up_seconds': warm_up}


# A stored result stands for its planned run (`pruning_experiments.is_current`).
is_current = experiments.is_current


def run_pending(specs: Sequence[experiments.RunSpec], store: experiments.ResultStore,
                run_one: Callable[[experiments.RunSpec, str], dict[str, Any]],
                states_dir: str, after_each: Callable[[], None] = lambda: None) -> None:
  """Runs the specs without a current stored result (`is_current`), storing each as it
  finishes."""
  pending = [s for s in specs if not is_current(s, store.get(s.key))]
  for i, spec in enumerate(pending):
    state_dir = os.path.join(states_dir, spec.key.replace('/', '_'))
    result = run_one(spec, state_dir)
    store.put(spec.key, result)
    shutil.rmtree(state_dir, ignore_errors=True)
    if result['error_rates']:
      scored = 'WER ' + ' '.join(f'{split} {100 * rates["wer"]:.2f}%'
                                 for split, rates in result['error_rates'].items())
      scored += f' (round {result["selected_round"]}, chosen by dev)'
    else:
      scored = 'not evaluated'
    print(f'[{i + 1}/{len(pending)}] {spec.key:<36} {scored} | build '
          f'{result["build_seconds"]:5.1f} s | round {result["mean_round_seconds"] or 0:5.1f} s '
          f'| {result["wall_seconds"]:5.0f} s', flush=True)
    after_each()


@dataclasses.dataclass(frozen=True)
class RunJob:
  """Everything one federated run needs, as JSON: what a child process runs."""

  key: str
  algorithm: str
  options: dict[str, Any]
  hparams: dict[str, Any]
  initial_model_dir: str
  data_dir: str
  batch_size: int
  seed: int  # Data augmentation and the task.
  sampler_seed: int
  clients_per_round: int
  total_rounds: int
  state_dir: str
  log_dir: str
  model: str = ''  # A named model in place of the tiny CTC one (`load_speech_task`).
  evaluate: bool = True  # False: no transcription of the final model (cost runs).
  evaluation_period: int = 0  # Rounds between dev/test evaluations (0: the last round only).
  select_from_round: int = 1  # The first round the dev selection may choose.
  domain: str = corpus.MAIN
  # Other domains whose test split the selected model is also transcribed on.
  also_test: tuple[str, ...] = ()
  # Only these encoder blocks train (None: the whole model).
  trainable_blocks: tuple[int, ...] | None = None


def run_in_subprocess(job: RunJob, timeout: float = 4 * 3600) -> dict[str, Any]:
  """`federated_run` of `job` in a fresh process with its own local TFF worker.

  A process and a worker that serve run after run keep every computation they traced (they
  grew to about 18 GB over 15 runs); a child per run returns all of it when it exits.
  """
  return fresh_process.run_module('tff_programs.experiment_runs', dataclasses.asdict(job),
                                  timeout=timeout, what=f'federated run {job.key}')


@dataclasses.dataclass(frozen=True)
class TimingJob:
  """`interleaved_round_times` of some runs, as JSON: what a child process runs."""

  runs: list[dict[str, Any]]  # Each: key, algorithm, options, hparams.
  rounds: int
  initial_model_dir: str
  data_dir: str
  batch_size: int
  seed: int
  sampler_seed: int
  clients_per_round: int
  log_dir: str


def time_in_subprocess(job: TimingJob, timeout: float = 2 * 3600) -> dict[str, Any]:
  """`interleaved_round_times` of `job` in a fresh process with its own local TFF worker."""
  return fresh_process.run_module('tff_programs.experiment_runs',
                                  {'timing': dataclasses.asdict(job)}, timeout=timeout,
                                  what='interleaved round timing')


def traffic_in_subprocess(model_names: Sequence[str], timeout: float = 1800) -> dict[str, Any]:
  """`traffic.measure` of the named configurations in a fresh process (conformer_l alone
  holds 0.5 GB of weights)."""
  return fresh_process.run_module('tff_programs.experiment_runs',
                                  {'traffic': list(model_names)}, timeout=timeout,
                                  what=f'client traffic of {", ".join(model_names)}')


def _child_task(job, model: str = ''):
  """A child's task, starting weights and client sampler (`RunJob` and `TimingJob` alike)."""
  task, initial_weights = load_speech_task(job.initial_model_dir, job.data_dir, job.batch_size,
                                           job.seed, model, getattr(job, 'domain', corpus.MAIN),
                                           getattr(job, 'trainable_blocks', None))
  sampler = program_logic.ClientSampler(tuple(task.train_data.client_ids),
                                        job.clients_per_round, job.sampler_seed)
  return task, initial_weights, sampler


def _local_context(job):
  return backends.federated_context('local', log_dir=job.log_dir,
                                    default_num_clients=job.clients_per_round)


def _spec(key: str, algorithm: str, options: dict[str, Any]) -> experiments.RunSpec:
  return experiments.RunSpec(key, algorithm, tuple(sorted(options.items())))


def _time_job(job: TimingJob) -> dict[str, Any]:
  task, initial_weights, sampler = _child_task(job)
  specs = [_spec(r['key'], r['algorithm'], r['options']) for r in job.runs]
  hparams = {r['key']: algorithms.Hyperparameters(**r['hparams']) for r in job.runs}
  with _local_context(job):
    return asyncio.run(interleaved_round_times(
        specs, task, initial_weights, lambda s: hparams[s.key], sampler, job.rounds))


def _run_job(job: RunJob) -> dict[str, Any]:
  # The code this process loaded: a commit made while the run goes on is not its code.
  revision = experiments.code_revision()
  task, initial_weights, sampler = _child_task(job, job.model)
  if not job.evaluate:
    task = dataclasses.replace(task, transcription_eval=None)
  with _local_context(job):
    result = federated_run(_spec(job.key, job.algorithm, job.options), task, initial_weights,
                           algorithms.Hyperparameters(**job.hparams), sampler, job.state_dir,
                           job.total_rounds, job.evaluation_period, job.select_from_round,
                           job.domain, job.also_test, job.data_dir)
  return dict(result, code_revision=revision)


@dataclasses.dataclass(frozen=True)
class PhasesJob:
  """`round_phases.time_round` of FedAvg and of a pruning round, as JSON: what a child runs."""

  runs: list[dict[str, Any]]  # Each: key, algorithm, options, hparams.
  model: str  # A named model, from its initialization.
  data_dir: str
  batch_size: int
  seed: int
  clients_per_round: int
  repeats: int
  log_dir: str


def phases_in_subprocess(job: PhasesJob, timeout: float = 3 * 3600) -> dict[str, Any]:
  """Where the time of a round goes, per run of `job`, in a fresh process."""
  return fresh_process.run_module('tff_programs.experiment_runs',
                                  {'phases': dataclasses.asdict(job)}, timeout=timeout,
                                  what='round phases')


def _phases_job(job: PhasesJob) -> dict[str, Any]:
  from fl_compression.benchmarks import round_phases  # pylint: disable=g-import-not-at-top
  task, _ = load_speech_task('', job.data_dir, job.batch_size, job.seed, job.model)
  sampler = program_logic.ClientSampler(tuple(task.train_data.client_ids),
                                        job.clients_per_round, job.seed)
  clients = [task.train_dataset(c, 2) for c in sampler.sample(2)]
  found = {'model': job.model, 'repeats': job.repeats}

  async def measure():
    for run in job.runs:
      context = algorithms.BuildContext(
          model_config=task.model_config, make_model_fn=task.make_model_fn,
          hparams=algorithms.Hyperparameters(**run['hparams']), total_rounds=3,
          options=run['options'])
      training = algorithms.get(run['algorithm']).staged(context)
      stage = training.build_stage(training.stage_key(1))
      state = training.initial_state(stage)
      found[run['key']] = await round_phases.time_round(stage.train_process, state, clients,
                                                        repeats=job.repeats)
    return found

  with backends.federated_context('local', log_dir=job.log_dir,
                                  default_num_clients=job.clients_per_round):
    return asyncio.run(measure())


def _main(request: dict[str, Any]) -> dict[str, Any]:
  backends.disable_unmanaged_default_context()
  if 'traffic' in request:
    return traffic.measure(request['traffic'])
  if 'phases' in request:
    return _phases_job(PhasesJob(**request['phases']))
  if 'timing' in request:
    return _time_job(TimingJob(**request['timing']))
  return _run_job(RunJob(**request))


if __name__ == '__main__':
  print(json.dumps(_main(json.loads(sys.argv[1])), default=float), flush=True)
