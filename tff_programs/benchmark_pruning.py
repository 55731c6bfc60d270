"""Federated pruning experiments on the embedded corpus: one run each, one pretrained model.

  bazel run //tff_programs:benchmark_pruning -- --output_dir=runs/pruning_experiments

Runs (see fl_compression/benchmarks/pruning_experiments.py): WER against sparsity for the four
patterns; importance methods; unified against adaptive sparsity at 50%; with and without mask
refinement at 40%; anchors (dense FedAvg, federated dropout, tfmot's centralized
`prune_low_magnitude`); costs per round against FedAvg and the peak memory of one
`conformer_l` client step, dense against 50% column-pruned, in fresh processes.

Writes `results.json` (after every run: a killed benchmark started again skips what is done
and resumes an unfinished run from its last round), `report.md` and PNG figures.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import dataclasses
import sys
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from fl_compression import tasks
from fl_compression.benchmarks import client_step
from fl_compression.benchmarks import pruning_experiments as experiments
from fl_compression.learning import algorithms
from fl_compression.models import asr
from fl_compression.models import registry
from fl_compression.pruning import centralized
from fl_compression.pruning import plan as plan_lib
from tff_programs import experiment_runs
from tff_programs import flag_utils
from tff_programs import program_main

_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'runs/pruning_experiments', 'Report directory.')
_DATA_DIR = flags.DEFINE_string('data_dir', 'data/embedded_corpus',
                                'LibriSpeech-layout corpus (generated here if absent).')
_INITIAL_MODEL_DIR = flags.DEFINE_string(
    'initial_model_dir', 'checkpoints/conformer_ctc_tiny',
    'The pretrained dense model every run starts from.')
_EXPERIMENTS = flags.DEFINE_list('experiments', list(experiments.EXPERIMENTS),
                                 f'Which experiments: {", ".join(experiments.EXPERIMENTS)}.')
_SPARSITIES = flags.DEFINE_list('sparsities', ['0.1', '0.2', '0.3', '0.4', '0.5'],
                                'Target sparsities of the sweeps.')
_TOTAL_ROUNDS = flags.DEFINE_integer('total_rounds', 6, 'Rounds of every federated run.')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 4, 'Speakers per round.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Client batch size.')
_CLIENT_LEARNING_RATE = flags.DEFINE_float('client_learning_rate', 2e-4, 'Client Adam rate.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of client sampling and augmentation.')
_MEMORY_MODEL = flags.DEFINE_string(
    'memory_model', 'conformer_l', 'Configuration of the client-step memory comparison '
    '(empty: skip it).')
_MEMORY_BATCH = flags.DEFINE_integer('memory_batch_size', 4, 'Utterances in that step.')
_MEMORY_SECONDS = flags.DEFINE_float('memory_seconds', 4.0, 'Audio seconds per utterance.')
_COST_MODEL = flags.DEFINE_string(
    'cost_model', 'conformer_s', 'The costs experiment also runs FedAvg and 50% column pruning '
    'of this named model (from its initialization, not evaluated), where client training '
    'dominates a round; empty: skip.')
_PHASE_REPEATS = flags.DEFINE_integer(
    'phase_repeats', 3, 'costs: timed repetitions of each prefix of the round-phase breakdown '
    '(FedAvg and 50% column pruning of --cost_model); 0: skip it.')
_REPORT_ONLY = flags.DEFINE_bool(
    'report_only', False, 'Write the report from the results so far, running nothing; runs '
    'not done yet are left out of it.')
_STEP_SECONDS = flags.DEFINE_float('step_seconds', 3.0,
                                   'Audio seconds per utterance of the tiny client-step timing.')


def _tfmot_run(sparsity: float, task: tasks.Task, weights, steps: int) -> dict[str, Any]:
  seed = tf.constant([_SEED.value, 7], tf.int64)
  pooled = task.train_data.create_tf_dataset_from_all_clients(seed=_SEED.value)
  batches = task.train_preprocess(pooled.shuffle(4096, seed=_SEED.value).repeat(), seed)
  started = time.monotonic()
  pruned = centralized.prune_low_magnitude(
      task.model_config, weights, batches, sparsity=sparsity, steps=steps,
      learning_rate=_CLIENT_LEARNING_RATE.value)
  rates = task.transcription_eval(pruned.weights, task.model_config)
  return {'algorithm': 'tfmot prune_low_magnitude (centralized)', 'sparsity': sparsity,
          'error_rates': {split: r.as_dict() for split, r in rates.items()},
          'utterance_errors': {split: r.utterances.as_dict() for split, r in rates.items()},
          'achieved_sparsity': pruned.achieved_sparsity, 'steps': pruned.steps,
          'model_parameters': experiment_runs.parameter_count(pruned.weights),
          'wall_seconds': time.monotonic() - started}


def _costs(base: dict[str, Any], pruned: dict[str, Any], model_config: dict[str, Any],
           prunable: str = 'paper') -> dict[str, Any]:
  """FedAvg's run `base` against the 50% column-pruned run `pruned` of `model_config`: bytes
  (with the floor of the prunable set: the dense bytes less the removed kernel entries, down
  and up), round times compared round by round, and a client step of each model timed apart."""
  plan = _plan(model_config, experiments.COST_SPARSITY, prunable=prunable)
  removed = plan_lib.removed_parameters(plan)
  dense_bytes = base['client_bytes_down'] + base['client_bytes_up']
  full = registry.build_keras_model(model_config)
  prunable_parameters = sum(layer.size for layer in plan_lib.prunable_layers(full, prunable))
  rows = {'parameters': base['model_parameters'], 'prunable': prunable,
          'floor_ratio': (dense_bytes - 8 * removed) / dense_bytes,
          'prunable_fraction': prunable_parameters / full.count_params()}
  del full
  for name, run, config in (
      ('fedavg', base, model_config),
      ('pruned', pruned, dict(model_config, pruning=plan))):
    step = client_step.measure_in_subprocess(
        config, batch_size=_BATCH_SIZE.value, seconds=_STEP_SECONDS.value, label_length=40,
        steps=5)
    rows[name] = {'client_bytes_down': run['client_bytes_down'],
                  'client_bytes_up': run['client_bytes_up'],
                  'client_parameter_bytes': run['model_parameter_bytes'],
                  'client_step_seconds': step['step_seconds'],
                  'build_seconds': run['build_seconds']}
  # Round times are compared round by round (each round has its own clients and data), over
  # the rounds where neither run built computations; per phase too.
  finetune_start = experiments_phase_defaults(len(base['round_seconds']))['finetune_start']
  for field, rounds in experiments.paired_steady_rounds(base, pruned, finetune_start).items():
    for name, run in (('fedavg', base), ('pruned', pruned)):
      rows[name][field] = (float(np.mean([run['round_seconds'][r - 1] for r in rounds]))
                           if rounds else None)
    rows.setdefault('rounds', {})[field] = rounds
  ratio = lambda k: rows['pruned'][k] / rows['fedavg'][k]  # noqa: E731
  rows['ratios'] = {k: ratio(k) for k in rows['fedavg']
                    if rows['fedavg'][k] and rows['pruned'][k] is not None}
  rows['ratios']['client_bytes'] = (
      (rows['pruned']['client_bytes_down'] + rows['pruned']['client_bytes_up']) /
      (rows['fedavg']['client_bytes_down'] + rows['fedavg']['client_bytes_up']))
  return rows


def _plan(model_config, sparsity, pattern='column', prunable='paper'):
  layers = plan_lib.prunable_layers(registry.build_keras_model(model_config), prunable)
  return plan_lib.make_plan(layers, pattern, sparsity)


def _memory(model_name: str) -> dict[str, Any]:
  config = asr.named_config(model_name)
  measured = {}
  for name, cfg in (('dense', config),
                    ('pruned', dict(config, pruning=_plan(config, experiments.COST_SPARSITY)))):
    measured[name] = client_step.measure_in_subprocess(
        cfg, batch_size=_MEMORY_BATCH.value, seconds=_MEMORY_SECONDS.value, label_length=20,
        steps=3)
    tensors = measured[name]['tensor_peak_bytes']
    print(f'  {model_name} {name}: peak RSS {measured[name]["peak_rss_bytes"] / 2**20:.0f} MiB, '
          f'tensor memory {tensors / 2**20 if tensors is not None else float("nan"):.0f} MiB, '
          f'step {measured[name]["step_seconds"]:.2f} s', flush=True)
  return {'model': model_name, **measured}


def _zero_parameter_ratios(model_config, sparsities) -> dict[str, dict[str, float]]:
  layers = plan_lib.prunable_layers(registry.build_keras_model(model_config))
  return {pattern: {f'{s:g}': plan_lib.zero_parameter_ratio(
      plan_lib.make_plan(layers, pattern, s)) for s in sparsities}
          for pattern in experiments.PATTERNS}


def run() -> None:
  for name in ('total_rounds', 'clients_per_round', 'batch_size', 'memory_batch_size'):
    flag_utils.require_positive(name, flags.FLAGS[name].value)
  for name in ('client_learning_rate', 'memory_seconds', 'step_seconds'):
    flag_utils.require_positive(name, flags.FLAGS[name].value)
  try:
    sparsities = sorted({float(s) for s in _SPARSITIES.value})
    for s in sparsities:
      plan_lib.validate_sparsity(s, 'sparsities')
    specs = experiments.plan_runs(_EXPERIMENTS.value, sparsities, _TOTAL_ROUNDS.value,
                                  _COST_MODEL.value)
  except (ValueError, plan_lib.PlanError) as e:
    raise flag_utils.FlagError(f'--sparsities/--experiments: {e}') from None
  for flag in (_MEMORY_MODEL, _COST_MODEL):
    if flag.value and flag.value not in asr.NAMED_CONFIGS:
      raise flag_utils.FlagError(f'--{flag.name}={flag.value} is unknown; known: '
                                 f'{", ".join(asr.NAMED_CONFIGS)}')
  output_dir = flag_utils.ensure_writable_dir('output_dir',
                                              flag_utils.resolve_path(_OUTPUT_DIR.value))
  task, initial_weights = experiment_runs.load_speech_task(
      _INITIAL_MODEL_DIR.value, _DATA_DIR.value, _BATCH_SIZE.value, _SEED.value)
  total = _TOTAL_ROUNDS.value
  defaults = experiments_phase_defaults(total)
  settings = {
      'initial_model_dir': _INITIAL_MODEL_DIR.value, 'data_dir': _DATA_DIR.value,
      'total_rounds': total, 'clients_per_round': _CLIENTS_PER_ROUND.value,
      'batch_size': _BATCH_SIZE.value, 'client_learning_rate': _CLIENT_LEARNING_RATE.value,
      'seed': _SEED.value, 'sparsities': sparsities, **defaults,
      **experiment_runs.basis(_INITIAL_MODEL_DIR.value, _DATA_DIR.value)}
  try:
    store = experiments.ResultStore(os.path.join(output_dir, 'results.json'), settings)
  except ValueError as e:
    raise flag_utils.FlagError(f'--output_dir={_OUTPUT_DIR.value}: {e}') from None
  hparams = algorithms.Hyperparameters(client_optimizer='adam',
                                       client_learning_rate=_CLIENT_LEARNING_RATE.value,
                                       server_optimizer='sgd', server_learning_rate=1.0)
  started = time.monotonic()
  if store.get('initial') is None:
    rates = task.transcription_eval(initial_weights, task.model_config)
    store.put('initial', {split: r.as_dict() for split, r in rates.items()})
  store.put('zero_parameter_ratio', _zero_parameter_ratios(task.model_config, sparsities))
  pending = [s for s in specs if not experiment_runs.is_current(s, store.get(s.key))]
  print(f'{len(specs)} federated runs, {len(specs) - len(pending)} already done; '
        f'{total} rounds x {_CLIENTS_PER_ROUND.value} clients each', flush=True)

  def measurements_when_ready():
    """The centralized anchor and the cost measurements, once the runs they need are done."""
    dense = store.get(experiments.DENSE)
    if 'anchors' in _EXPERIMENTS.value and dense is not None:
      for sparsity in sparsities:
        key = experiments.tfmot_key(sparsity)
        if store.get(key) is None:
          result = _tfmot_run(sparsity, task, initial_weights, dense['client_batches'])
          store.put(key, result)
          test_wer = result['error_rates'][experiments.SPLITS['test']]['wer']
          print(f'{key:<36} test WER {100 * test_wer:6.2f}% '
                f'({100 * result["achieved_sparsity"]:.1f}% zero, {result["steps"]} steps, '
                f'{result["wall_seconds"]:.0f} s)', flush=True)
    pruned = store.get(experiments.fp_key('column', 'magnitude', experiments.COST_SPARSITY))
    if 'costs' in _EXPERIMENTS.value and dense is not None and pruned is not None:
      if store.get('costs') is None:
        store.put('costs', _costs(dense, pruned, task.model_config))
        print(f'costs: {store.get("costs")["ratios"]}', flush=True)
      scale = [store.get(experiments.scale_cost_key(_COST_MODEL.value, p)) for p in (False, True)]
      stored = store.get('scale_costs') or {}
      if _COST_MODEL.value and None not in scale and stored.get('model') != _COST_MODEL.value:
        config = asr.named_config(_COST_MODEL.value, task.model_config['vocab_size'],
                                  seed=_SEED.value)
        store.put('scale_costs', dict(_costs(*scale, config), model=_COST_MODEL.value))
        print(f'costs ({_COST_MODEL.value}): {store.get("scale_costs")["ratios"]}', flush=True)
    extended = store.get(experiments.fp_key('column', 'magnitude', experiments.COST_SPARSITY,
                                            experiments.EXTENDED))
    if 'prunable' in _EXPERIMENTS.value and dense is not None and extended is not None:
      if store.get('costs_extended') is None:
        store.put('costs_extended', _costs(dense, extended, task.model_config, 'extended'))
      scale = [store.get(experiments.scale_cost_key(_COST_MODEL.value, False)),
               store.get(experiments.scale_cost_key(_COST_MODEL.value, True,
                                                    experiments.EXTENDED))]
      stored = store.get('scale_costs_extended') or {}
      if _COST_MODEL.value and None not in scale and stored.get('model') != _COST_MODEL.value:
        config = asr.named_config(_COST_MODEL.value, task.model_config['vocab_size'],
                                  seed=_SEED.value)
        store.put('scale_costs_extended', dict(_costs(*scale, config, 'extended'),
                                               model=_COST_MODEL.value))
    if 'costs' in _EXPERIMENTS.value and _COST_MODEL.value and _PHASE_REPEATS.value:
      stored = store.get('round_phases') or {}
      if stored.get('model') != _COST_MODEL.value or stored.get('repeats') != _PHASE_REPEATS.value:
        runs = [{'key': key, 'algorithm': algorithm, 'options': options,
                 'hparams': dataclasses.asdict(hparams)} for key, algorithm, options in (
                     (experiments.DENSE, 'fedavg', {}),
                     (experiments.fp_key('column', 'magnitude', experiments.COST_SPARSITY), 'fp',
                      {'pattern': 'column', 'importance': 'magnitude',
                       'sparsity': experiments.COST_SPARSITY}))]
        store.put('round_phases', experiment_runs.phases_in_subprocess(experiment_runs.PhasesJob(
            runs=runs, model=_COST_MODEL.value, data_dir=_DATA_DIR.value,
            batch_size=_BATCH_SIZE.value, seed=_SEED.value,
            clients_per_round=_CLIENTS_PER_ROUND.value, repeats=_PHASE_REPEATS.value,
            log_dir=output_dir)))
    if 'costs' in _EXPERIMENTS.value and dense is not None and pruned is not None:
      stored = store.get('memory') or {}
      current = stored.get('model') == _MEMORY_MODEL.value and all(
          client_step.is_current(stored.get(name), batch_size=_MEMORY_BATCH.value,
                                 seconds=_MEMORY_SECONDS.value) for name in ('dense', 'pruned'))
      if _MEMORY_MODEL.value and not current:
        store.put('memory', _memory(_MEMORY_MODEL.value))

  def run_one(spec: experiments.RunSpec, state_dir: str) -> dict[str, Any]:
    rounds, options = experiments.run_rounds(spec, total)
    model = options.pop('model', '')  # A cost run of another model: its own initialization.
    return experiment_runs.run_in_subprocess(experiment_runs.RunJob(
        key=spec.key, algorithm=spec.algorithm, options=options,
        hparams=dataclasses.asdict(hparams),
        initial_model_dir='' if model else _INITIAL_MODEL_DIR.value,
        data_dir=_DATA_DIR.value, batch_size=_BATCH_SIZE.value, seed=_SEED.value,
        sampler_seed=_SEED.value, clients_per_round=_CLIENTS_PER_ROUND.value,
        total_rounds=rounds, state_dir=state_dir, log_dir=output_dir, model=model,
        evaluate=not model))

  if _REPORT_ONLY.value:
    pending = []
  else:
    measurements_when_ready()
  experiment_runs.run_pending(
      pending, store,
      run_one, os.path.join(output_dir, 'program_states'), after_each=measurements_when_ready)
  missing = [s.key for s in specs if not experiment_runs.is_current(s, store.get(s.key))]
  settings_for_report = dict(
      settings, command=' '.join(['bazel run //tff_programs:benchmark_pruning --'] +
                                 [a for a in sys.argv[1:] if not a.startswith('--report_only')]),
      machine=f'{os.cpu_count()} CPU cores', missing_runs=missing,
      recovery_phases=experiments_phase_defaults(experiments.RECOVERY_ROUNDS))
  results = store.data['results']
  figures = experiments.plot(results, settings_for_report, output_dir)
  report = experiments.render_report(results, settings_for_report, figures)
  with open(os.path.join(output_dir, 'report.md'), 'w') as f:
    f.write(report)
  print(f'\n{report}\nreport: {os.path.join(output_dir, "report.md")} '
        f'({(time.monotonic() - started) / 60:.1f} min this invocation)', flush=True)


def experiments_phase_defaults(total_rounds: int) -> dict[str, int]:
  """The phase boundaries every fp run uses (`PruningConfig.resolved`'s defaults)."""
  from fl_compression.pruning import process  # pylint: disable=g-import-not-at-top
  config = process.PruningConfig().resolved(total_rounds)
  return {'refine_start': config.refine_start, 'finetune_start': config.finetune_start}


if __name__ == '__main__':
  app.run(program_main.make_main(run))
