"""The OMC and FedAQT experiments: which runs, the targets, and the report.

Every run starts from the same pretrained dense model, like the pruning experiments
(`pruning_experiments.py`, whose `RunSpec`, `ResultStore` and formatting this reuses):

- OMC: test WER against the float format (19, 16, 13, 11 and 8 bits, every client compressing
  every weight matrix), and at 11 bits: partial variable quantization (90% of the matrices per
  client), no per-variable transform, and all variables (vectors too).
- FedAQT: 8, 6 and 4 bits, FedAvg and FedSGD variants.
- Rounding: the clients' recompression after each local step rounded stochastically instead
  of to nearest, for OMC at 11 and 8 bits and FedAQT at 8 bits (a step smaller than half a
  quantum always rounds back under round-to-nearest).
- Noise: FedAvg and OMC 16-bit again with another client-sampling seed, and the two runs of
  the 11-bit partial against 13-bit comparison (whose WERs are a few words apart) too.
- Costs against FedAvg from the same runs: bytes down and up per client, parameter bytes a
  client holds, steady-state round time.
- Round time side by side (`TIMED`): FedAvg, OMC 11-bit and FedAQT 8-bit in one process,
  their rounds interleaved on the same clients (`experiment_runs.interleaved_round_times`);
  separate runs' round times differ by several percent between two FedAvg runs alone.
"""

import os
from typing import Any, Optional, Sequence

import numpy as np

from fl_compression.benchmarks import pruning_experiments as common

EXPERIMENTS = ('formats', 'variants', 'aqt', 'stacked', 'noise', 'rounding')
ROUNDING_FORMATS = (('S1E4M6', 11), ('S1E4M3', 8))
FORMATS = (('S1E8M10', 19), ('S1E5M10', 16), ('S1E5M7', 13), ('S1E4M6', 11), ('S1E4M3', 8))
AQT_BITS = (8, 6, 4)
PARTIAL_FRACTION = 0.9
NOISE_SEED = 1
STACKED_SPARSITY = 0.3
STACKED_FORMAT = 'S1E4M6'
# Client-sampling seeds of the 11-bit partial against 13-bit all-variable comparison.
COMPARISON_SEEDS = (0, NOISE_SEED)
DENSE = common.DENSE
SPLITS = common.SPLITS


def omc_key(fmt: str, variant: str = '', seed: int = 0) -> str:
  return f'omc/{fmt}' + (f'/{variant}' if variant else '') + (f'/seed{seed}' if seed else '')


def aqt_key(bits: int, variant: str, rounding: str = 'nearest') -> str:
  return f'fedaqt/{bits}/{variant}' + ('' if rounding == 'nearest' else f'/{rounding}')


def partial_key(rounding: str = 'nearest', seed: int = 0) -> str:
  """The 11-bit partial run (`PARTIAL_FRACTION` of the matrices per client)."""
  return omc_key('S1E4M6', 'partial' + ('' if rounding == 'nearest' else f'/{rounding}'), seed)


def comparison_key(rounding: str = 'nearest', seed: int = 0) -> str:
  """The 13-bit all-variable run the partial one is compared with."""
  return omc_key('S1E5M7', '' if rounding == 'nearest' else rounding, seed)


def pruned_key(compressed: bool) -> str:
  return (f'fp+omc/column/{STACKED_SPARSITY:g}/{STACKED_FORMAT}' if compressed
          else f'fp/column/{STACKED_SPARSITY:g}')


def dense_key(seed: int = 0) -> str:
  return DENSE + (f'/seed{seed}' if seed else '')


