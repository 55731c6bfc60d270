"""Every method against dense FedAvg at one equal, converged budget, with confidence intervals.

  bazel run //tff_programs:benchmark_methods -- --output_dir=$PWD/reports/methods

Runs (see fl_compression/benchmarks/method_experiments.py) from the shipped pretrained `tiny`
model, and dense FedAvg and federated pruning at 30/50% from the pretrained `wide` model: each
run trains `--total_rounds` rounds on the same clients, is transcribed every
`--evaluation_period` rounds, and reports the test WER of its best round on dev, compared with
dense FedAvg's on the same utterances (paired bootstrap 95% interval).

Writes `results.json` after every run (a killed benchmark started again skips what is done and
resumes an unfinished run from its last round), `report.md` and `wer_vs_bytes.png`.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import dataclasses
import hashlib
import sys
import time

from absl import app
from absl import flags

from fl_compression import tasks
from fl_compression.benchmarks import method_experiments as experiments
from fl_compression.benchmarks import pruning_experiments as common
from fl_compression.data import corpus
from fl_compression.learning import algorithms
from fl_compression.models import checkpoint
from tff_programs import experiment_runs
from tff_programs import flag_utils
from tff_programs import program_main

_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'runs/method_experiments', 'Report directory.')
_DATA_DIR = flags.DEFINE_string('data_dir', 'data/embedded_corpus',
                                'LibriSpeech-layout corpus (generated here if absent).')
_INITIAL_MODEL_DIR = flags.DEFINE_string('initial_model_dir', 'checkpoints/conformer_ctc_tiny',
                                         'The pretrained `tiny` model.')
_WIDE_MODEL_DIR = flags.DEFINE_string('wide_model_dir', 'checkpoints/conformer_ctc_wide',
                                      'The pretrained `wide` model.')
_MODELS = flags.DEFINE_list('models', list(experiments.MODELS),
                            f'Which models\' runs: {", ".join(experiments.MODELS)}.')
_ONLY = flags.DEFINE_list('only', [], 'Run only these run keys (e.g. fedavg,'
                          'fp/column/adaptive/0.3); empty: every run of --models.')
_TOTAL_ROUNDS = flags.DEFINE_integer('total_rounds', 60, 'Rounds of every run.')
_EVALUATION_PERIOD = flags.DEFINE_integer('evaluation_period', 5,
                                          'Rounds between dev transcriptions (test is '
                                          'transcribed once, at the round dev selects).')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 8, 'Speakers per round.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Client batch size.')
_CLIENT_LEARNING_RATE = flags.DEFINE_float('client_learning_rate', 2e-4, 'Client Adam rate.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of client sampling and augmentation.')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False,
                                 'Write the report from the stored results, running nothing.')


def _sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def _model_dirs() -> dict[str, str]:
  return {'tiny': _INITIAL_MODEL_DIR.value, 'wide': _WIDE_MODEL_DIR.value}


def _check_model(model: str) -> str:
  """The weights hash of `model`'s pretrained directory; a one-line error names the flag."""
  flag = {'tiny': _INITIAL_MODEL_DIR, 'wide': _WIDE_MODEL_DIR}[model]
  path = os.path.join(flag_utils.resolve_path(flag.value), checkpoint.WEIGHTS_FILE)
  if not os.path.isfile(path):
    raise flag_utils.FlagError(f'--{flag.name}={flag.value}: {path} is missing (pretrain it '
                               'with //tff_programs:pretrain, or leave the model out of '
                               '--models)')
  return _sha256(path)


# ZeroFL's client step probe: a batch of the run's size, 6 s utterances.
_STEP_SECONDS = 6.0
_STEP_LABEL_LENGTH = 90


