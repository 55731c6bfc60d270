"""OMC and FedAQT experiments on the embedded corpus: one run each, one pretrained model.

  bazel run //tff_programs:benchmark_compression -- --output_dir=runs/compression_experiments

Runs (see fl_compression/benchmarks/compression_experiments.py): OMC test WER against the float
format, OMC variants at 11 bits, FedAQT at 8/6/4 bits (FedAvg and FedSGD), run-to-run noise
from a second client-sampling seed, and costs against FedAvg on the same clients; then the
round time of FedAvg, OMC 11-bit and FedAQT 8-bit side by side in one process
(`--timing_rounds`), the client traffic of larger configurations sized from the processes'
types (`--traffic_models`), and the client-step memory of `--memory_model`.

Writes `results.json` after every run (a killed benchmark started again skips what is done and
resumes an unfinished run from its last round), `report.md` and a PNG figure.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import dataclasses
import sys
import time

from absl import app
from absl import flags

from fl_compression.benchmarks import client_step
from fl_compression.benchmarks import compression_experiments as experiments
from fl_compression.benchmarks import pruning_experiments as common
from fl_compression.learning import algorithms
from fl_compression.models import asr
from tff_programs import experiment_runs
from tff_programs import flag_utils
from tff_programs import program_main

_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'runs/compression_experiments',
                                  'Report directory.')
_DATA_DIR = flags.DEFINE_string('data_dir', 'data/embedded_corpus',
                                'Embedded corpus (generated if missing) or LibriSpeech layout.')
_INITIAL_MODEL_DIR = flags.DEFINE_string(
    'initial_model_dir', 'checkpoints/conformer_ctc_tiny', 'The pretrained dense model.')
_EXPERIMENTS = flags.DEFINE_list('experiments', list(experiments.EXPERIMENTS),
                                 f'Subset of {", ".join(experiments.EXPERIMENTS)}.')
_TOTAL_ROUNDS = flags.DEFINE_integer('total_rounds', 6, 'Rounds of every federated run.')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 4, 'Speakers per round.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Client batch size.')
_CLIENT_LEARNING_RATE = flags.DEFINE_float('client_learning_rate', 2e-4, 'Client Adam rate.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of client sampling and augmentation.')
_TIMING_ROUNDS = flags.DEFINE_integer(
    'timing_rounds', 12, 'Timed rounds of the side-by-side round timing (FedAvg, OMC 11-bit and '
    'FedAQT 8-bit interleaved in one process on the same clients; 0: skip).')
_TRAFFIC_MODELS = flags.DEFINE_list(
    'traffic_models', ['tiny', 'conformer_s', 'conformer_m', 'conformer_l'],
    'Configurations whose client traffic (OMC and FedAQT against FedAvg) is sized from the '
    'types of what the processes send (empty: skip).')
_MEMORY_MODEL = flags.DEFINE_string(
    'memory_model', 'conformer_l', 'Configuration of the client-step memory comparison '
    '(dense against the decompress-on-use OMC and FedAQT steps; empty: skip).')
_MEMORY_BATCH = flags.DEFINE_integer('memory_batch_size', 4, 'Utterances in that step.')
_MEMORY_SMALL_BATCH = flags.DEFINE_integer(
    'memory_small_batch_size', 1, 'The same comparison again with this many utterances per '
    'step, where activations weigh less next to the parameters (0: skip it).')
_MEMORY_SECONDS = flags.DEFINE_float('memory_seconds', 4.0, 'Audio seconds per utterance.')
_MEMORY_REMAT = flags.DEFINE_bool(
    'memory_remat', True, 'The batch --memory_batch_size comparison again with every step '
    'rematerializing the Conformer subsampling and blocks (activations recomputed in the '
    'backward pass instead of kept).')
_REPORT_ONLY = flags.DEFINE_bool(
    'report_only', False, 'Write the report from the stored results without running anything.')


def _hparams(spec: common.RunSpec) -> algorithms.Hyperparameters:
  rate = _CLIENT_LEARNING_RATE.value
  if spec.option_dict.get('variant') == 'fedsgd':
    # One gradient per client and round: the server's optimizer takes the step.
    return algorithms.Hyperparameters(client_optimizer='sgd', client_learning_rate=rate,
                                      server_optimizer='adam', server_learning_rate=rate)
  return algorithms.Hyperparameters(client_optimizer='adam', client_learning_rate=rate,
                                    server_optimizer='sgd', server_learning_rate=1.0)


def _round_timing(store: common.ResultStore, job_for) -> None:
  """The side-by-side round timing, stored under `round_timing` (kept while its runs and
  number of rounds are unchanged)."""
  stored = store.get('round_timing')
  if (stored and stored.get('keys') == list(experiments.TIMED)
      and stored.get('rounds') == _TIMING_ROUNDS.value):
    return
  timing = experiment_runs.time_in_subprocess(job_for(experiments.timing_specs()))
  store.put('round_timing', timing)
  for key, ratio in experiments.timing_ratios(timing).items():
    print(f'  round timing {key:<20} median {ratio["median_seconds"]:5.2f} s, '
          f'{ratio["median_paired_ratio"]:.3f}x FedAvg (paired median)', flush=True)


def _memory(model_name: str, batch_size: int, key: str, store: common.ResultStore,
            rematerialize: bool = False) -> None:
  """The client-step memory comparison at `batch_size`, one fresh process per variant, stored
  under `key` as it goes."""
  config = asr.named_config(model_name)
  stored = store.get(key) or {}
  measured = dict(stored) if stored.get('model') == model_name else {'model': model_name}
  for name, compression in experiments.MEMORY_VARIANTS:
    if client_step.is_current(measured.get(name), batch_size=batch_size,
                              seconds=_MEMORY_SECONDS.value, rematerialize=rematerialize):
      continue
    measured[name] = client_step.measure_in_subprocess(
        config, batch_size=batch_size, seconds=_MEMORY_SECONDS.value, label_length=20,
        steps=3, compression=compression, rematerialize=rematerialize)
    store.put(key, measured)
    mib = lambda field: (f'{measured[name][field] / 2**20:.0f} MiB'  # noqa: E731
                         if measured[name].get(field) is not None else 'n/a')
    print(f'  {model_name} batch {batch_size}{" rematerialized" if rematerialize else ""} '
          f'{name}: steady-state step peak: tensors '
          f'{mib("tensor_peak_bytes")}, RSS {mib("step_peak_rss_bytes")}; RSS peak with first '
          f'step {mib("peak_rss_bytes")}, step {measured[name]["step_seconds"]:.2f} s',
          flush=True)


def run() -> None:
  for name in ('total_rounds', 'clients_per_round', 'batch_size', 'memory_batch_size'):
    flag_utils.require_positive(name, flags.FLAGS[name].value)
  if _TIMING_ROUNDS.value < 0:
    raise flag_utils.FlagError(f'--timing_rounds={_TIMING_ROUNDS.value}: must be 0 (skip) or '
                               'positive')
  flag_utils.require_positive('memory_seconds', _MEMORY_SECONDS.value)
  if _MEMORY_SMALL_BATCH.value < 0:
    raise flag_utils.FlagError(f'--memory_small_batch_size={_MEMORY_SMALL_BATCH.value}: must '
                               'be 0 (skip) or positive')
  unknown = [m for m in _TRAFFIC_MODELS.value if m not in asr.NAMED_CONFIGS]
  if unknown:
    raise flag_utils.FlagError(f'--traffic_models: {", ".join(unknown)} unknown; known: '
                               f'{", ".join(asr.NAMED_CONFIGS)}')
  if _MEMORY_MODEL.value and _MEMORY_MODEL.value not in asr.NAMED_CONFIGS:
    raise flag_utils.FlagError(f'--memory_model={_MEMORY_MODEL.value} is unknown; known: '
                               f'{", ".join(asr.NAMED_CONFIGS)}')
  flag_utils.require_positive('client_learning_rate', _CLIENT_LEARNING_RATE.value)
  try:
    specs = experiments.plan_runs(_EXPERIMENTS.value)
  except ValueError as e:
    raise flag_utils.FlagError(str(e)) from None
  output_dir = flag_utils.ensure_writable_dir('output_dir',
                                              flag_utils.resolve_path(_OUTPUT_DIR.value))
  task, initial_weights = experiment_runs.load_speech_task(
      _INITIAL_MODEL_DIR.value, _DATA_DIR.value, _BATCH_SIZE.value, _SEED.value)
  settings = {
      'initial_model_dir': _INITIAL_MODEL_DIR.value, 'data_dir': _DATA_DIR.value,
      'total_rounds': _TOTAL_ROUNDS.value, 'clients_per_round': _CLIENTS_PER_ROUND.value,
      'batch_size': _BATCH_SIZE.value, 'client_learning_rate': _CLIENT_LEARNING_RATE.value,
      'seed': _SEED.value,
      **experiment_runs.basis(_INITIAL_MODEL_DIR.value, _DATA_DIR.value)}
  try:
    store = common.ResultStore(os.path.join(output_dir, 'results.json'), settings)
  except ValueError as e:
    raise flag_utils.FlagError(f'--output_dir={_OUTPUT_DIR.value}: {e}') from None
  started = time.monotonic()
  if store.get('initial') is None:
    rates = task.transcription_eval(initial_weights, task.model_config)
    store.put('initial', {split: r.as_dict() for split, r in rates.items()})
  pending = [s for s in specs if not experiment_runs.is_current(s, store.get(s.key))]
  print(f'{len(specs)} federated runs, {len(specs) - len(pending)} already done; '
        f'{_TOTAL_ROUNDS.value} rounds x {_CLIENTS_PER_ROUND.value} clients each', flush=True)

  def run_one(spec: common.RunSpec, state_dir: str):
    return experiment_runs.run_in_subprocess(experiment_runs.RunJob(
        key=spec.key, algorithm=spec.algorithm, options=spec.option_dict,
        hparams=dataclasses.asdict(_hparams(spec)), initial_model_dir=_INITIAL_MODEL_DIR.value,
        data_dir=_DATA_DIR.value, batch_size=_BATCH_SIZE.value, seed=_SEED.value,
        sampler_seed=_SEED.value + spec.option_dict.get('sampler_seed', 0),
        clients_per_round=_CLIENTS_PER_ROUND.value, total_rounds=_TOTAL_ROUNDS.value,
        state_dir=state_dir, log_dir=output_dir))

  if not _REPORT_ONLY.value:
    experiment_runs.run_pending(specs, store, run_one,
                                os.path.join(output_dir, 'program_states'))
  if not _REPORT_ONLY.value and _TIMING_ROUNDS.value:
    _round_timing(store, lambda specs: experiment_runs.TimingJob(
        runs=[{'key': s.key, 'algorithm': s.algorithm, 'options': s.option_dict,
               'hparams': dataclasses.asdict(_hparams(s))} for s in specs],
        rounds=_TIMING_ROUNDS.value, initial_model_dir=_INITIAL_MODEL_DIR.value,
        data_dir=_DATA_DIR.value, batch_size=_BATCH_SIZE.value, seed=_SEED.value,
        sampler_seed=_SEED.value, clients_per_round=_CLIENTS_PER_ROUND.value,
        log_dir=output_dir))
  if (not _REPORT_ONLY.value and _TRAFFIC_MODELS.value and
      list(store.get('traffic_by_model') or {}) != _TRAFFIC_MODELS.value):
    store.put('traffic_by_model', experiment_runs.traffic_in_subprocess(_TRAFFIC_MODELS.value))
  if not _REPORT_ONLY.value and _MEMORY_MODEL.value:
    _memory(_MEMORY_MODEL.value, _MEMORY_BATCH.value, 'memory', store)
    if _MEMORY_SMALL_BATCH.value:
      _memory(_MEMORY_MODEL.value, _MEMORY_SMALL_BATCH.value, 'memory_small_batch', store)
    if _MEMORY_REMAT.value:
      _memory(_MEMORY_MODEL.value, _MEMORY_BATCH.value, 'memory_remat', store,
              rematerialize=True)
  settings_for_report = dict(
      settings, command=' '.join(['bazel run //tff_programs:benchmark_compression --'] +
                                 [a for a in sys.argv[1:] if not a.startswith('--report_only')]),
      machine=f'{os.cpu_count()} CPU cores',
      missing_runs=[s.key for s in specs if not experiment_runs.is_current(s, store.get(s.key))])
  results = store.data['results']
  figures = experiments.plot(results, output_dir)
  report = experiments.render_report(results, settings_for_report, figures)
  with open(os.path.join(output_dir, 'report.md'), 'w') as f:
    f.write(report)
  print(f'\n{report}\nreport: {os.path.join(output_dir, "report.md")} '
        f'({(time.monotonic() - started) / 60:.1f} min this invocation)', flush=True)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