def plan_runs(experiments: Sequence[str]) -> list[common.RunSpec]:
  """The federated runs, each once, ordered so the targets' runs come first. An option
  `sampler_seed` is read by the program (the client-sampling seed), not by the algorithm."""
  unknown = sorted(set(experiments) - set(EXPERIMENTS))
  if unknown:
    raise ValueError(f'--experiments: unknown {", ".join(unknown)}; known: '
                     f'{", ".join(EXPERIMENTS)}')
  runs: dict[str, common.RunSpec] = {}

  def add(key, algorithm, **options):
    runs.setdefault(key, common.RunSpec(key, algorithm, tuple(sorted(options.items()))))

  add(dense_key(), 'fedavg')
  if 'formats' in experiments or 'variants' in experiments:
    for fmt, _ in FORMATS:
      if 'formats' in experiments or fmt in ('S1E4M6', 'S1E5M7'):
        add(omc_key(fmt), 'omc', format=fmt)
  if 'aqt' in experiments:
    add(aqt_key(8, 'fedavg'), 'fedaqt', bits=8, variant='fedavg')
  if 'rounding' in experiments:
    add(aqt_key(8, 'fedavg', 'stochastic'), 'fedaqt', bits=8, variant='fedavg',
        rounding='stochastic')
    for fmt, _ in ROUNDING_FORMATS:
      add(omc_key(fmt, 'stochastic'), 'omc', format=fmt, rounding='stochastic')
    # 11-bit partial against 13-bit all-variable with stochastic requantization in both.
    for seed in COMPARISON_SEEDS:
      sampler = {'sampler_seed': seed} if seed else {}
      add(partial_key('stochastic', seed), 'omc', format='S1E4M6', fraction=PARTIAL_FRACTION,
          rounding='stochastic', **sampler)
      add(comparison_key('stochastic', seed), 'omc', format='S1E5M7',
          rounding='stochastic', **sampler)
  if 'variants' in experiments:
    add(partial_key(), 'omc', format='S1E4M6', fraction=PARTIAL_FRACTION)
    add(omc_key('S1E4M6', 'no_transform'), 'omc', format='S1E4M6', transform=False)
    add(omc_key('S1E4M6', 'all_variables'), 'omc', format='S1E4M6', scope='all')
  if 'stacked' in experiments:
    add(pruned_key(True), 'fp', sparsity=STACKED_SPARSITY, pattern='column', compress='omc',
        format=STACKED_FORMAT)
    add(pruned_key(False), 'fp', sparsity=STACKED_SPARSITY, pattern='column')
  if 'noise' in experiments:
    add(dense_key(NOISE_SEED), 'fedavg', sampler_seed=NOISE_SEED)
    add(omc_key('S1E5M10', seed=NOISE_SEED), 'omc', format='S1E5M10', sampler_seed=NOISE_SEED)
    add(omc_key('S1E5M10'), 'omc', format='S1E5M10')
    add(partial_key(seed=NOISE_SEED), 'omc', format='S1E4M6',
        fraction=PARTIAL_FRACTION, sampler_seed=NOISE_SEED)
    add(comparison_key(seed=NOISE_SEED), 'omc', format='S1E5M7', sampler_seed=NOISE_SEED)
  if 'aqt' in experiments:
    for bits in AQT_BITS:
      for variant in ('fedavg', 'fedsgd'):
        add(aqt_key(bits, variant), 'fedaqt', bits=bits, variant=variant)
  return list(runs.values())


def _run_ratio(results, key, field, base_key=DENSE) -> Optional[float]:
  run, base = results.get(key), results.get(base_key)
  if not run or not base or run.get(field) is None or not base.get(field):
    return None
  return run[field] / base[field]


def held_bytes(run: dict[str, Any]) -> Optional[float]:
  """Parameter bytes a client holds: the measured compressed size, or the float model's."""
  if run.get('client_held_parameter_bytes') is not None:
    return run['client_held_parameter_bytes']
  return run.get('model_parameter_bytes')


def cost_ratios(results: dict[str, Any], key: str) -> dict[str, Optional[float]]:
  run, base = results.get(key), results.get(DENSE)
  if not run or not base:
    return {}
  wire = lambda r: r['client_bytes_down'] + r['client_bytes_up']  # noqa: E731
  return {
      'client_bytes_down': _run_ratio(results, key, 'client_bytes_down'),
      'client_bytes_up': _run_ratio(results, key, 'client_bytes_up'),
      'client_bytes': wire(run) / wire(base),
      'held_parameter_bytes': held_bytes(run) / held_bytes(base),
      'round_seconds': _run_ratio(results, key, 'mean_round_seconds'),
  }