def zerofl_step_costs(model_config: dict) -> dict:
  """Per SWAT sparsity (and 'dense'): FLOPs of the dense-layer products of one client step
  and the measured time and tensor memory of one SGD step, each step in a fresh process."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from fl_compression.benchmarks import client_step  # pylint: disable=g-import-not-at-top
  from fl_compression.models import pruned_dense  # pylint: disable=g-import-not-at-top
  from fl_compression.models import registry  # pylint: disable=g-import-not-at-top
  from fl_compression.zerofl import flops  # pylint: disable=g-import-not-at-top
  from fl_compression.zerofl import process as zerofl  # pylint: disable=g-import-not-at-top

  frames = int(_STEP_SECONDS * client_step.FRAMES_PER_SECOND)
  features = tf.random.stateless_normal([_BATCH_SIZE.value, frames, 80], seed=[0, 1])
  lengths = tf.fill([_BATCH_SIZE.value], frames)
  costs = {}
  for sparsity in (None,) + experiments.step_cost_sparsities():
    swat = None if sparsity is None else {'sparsity': sparsity}
    if swat:
      with pruned_dense.building_dense(zerofl.swat_factory(
          zerofl.ZeroFLConfig(sparsity=sparsity, mask_ratio=0.0))):
        model = registry.build_keras_model(model_config)
    else:
      model = registry.build_keras_model(model_config)
    counted = flops.step_flops(model, features, lengths)
    measured = client_step.measure_in_subprocess(
        model_config, batch_size=_BATCH_SIZE.value, seconds=_STEP_SECONDS,
        label_length=_STEP_LABEL_LENGTH, steps=5, swat=swat)
    costs['dense' if sparsity is None else f'{sparsity:g}'] = {
        'forward_flops': counted['forward'], 'backward_flops': counted['backward'],
        'step_seconds': measured['step_seconds'],
        'step_tensor_bytes': measured['step_tensor_bytes'],
        'batch_size': measured['batch_size'], 'frames': measured['frames']}
  return costs


def run() -> None:
  for name in ('total_rounds', 'evaluation_period', 'clients_per_round', 'batch_size'):
    flag_utils.require_positive(name, flags.FLAGS[name].value)
  flag_utils.require_positive('client_learning_rate', _CLIENT_LEARNING_RATE.value)
  if _EVALUATION_PERIOD.value > _TOTAL_ROUNDS.value:
    raise flag_utils.FlagError(f'--evaluation_period={_EVALUATION_PERIOD.value} is above '
                               f'--total_rounds={_TOTAL_ROUNDS.value}')
  try:
    specs = experiments.plan_runs(_TOTAL_ROUNDS.value, _MODELS.value)
  except ValueError as e:
    raise flag_utils.FlagError(str(e)) from None
  unknown = sorted(set(_ONLY.value) - {s.key for s in specs})
  if unknown:
    raise flag_utils.FlagError(f'--only: {", ".join(unknown)} not among the runs of --models; '
                               f'known: {", ".join(s.key for s in specs)}')
  if _ONLY.value:
    specs = [s for s in specs if s.key in _ONLY.value]
  hashes = {model: _check_model(model) for model in _MODELS.value}
  try:  # The corpus (generated if absent) is part of what the results depend on.
    tasks.ensure_domain(flag_utils.resolve_path(_DATA_DIR.value), corpus.MAIN, _SEED.value)
  except (OSError, ValueError, RuntimeError) as e:
    raise flag_utils.FlagError(f'--data_dir={_DATA_DIR.value}: {e}') from None
  output_dir = flag_utils.ensure_writable_dir('output_dir',
                                              flag_utils.resolve_path(_OUTPUT_DIR.value))
  settings = {
      'initial_model_dir': _INITIAL_MODEL_DIR.value, 'wide_model_dir': _WIDE_MODEL_DIR.value,
      'data_dir': _DATA_DIR.value, 'total_rounds': _TOTAL_ROUNDS.value,
      'evaluation_period': _EVALUATION_PERIOD.value,
      'clients_per_round': _CLIENTS_PER_ROUND.value, 'batch_size': _BATCH_SIZE.value,
      'client_learning_rate': _CLIENT_LEARNING_RATE.value, 'seed': _SEED.value,
      'corpus': experiment_runs.basis('', _DATA_DIR.value)['corpus']}
  try:
    store = common.ResultStore(os.path.join(output_dir, 'results.json'), settings)
  except ValueError as e:
    raise flag_utils.FlagError(f'--output_dir={_OUTPUT_DIR.value}: {e}') from None
  # Results of other starting weights are not comparable: refuse them rather than mix them.
  stored_hashes = store.get('model_hashes') or {}
  changed = [m for m in hashes if m in stored_hashes and stored_hashes[m] != hashes[m]]
  if changed:
    raise flag_utils.FlagError(f'--output_dir={_OUTPUT_DIR.value} holds results of other '
                               f'{", ".join(changed)} weights; use another --output_dir')
  store.put('model_hashes', {**stored_hashes, **hashes})
  started = time.monotonic()
  domain = corpus.domain(corpus.MAIN)
  initial = store.get('initial') or {'splits': {'dev': domain.dev_split,
                                                'test': domain.test_split}}
  for model in _MODELS.value:
    if model not in initial and not _REPORT_ONLY.value:
      task, weights = experiment_runs.load_speech_task(
          _model_dirs()[model], _DATA_DIR.value, _BATCH_SIZE.value, _SEED.value,
          '' if model == 'tiny' else model)
      rates = task.transcription_eval(weights, task.model_config)
      initial[model] = {split: dict(r.as_dict(), utterances=r.utterances.as_dict())
                        for split, r in rates.items()}
      store.put('initial', initial)
  measured_costs = store.get('zerofl_step_costs') or {}
  if (any(s.algorithm == 'zerofl' for s in specs) and not _REPORT_ONLY.value
      and not all(f'{p:g}' in measured_costs for p in experiments.step_cost_sparsities())):
    print('measuring the ZeroFL client step (FLOPs, time, tensor memory) ...', flush=True)
    model_config = checkpoint.load_config(
        flag_utils.resolve_path(_INITIAL_MODEL_DIR.value))['model']
    store.put('zerofl_step_costs', zerofl_step_costs(model_config))
  pending = [s for s in specs if not experiment_runs.is_current(s, store.get(s.key))]
  print(f'{len(specs)} federated runs, {len(specs) - len(pending)} already done; '
        f'{_TOTAL_ROUNDS.value} rounds x {_CLIENTS_PER_ROUND.value} clients each', flush=True)
  hparams = algorithms.Hyperparameters(
      client_optimizer='adam', client_learning_rate=_CLIENT_LEARNING_RATE.value,
      server_optimizer='sgd', server_learning_rate=1.0)

  def run_one(spec: common.RunSpec, state_dir: str):
    options = spec.option_dict
    model = options.get('model', 'tiny')
    return experiment_runs.run_in_subprocess(experiment_runs.RunJob(
        key=spec.key, algorithm=spec.algorithm, options=experiments.algorithm_options(spec),
        hparams=dataclasses.asdict(hparams), initial_model_dir=_model_dirs()[model],
        data_dir=_DATA_DIR.value, batch_size=_BATCH_SIZE.value, seed=_SEED.value,
        sampler_seed=_SEED.value + options.get('sampler_seed', 0),
        clients_per_round=_CLIENTS_PER_ROUND.value, total_rounds=_TOTAL_ROUNDS.value,
        state_dir=state_dir, log_dir=output_dir, model='' if model == 'tiny' else model,
        evaluation_period=_EVALUATION_PERIOD.value,
        select_from_round=options.get('select_from_round', 1)), timeout=12 * 3600)

  def write_report():
    settings_for_report = dict(
        settings, command=' '.join(['bazel run //tff_programs:benchmark_methods --'] + [
            a for a in sys.argv[1:] if not a.startswith('--report_only')]),
        machine=f'{os.cpu_count()} CPU cores',
        missing_runs=[s.key for s in experiments.plan_runs(_TOTAL_ROUNDS.value, _MODELS.value)
                      if not experiment_runs.is_current(s, store.get(s.key))])
    # Rendering and figures leave out stored results that are not current (`current`).
    results = dict(store.data['results'], total_rounds=_TOTAL_ROUNDS.value)
    figures = experiments.plot(results, output_dir)
    report = experiments.render_report(results, settings_for_report, figures)
    with open(os.path.join(output_dir, 'report.md'), 'w') as f:
      f.write(report)
    return report

  if not _REPORT_ONLY.value:
    experiment_runs.run_pending(specs, store, run_one,
                                os.path.join(output_dir, 'program_states'),
                                after_each=write_report)
  report = write_report()
  print(f'\n{report}\nreport: {os.path.join(output_dir, "report.md")} '
        f'({(time.monotonic() - started) / 60:.1f} min this invocation)', flush=True)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