def summary_checks(results: dict[str, Any]) -> list[tuple[str, str, str]]:
  """The issue's numbers to reach: (target, measured, met/missed/n/a)."""
  rows = []
  dense = common.wer(results, DENSE)
  omc16 = common.paired(results, omc_key('S1E5M10'))
  if omc16 is not None:
    low, high = omc16.relative_interval
    rows.append(('OMC 16-bit: WER equal to float32 (the interval of the difference includes 0)',
                 f'{common.pct(omc16.system_wer)} vs {common.pct(omc16.baseline_wer)}: '
                 f'{omc16.describe_relative()}', common.check(low <= 0 <= high)))
  rows += _partial_check(results, 'nearest') + _partial_check(results, 'stochastic')
  ratios = cost_ratios(results, omc_key('S1E4M6'))
  timing = results.get('round_timing')
  for name, label, limit in (('held_parameter_bytes', 'client parameter bytes', 0.40),
                             ('client_bytes', 'wire bytes (down + up)', 0.35)):
    if ratios.get(name) is not None:
      rows.append((f'OMC 11-bit: {label} at most {limit}x FedAvg\'s', f'{ratios[name]:.3f}x',
                   common.check(ratios[name] <= limit)))
  if ratios.get('round_seconds') is not None:
    # Separate runs ran at other times (other load, possibly older code): with a side-by-side
    # timing, that one (below) is the measure.
    rows.append(('OMC 11-bit: round time (separate runs, mean of their steady rounds) at most '
                 '1.15x FedAvg\'s', f'{ratios["round_seconds"]:.3f}x',
                 'n/a (judged side by side)' if timing
                 else common.check(ratios['round_seconds'] <= 1.15)))
  by_model = results.get('traffic_by_model') or {}
  larger = {m: e for m, e in by_model.items() if m != 'tiny'}
  if larger:
    values = {m: wire_ratio(e, 'omc_11') for m, e in larger.items()}
    rows.append(('OMC 11-bit: wire bytes (down + up) at most 0.35x FedAvg\'s at the Conformer '
                 'sizes (the same messages sized from their types, not trained here)',
                 ', '.join(f'{m} {v:.3f}x' for m, v in values.items()),
                 common.check(max(values.values()) <= 0.35)))
  omc11 = timing_ratios(timing).get(omc_key('S1E4M6')) if timing else None
  if omc11:
    rows.append(('OMC 11-bit: round time at most 1.15x FedAvg\'s (interleaved rounds on the '
                 f'same clients, median of {timing["rounds"]} paired ratios)',
                 f'{omc11["median_paired_ratio"]:.3f}x (ratio of totals '
                 f'{omc11["ratio_of_totals"]:.3f}x)',
                 common.check(omc11['median_paired_ratio'] <= 1.15)))
  for rounding in ('nearest', 'stochastic'):
    key = aqt_key(8, 'fedavg', rounding)
    if results.get(key) and dense is not None:
      rows.append((f'FedAQT 8-bit ({rounding} requantization): WER within 10% relative of '
                   'float32', *common.within(results, key, DENSE, 0.10)))
  down = cost_ratios(results, aqt_key(8, 'fedavg')).get('client_bytes_down')
  if down is not None:
    rows.append(('FedAQT 8-bit: downlink bytes at most 0.30x', f'{down:.3f}x',
                 common.check(down <= 0.30)))
  memory = results.get('memory')
  if memory and all(memory.get(k) for k in ('dense', 'fedaqt_8')):
    remat = results.get('memory_remat')
    measures = [(memory, None, 'tensor_peak_bytes', 'tensor memory: parameters, activations, '
                 'gradients, temporaries'),
                (results.get('memory_small_batch'), None, 'tensor_peak_bytes', 'tensor memory, '
                 'smaller batch'),
                (memory, None, 'step_peak_rss_bytes', 'process RSS, with the TF runtime and its '
                 'step graph'),
                (remat, None, 'tensor_peak_bytes', 'tensor memory, both steps rematerializing '
                 'the Conformer blocks'),
                (remat, memory, 'tensor_peak_bytes', 'tensor memory, FedAQT rematerializing, '
                 'dense not')]
    for entry, base, field, what in measures:
      if not entry or not all(entry.get(k) for k in ('dense', 'fedaqt_8')):
        continue
      ratio = memory_ratio(entry, 'fedaqt_8', field, base)
      rows.append((f'FedAQT 8-bit: {entry["model"]} client step peak memory at most 0.6x dense '
                   f'({what}; batch {entry["dense"]["batch_size"]})',
                   f'{ratio:.3f}x' if ratio is not None else 'n/a',
                   common.check(ratio <= 0.6) if ratio is not None else 'n/a'))
  else:
    rows.append(('FedAQT 8-bit: client step peak memory (`--memory_model`) at most 0.6x dense',
                 'not measured yet', 'n/a'))
  return rows


def _partial_check(results: dict[str, Any], rounding: str) -> list[tuple[str, str, str]]:
  """11-bit partial against 13-bit all-variable, both requantizing with `rounding`, on each
  client-sampling seed both have: met when no seed's interval shows the partial run worse
  (its lower end at most 0)."""
  found = [(seed, common.paired(results, partial_key(rounding, seed),
                                comparison_key(rounding, seed)))
           for seed in COMPARISON_SEEDS
           if results.get(partial_key(rounding, seed))
           and results.get(comparison_key(rounding, seed))]
  if not found:
    return []
  both = '' if rounding == 'nearest' else f', {rounding} requantization in both'
  title = (f'OMC 11-bit partial: WER no worse than 13-bit all-variable{both} (client-sampling '
           f'seed{"s" if len(found) > 1 else ""} {", ".join(str(seed) for seed, _ in found)})')
  if any(c is None for _, c in found):
    return [(title, 'no per-utterance errors stored', 'n/a (no intervals)')]
  measured = '; '.join(f'seed {seed}: {common.pct(c.system_wer)} vs '
                       f'{common.pct(c.baseline_wer)}, {c.describe_relative()}'
                       for seed, c in found)
  return [(title, measured, common.check(all(c.not_worse() for _, c in found)))]


def wire_ratio(entry: dict[str, Any], setting: str, direction: str = 'both') -> float:
  """A `traffic.measure` entry's client bytes of `setting` over FedAvg's: 'down', 'up' or
  'both' (down + up)."""
  fields = (['client_bytes_down', 'client_bytes_up'] if direction == 'both'
            else [f'client_bytes_{direction}'])
  return sum(entry[setting][f] for f in fields) / sum(entry['fedavg'][f] for f in fields)


def _traffic_section(by_model: dict[str, Any]) -> list[str]:
  lines = ['', '## Client traffic by model size', '',
           'Bytes one client receives and sends per round against FedAvg\'s, for each model '
           'configuration: the same messages the processes send, sized from their TFF types '
           '(`fl_compression/benchmarks/traffic.py`; for `tiny` they equal the runs\' measured '
           'bytes). Variables of rank < 2 (biases, norms) stay float32, so their share of the '
           'parameters sets how far a format\'s ratio lies above bits/32.', '',
           '| model | parameters | in vectors | OMC S1E4M6 down + up | OMC S1E5M10 down + up | '
           'FedAQT int8 down |', '|---|---|---|---|---|---|']
  for model, e in by_model.items():
    lines.append(f'| {model} | {e["parameters"]:,} | '
                 f'{100 * e["vector_parameters"] / e["parameters"]:.2f}% | '
                 f'{wire_ratio(e, "omc_11"):.4f}x | {wire_ratio(e, "omc_16"):.4f}x | '
                 f'{wire_ratio(e, "fedaqt_8", "down"):.4f}x |')
  return lines


# The side-by-side round timing: FedAvg first (the base), then the compressed runs.
TIMED = (DENSE, omc_key('S1E4M6'), aqt_key(8, 'fedavg'))


def timing_specs() -> list[common.RunSpec]:
  """The runs `TIMED` names, with the options of their federated runs."""
  by_key = {s.key: s for s in plan_runs(EXPERIMENTS)}
  return [by_key[key] for key in TIMED]


def timing_ratios(timing: dict[str, Any]) -> dict[str, dict[str, float]]:
  """Per timed run against the first (FedAvg): the median over rounds of the paired ratio
  (the same round's clients, run back to back), the ratio of total seconds, and the median
  round seconds."""
  times = timing['round_seconds']
  base = times[timing['keys'][0]]
  out = {}
  for key in timing['keys']:
    mine = times[key]
    out[key] = {'median_paired_ratio': float(np.median([a / b for a, b in zip(mine, base)])),
                'ratio_of_totals': float(sum(mine) / sum(base)),
                'median_seconds': float(np.median(mine))}
  return out


def _timing_section(timing: dict[str, Any]) -> list[str]:
  labels = {DENSE: 'FedAvg (float32)', omc_key('S1E4M6'): 'OMC S1E4M6 (11-bit)',
            aqt_key(8, 'fedavg'): 'FedAQT int8 (FedAvg)'}
  lines = ['', '## Round time side by side', '',
           f'One process ran the runs below from the same pretrained model, one untimed round '
           f'each, then {timing["rounds"]} timed rounds in which every run trained the same '
           'sampled clients back to back (order alternating between rounds). *Paired ratio*: '
           'a round\'s time over FedAvg\'s on the same clients; the median over rounds is the '
           'measure, the ratio of totals a check on it.', '',
           '| run | median round, s | median paired ratio | ratio of totals | rounds, s |',
           '|---|---|---|---|---|']
  for key, r in timing_ratios(timing).items():
    rounds = ', '.join(f'{t:.1f}' for t in timing['round_seconds'][key])
    lines.append(f'| {labels.get(key, key)} | {r["median_seconds"]:.2f} | '
                 f'{r["median_paired_ratio"]:.3f}x | {r["ratio_of_totals"]:.3f}x | {rounds} |')
  return lines


# The client-step memory comparison: name -> `client_step` compression setting.
MEMORY_VARIANTS = (('dense', None),
                   ('omc_16', {'codec': 'omc', 'format': 'S1E5M10'}),
                   ('omc_11', {'codec': 'omc', 'format': 'S1E4M6'}),
                   ('fedaqt_8', {'codec': 'aqt', 'bits': 8}))
_MEMORY_LABELS = {'dense': 'dense float32', 'omc_16': 'OMC S1E5M10', 'omc_11': 'OMC S1E4M6',
                  'fedaqt_8': 'FedAQT int8'}


def memory_ratio(memory: dict[str, Any], name: str, field: str,
                 base_memory: Optional[dict[str, Any]] = None) -> Optional[float]:
  """`field` of variant `name` over dense's, from `base_memory` if given (another comparison
  of the same model and batch) or else from the same comparison."""
  value, base = memory[name].get(field), (base_memory or memory)['dense'].get(field)
  return value / base if value and base else None


def _memory_section(memory: dict[str, Any]) -> list[str]:
  names = [n for n, _ in MEMORY_VARIANTS if memory.get(n)]
  dense = memory['dense']
  remat = (', Conformer subsampling and blocks rematerialized (recomputed in the backward '
           'pass)' if dense.get('rematerialize') else '')
  lines = ['', f'## Memory of one client training step of `{memory["model"]}`, batch '
           f'{dense["batch_size"]}{remat}', '',
           f'Each column is a fresh process (`fl_compression/benchmarks/client_step.py`): batch '
           f'{dense["batch_size"]} x {dense["frames"]} frames, {dense["label_length"]} tokens, '
           'plain SGD. The compressed columns run the decompress-on-use step '
           '(`fl_compression/compression/on_the_fly.py`): dense kernels held packed, decoded '
           'before use and again in the backward pass, updated and recompressed there; FedAQT '
           'also keeps int8 layer inputs for the backward pass. Two measures of the same '
           'steps: *tensor memory* is the parameters held plus the peak of the tensors the step '
           'allocates (TF\'s CPU allocator, `tf.config.experimental.get_memory_info`: '
           'activations kept for the backward pass, gradients, temporaries), the memory a '
           'compiled step on a device (its weights and arena) needs; *RSS* is the whole '
           'process, which also holds the TF runtime and the step\'s graph and executor '
           'state (the compressed steps run their codec as one XLA-compiled function per '
           'kernel shape). Both peaks are of the steady-state steps after the first (the first step traces and optimizes the graph; after it the C '
           'heap is trimmed and the high-water marks are reset); *peak with first step* '
           'includes tracing. Ratios are against dense.', '',
           '| | ' + ' | '.join(_MEMORY_LABELS[n] for n in names) + ' |',
           '|---|' + '---|' * len(names)]
  mib = lambda v: f'{v / 2**20:,.1f}'  # noqa: E731
  for label, field, fmt in (
      ('parameters', 'parameters', lambda v: f'{int(v):,}'),
      ('parameter MiB held', 'held_parameter_bytes', mib),
      ('step tensors (activations, gradients, temporaries), MiB', 'step_tensor_bytes', mib),
      ('tensor memory: held + step tensors, MiB', 'tensor_peak_bytes', mib),
      ('RSS between steps, MiB', 'rss_rest_bytes', mib),
      ('RSS peak of a step, MiB', 'step_peak_rss_bytes', mib),
      ('peak with first step, MiB', 'peak_rss_bytes', mib),
      ('step time, s (median)', 'step_seconds', lambda v: f'{v:.2f}')):
    cells = []
    for n in names:
      value = memory[n].get(field)
      if value is None:
        cells.append('n/a')
        continue
      ratio = memory_ratio(memory, n, field)
      cells.append(fmt(value) + (f' ({ratio:.2f}x)' if n != 'dense' and ratio else ''))
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  return lines


def render_report(results: dict[str, Any], settings: dict[str, Any], figures: Sequence[str]
                  ) -> str:
  pct, wer = common.pct, common.wer
  lines = ['# OMC and FedAQT experiments', '',
           f'Command: `{settings["command"]}`  ', f'Machine: {settings["machine"]}.', '',
           f'Every run starts from `{settings["initial_model_dir"]}` and trains '
           f'{settings["total_rounds"]} rounds x {settings["clients_per_round"]} speakers '
           f'(batch {settings["batch_size"]}, client Adam {settings["client_learning_rate"]:g}, '
           'server SGD 1.0; FedSGD runs: server Adam at the client rate, one gradient per '
           'client and round). WER: greedy CTC on the held-out-speaker test split and on dev.', '']
  initial = results.get('initial')
  if initial:
    lines.append(f'Starting model: test WER {pct(initial[SPLITS["test"]]["wer"])}, dev WER '
                 f'{pct(initial[SPLITS["dev"]]["wer"])}.')
    lines.append('')
  lines += common.revision_note(results)
  lines += ['## Numbers to reach', '', common.INTERVAL_RULE, '', '| target | measured | |',
            '|---|---|---|']
  lines += [f'| {t} | {m} | {c} |' for t, m, c in summary_checks(results)]
  if settings.get('missing_runs'):
    lines += ['', f'Runs not done yet: {", ".join(settings["missing_runs"])} (the same command '
              'resumes).']

  def row(label, key, bits):
    run = results.get(key)
    if not run:
      return None
    ratios = cost_ratios(results, key)
    fmt = lambda v: '' if v is None else f'{v:.2f}x'  # noqa: E731
    difference = common.relative(results, key) if key != DENSE else ''
    return (f'| {label} | {bits} | {pct(wer(results, key))} | {difference} | '
            f'{pct(wer(results, key, "dev"))} | '
            f'{fmt(ratios.get("client_bytes_down"))} | {fmt(ratios.get("client_bytes_up"))} | '
            f'{fmt(ratios.get("held_parameter_bytes"))} | {fmt(ratios.get("round_seconds"))} |')

  header = ['| run | bits | test WER | vs float32 [95% CI] | dev WER | bytes down | bytes up | '
            'client parameter bytes | round time |', '|---|---|---|---|---|---|---|---|---|']
  sections = [
      ('OMC: WER against the float format (every client compresses every weight matrix)',
       [('float32 (FedAvg)', DENSE, 32)] + [(fmt, omc_key(fmt), bits) for fmt, bits in FORMATS]),
      ('OMC at 11 bits (S1E4M6): variants',
       [('all weight matrices', omc_key('S1E4M6'), 11),
        (f'partial ({PARTIAL_FRACTION:.0%} of the matrices per client)',
         partial_key(), 11),
        ('no per-variable transform', omc_key('S1E4M6', 'no_transform'), 11),
        ('all variables (vectors too)', omc_key('S1E4M6', 'all_variables'), 11)]),
      ('FedAQT', [(f'{variant}', aqt_key(bits, variant), bits)
                  for bits in AQT_BITS for variant in ('fedavg', 'fedsgd')]),
      ('Rounding of the clients\' recompression after each local step',
       [row for (fmt, bits) in ROUNDING_FORMATS for row in (
           (f'OMC {fmt}, nearest even', omc_key(fmt), bits),
           (f'OMC {fmt}, stochastic', omc_key(fmt, 'stochastic'), bits))] +
       [row for rounding in ('nearest', 'stochastic') for row in (
           (f'OMC S1E4M6 partial ({PARTIAL_FRACTION:.0%}), {rounding}', partial_key(rounding),
            11),
           (f'OMC S1E5M7, {rounding}', comparison_key(rounding), 13))] +
       [('FedAQT int8 (FedAvg), nearest', aqt_key(8, 'fedavg'), 8),
        ('FedAQT int8 (FedAvg), stochastic', aqt_key(8, 'fedavg', 'stochastic'), 8)]),
      (f'Stacked: federated pruning ({STACKED_SPARSITY:.0%} column, weight magnitude) with OMC '
       f'{STACKED_FORMAT}',
       [('pruning alone', pruned_key(False), 32),
        (f'pruning + OMC {STACKED_FORMAT}', pruned_key(True), 11)]),
      ('Run-to-run noise (client-sampling seed 1)',
       [('float32 (FedAvg), seed 1', dense_key(NOISE_SEED), 32),
        ('S1E5M10, seed 1', omc_key('S1E5M10', seed=NOISE_SEED), 16),
        ('S1E5M7, seed 1', comparison_key(seed=NOISE_SEED), 13),
        (f'S1E4M6 partial ({PARTIAL_FRACTION:.0%}), seed 1',
         partial_key(seed=NOISE_SEED), 11),
        ('S1E5M7, stochastic, seed 1', comparison_key('stochastic', NOISE_SEED), 13),
        (f'S1E4M6 partial ({PARTIAL_FRACTION:.0%}), stochastic, seed 1',
         partial_key('stochastic', NOISE_SEED), 11)]),
  ]
  for title, entries in sections:
    body = [r for r in (row(*e) for e in entries) if r]
    if body:
      lines += ['', f'## {title}', '', 'Ratios against FedAvg (seed 0) on the same clients.', '']
      lines += header + body
  if results.get('round_timing'):
    lines += _timing_section(results['round_timing'])
  if results.get('traffic_by_model'):
    lines += _traffic_section(results['traffic_by_model'])
  for key in ('memory', 'memory_small_batch', 'memory_remat'):
    memory = results.get(key)
    if memory and memory.get('dense'):
      lines += _memory_section(memory)
  lines += ['', '## Held bytes in the learning processes', '',
            'In the federated simulation a client\'s Keras model keeps float32 variables whose '
            'values stay on the format\'s grid (recompressed after every step), so training sees '
            'exactly the compressed model; "client parameter bytes" above is the packed size '
            'the client holds between steps. The memory section measures the device-style '
            'decompress-on-use step itself.']
  for figure in figures:
    lines += ['', f'![{figure}]({figure})']
  return '\n'.join(lines) + '\n'


def plot(results: dict[str, Any], output_dir: str) -> list[str]:
  """One PNG: test WER against bits for OMC and FedAQT, with the float32 line."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  def points(keys):
    found = [(bits, common.wer(results, key)) for bits, key in keys]
    return [(bits, w) for bits, w in found if w is not None]

  series = [('OMC (all weight matrices)', '-o', points([(b, omc_key(f)) for f, b in FORMATS])),
            ('FedAQT (FedAvg)', '-s', points([(b, aqt_key(b, 'fedavg')) for b in AQT_BITS])),
            ('FedAQT (FedSGD)', ':^', points([(b, aqt_key(b, 'fedsgd')) for b in AQT_BITS]))]
  series = [s for s in series if s[2]]
  if not series:
    return []
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for label, style, points in series:
    ax.plot([b for b, _ in points], [100 * w for _, w in points], style, label=label)
  dense = common.wer(results, DENSE)
  if dense is not None:
    ax.axhline(100 * dense, color='gray', linestyle='-.', label='float32 FedAvg')
  ax.set_xlabel('bits per weight')
  ax.set_ylabel('test WER (%)')
  ax.set_title('Test WER against client weight bits')
  ax.invert_xaxis()
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(output_dir, 'wer_vs_bits.png'), dpi=110)
  plt.close(fig)
  return ['wer_vs_bits.png']
