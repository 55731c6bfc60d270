"""Every method against dense FedAvg at one equal, converged budget: runs, targets and report.

All runs start from the same pretrained model, sample the same clients each round and train
the same number of rounds, long enough for dense FedAvg to plateau on dev. Each run is
transcribed every few rounds; its result is the round with the lowest dev WER, whose test WER
is reported once and compared with dense FedAvg's on the same utterances (paired bootstrap).

Rows: federated pruning (column pattern, magnitude importance, adaptive per-layer sparsity) at
10/30/50%; federated dropout (random column units, full-size result) at the same rates; OMC
S1E4M6 partial (90% of the matrices per client, stochastic requantization); FedAQT 8-bit with
round-to-nearest and stochastic requantization; 30% pruning with OMC stacked; FedAvg with TFF's
own `tff.learning.compression_aggregator()`; dense FedAvg with a second client-sampling seed
(run-to-run noise); ZeroFL (SWAT local training, sparse uploads) at sparsity 90/95% with mask
ratios 0, 0.1 and 0.2, with zero-filled aggregation at 90%/0.2, with the sparsity ramped up over
the first third of the rounds at 90%/0.2, and SWAT with the whole update uploaded at both
sparsities. On the `wide` model (4x the parameters): dense and pruning at
30/50%.
"""

import math
import os
from typing import Any, Optional, Sequence

from fl_compression.benchmarks import pruning_experiments as common
from fl_compression.evaluation import bootstrap
from fl_compression.evaluation import error_rates
from fl_compression.evaluation import plateau as plateau_lib

MODELS = ('tiny', 'wide')
RATES = (0.1, 0.3, 0.5)
WIDE_RATES = (0.3, 0.5)
NOISE_SEED = 1
OMC_FORMAT = 'S1E4M6'
PARTIAL_FRACTION = 0.9
AQT_BITS = 8
STACKED_SPARSITY = 0.3
DENSE = 'fedavg'
ZEROFL_SPARSITIES = (0.9, 0.95)
# Lower sparsities at mask ratio 0.2: where the trade-off between uplink and WER lies on a model
# that 90% SWAT sparsity breaks (its WER rose from 3% to about 70% on `tiny`).
ZEROFL_SWEEP = (0.5, 0.7)
ZEROFL_MASK_RATIOS = (0.2, 0.1, 0.0)
# Options the program reads; the rest go to the algorithm.
PROGRAM_OPTIONS = ('sampler_seed', 'model', 'select_from_round', 'trainable_blocks')
# Plateau rule of the dense baseline on dev (pretraining's rule): over the last quarter of the
# rounds, the best dev WER improves on the best before them by less than 1%, with at least
# PLATEAU_MIN_EVALUATIONS evaluations after the cut.
PLATEAU_FRACTION = plateau_lib.FRACTION
PLATEAU_MIN_IMPROVEMENT = plateau_lib.MIN_IMPROVEMENT
PLATEAU_MIN_EVALUATIONS = 2


def phases(total_rounds: int) -> dict[str, int]:
  """Federated pruning's phases for a budget: pruning in the first twelfth of the rounds,
  mask refinement up to a quarter, fine-tuning of the reduced model for the rest (60 rounds:
  1-5, 6-15, 16-60)."""
  refine = min(total_rounds, 1 + max(1, total_rounds // 12))
  finetune = min(total_rounds, max(refine + 1, 1 + total_rounds // 4))
  return {'refine_start': refine, 'finetune_start': finetune}


def fp_key(sparsity: float, model: str = 'tiny') -> str:
  return _prefix(model) + f'fp/column/adaptive/{sparsity:g}'


def fd_key(sparsity: float) -> str:
  return f'fd/column/{sparsity:g}'


def dense_key(model: str = 'tiny', seed: int = 0) -> str:
  return _prefix(model) + DENSE + (f'/seed{seed}' if seed else '')


OMC_KEY = f'omc/{OMC_FORMAT}/partial/stochastic'
OMC_NEAREST_KEY = f'omc/{OMC_FORMAT}/partial/nearest'
STACKED_KEY = f'fp+omc/column/adaptive/{STACKED_SPARSITY:g}/{OMC_FORMAT}'
TFF_KEY = 'tff_compression'


def zerofl_key(sparsity: float, mask_ratio: float, aggregation: str = 'mean_of_senders'
               ) -> str:
  return f'zerofl/{sparsity:g}/{mask_ratio:g}' + (
      '' if aggregation == 'mean_of_senders' else f'/{aggregation}')


def zerofl_ramp_key(sparsity: float, mask_ratio: float) -> str:
  """ZeroFL whose sparsity rises to `sparsity` over the first third of the rounds."""
  return f'zerofl/{sparsity:g}/{mask_ratio:g}/ramp'


def swat_key(sparsity: float) -> str:
  """SWAT local training with the whole update uploaded (ZeroFL's comparison point)."""
  return f'swat/{sparsity:g}'


def aqt_key(rounding: str) -> str:
  return f'fedaqt/{AQT_BITS}/{rounding}'


def _prefix(model: str) -> str:
  return '' if model == 'tiny' else f'{model}/'


def plan_runs(total_rounds: int, models: Sequence[str] = MODELS) -> list[common.RunSpec]:
  """The runs, ordered so that the targets' runs come first."""
  unknown = sorted(set(models) - set(MODELS))
  if unknown:
    raise ValueError(f'--models: unknown {", ".join(unknown)}; known: {", ".join(MODELS)}')
  runs: dict[str, common.RunSpec] = {}
  pruning_phases = phases(total_rounds)

  def add(key, algorithm, **options):
    runs.setdefault(key, common.RunSpec(key, algorithm, tuple(sorted(options.items()))))

  def fp(key, sparsity, **extra):
    # Chosen among the fine-tuning rounds: before them the clients' model is still changing.
    add(key, 'fp', pattern='column', importance='magnitude', adaptive=True, sparsity=sparsity,
        select_from_round=pruning_phases['finetune_start'], **pruning_phases, **extra)

  omc = dict(format=OMC_FORMAT, fraction=PARTIAL_FRACTION, rounding='stochastic')
  if 'tiny' in models:
    add(dense_key(), 'fedavg')
    fp(fp_key(0.3), 0.3)
    fp(fp_key(0.5), 0.5)
    add(OMC_KEY, 'omc', **omc)
    add(aqt_key('nearest'), 'fedaqt', bits=AQT_BITS, variant='fedavg', rounding='nearest')
    add(TFF_KEY, 'tff_compression')
    add(aqt_key('stochastic'), 'fedaqt', bits=AQT_BITS, variant='fedavg',
        rounding='stochastic')
    add(OMC_NEAREST_KEY, 'omc', **dict(omc, rounding='nearest'))
    fp(fp_key(0.1), 0.1)
    for sparsity in (0.3, 0.5, 0.1):
      add(fd_key(sparsity), 'fd', pattern='column', rate=sparsity)
    fp(STACKED_KEY, STACKED_SPARSITY, compress='omc', format=OMC_FORMAT)
    add(dense_key(seed=NOISE_SEED), 'fedavg', sampler_seed=NOISE_SEED)
    for sparsity in ZEROFL_SPARSITIES:
      add(swat_key(sparsity), 'zerofl', sparsity=sparsity, mask_ratio=0.0, upload='whole')
      for mask_ratio in ZEROFL_MASK_RATIOS:
        add(zerofl_key(sparsity, mask_ratio), 'zerofl', sparsity=sparsity,
            mask_ratio=mask_ratio)
    add(zerofl_key(0.9, 0.2, 'zero_fill'), 'zerofl', sparsity=0.9, mask_ratio=0.2,
        aggregation='zero_fill')
    for sparsity in ZEROFL_SWEEP:
      add(zerofl_key(sparsity, 0.2), 'zerofl', sparsity=sparsity, mask_ratio=0.2)
    # Chosen after the ramp: before its end the clients train a less sparse model.
    ramp_rounds = max(1, total_rounds // 3)
    add(zerofl_ramp_key(0.9, 0.2), 'zerofl', sparsity=0.9, mask_ratio=0.2,
        ramp_rounds=ramp_rounds, ramp_steps=4,
        select_from_round=min(total_rounds, ramp_rounds + 1))
  if 'wide' in models:
    add(dense_key('wide'), 'fedavg', model='wide')
    for sparsity in WIDE_RATES:
      fp(fp_key(sparsity, 'wide'), sparsity, model='wide')
  return list(runs.values())


def algorithm_options(spec: common.RunSpec) -> dict[str, Any]:
  return {k: v for k, v in spec.option_dict.items() if k not in PROGRAM_OPTIONS}


# Reading results.


def test_split(results: dict[str, Any]) -> str:
  return results['initial']['splits']['test']


def dev_split(results: dict[str, Any]) -> str:
  return results['initial']['splits']['dev']


def utterances(run: Optional[dict[str, Any]], split: str
               ) -> Optional[error_rates.UtteranceErrors]:
  if not run or not run.get('utterance_errors'):
    return None
  return error_rates.UtteranceErrors.from_dict(run['utterance_errors'][split])


def compare(results: dict[str, Any], key: str, baseline: str, split: Optional[str] = None
            ) -> Optional[bootstrap.WerComparison]:
  """`key` against `baseline` on the test split (paired bootstrap, seed 0, 1,000 resamples);
  None until both runs are done."""
  split = split or test_split(results)
  system, base = utterances(results.get(key), split), utterances(results.get(baseline), split)
  if system is None or base is None:
    return None
  return bootstrap.paired_bootstrap(base, system)


def client_bytes(run: dict[str, Any]) -> float:
  """Bytes one client exchanges per round (down + up), averaged over the rounds."""
  return run['client_bytes_down'] + run['client_bytes_up']


def held_bytes(run: dict[str, Any]) -> float:
  """Parameter bytes a client holds: its compressed model, else the model it receives."""
  return run.get('client_held_parameter_bytes') or run['client_bytes_down']


def plateau(curve: dict[str, float], start: int = 0) -> Optional[dict[str, Any]]:
  """The plateau rule (`fl_compression.evaluation.plateau`) on a dev WER curve {round: WER}
  over rounds `start`..last; `plateaued` also needs `PLATEAU_MIN_EVALUATIONS` evaluations after
  the cut."""
  rule = plateau_lib.plateau(sorted((int(r), w) for r, w in curve.items() if int(r) >= start),
                             PLATEAU_FRACTION, PLATEAU_MIN_IMPROVEMENT, start)
  if rule is not None:
    rule['plateaued'] = (rule['plateaued'] and
                         rule['evaluations_after'] >= PLATEAU_MIN_EVALUATIONS)
  return rule


# Targets: (key, label, kind, limit); `within`: the interval's upper end of the relative
# difference is at most `limit`; `not_worse`: its lower end is at most 0.
TARGETS = (
    (fp_key(0.3), 'FP column 30% within +10% relative of dense', 'within', 0.10),
    (fp_key(0.5), 'FP column 50% within +25% relative of dense', 'within', 0.25),
    (OMC_KEY, 'OMC 11-bit (S1E4M6) partial no worse than float32', 'not_worse', 0.0),
    (OMC_NEAREST_KEY, 'OMC 11-bit (S1E4M6) partial, round to nearest, no worse than float32',
     'not_worse', 0.0),
    (aqt_key('nearest'), 'FedAQT 8-bit (round to nearest) within +5% relative of dense',
     'within', 0.05),
    (aqt_key('stochastic'), 'FedAQT 8-bit (stochastic) within +5% relative of dense',
     'within', 0.05),
)


def target_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
  rows = []
  for key, label, kind, limit in TARGETS:
    comparison = compare(results, key, dense_key())
    if comparison is None:
      rows.append((label, 'not run yet', 'n/a'))
      continue
    met = (comparison.within_relative(limit) if kind == 'within' else comparison.not_worse())
    rows.append((label, f'{common.pct(comparison.system_wer)} vs '
                 f'{common.pct(comparison.baseline_wer)}: {comparison.describe_relative()}',
                 common.check(met)))
  return rows


LABELS = {
    DENSE: 'dense FedAvg',
    OMC_KEY: 'OMC S1E4M6 partial (90%), stochastic',
    OMC_NEAREST_KEY: 'OMC S1E4M6 partial (90%), nearest',
    aqt_key('nearest'): 'FedAQT 8-bit, nearest',
    aqt_key('stochastic'): 'FedAQT 8-bit, stochastic',
    TFF_KEY: 'FedAvg + TFF compression_aggregator (8-bit)',
    STACKED_KEY: 'FP 30% + OMC S1E4M6',
    dense_key(seed=NOISE_SEED): 'dense FedAvg, sampling seed 1',
}


def label(key: str) -> str:
  if key in LABELS:
    return LABELS[key]
  parts = key.split('/')
  if parts[0] == 'wide':
    return 'wide: ' + label('/'.join(parts[1:]))
  if parts[0] == 'fp':
    return f'FP column {100 * float(parts[-1]):g}% (adaptive)'
  if parts[0] == 'fd':
    return f'FD column {100 * float(parts[-1]):g}% (random, full model)'
  if parts[0] == 'zerofl':
    suffix = {'zero_fill': ', zero fill', 'ramp': ', sparsity ramp'}
    return (f'ZeroFL {100 * float(parts[1]):g}%, mask ratio {parts[2]}'
            + (suffix.get(parts[3], f', {parts[3]}') if len(parts) > 3 else ''))
  if parts[0] == 'swat':
    return f'SWAT {100 * float(parts[1]):g}%, whole update uploaded'
  return key


def current(results: dict[str, Any]) -> dict[str, Any]:
  """`results` (with its `total_rounds`) without the stored runs that no longer stand for their
  planned run (`pruning_experiments.is_current`): reports, figures and the summary use these."""
  planned = {s.key: s for s in plan_runs(int(results.get('total_rounds', 60) or 60))}
  return {k: v for k, v in results.items()
          if k not in planned or common.is_current(planned[k], v)}


def step_cost_sparsities() -> tuple[float, ...]:
  """The SWAT sparsities whose client step `zerofl_step_costs` measures."""
  return ZEROFL_SPARSITIES + ZEROFL_SWEEP


def table_keys(results: dict[str, Any], model: str = 'tiny') -> list[str]:
  """The run keys of one model's table, in plan order."""
  order = [s.key for s in plan_runs(int(results.get('total_rounds', 60) or 60), [model])]
  return [k for k in order if k in results]


def render_report(results: dict[str, Any], settings: dict[str, Any], figures: Sequence[str]
                  ) -> str:
  """The Markdown report (of the current results only, `current`)."""
  results = current(results)
  lines = ['# Every method against dense FedAvg at an equal, converged budget', '',
           f'`{settings["command"]}`', '']
  initial = results.get('initial')
  rounds = settings['total_rounds']
  pruning = phases(rounds)
  lines += [
      f'All runs start from `{settings["initial_model_dir"]}` (the `wide` rows from '
      f'`{settings["wide_model_dir"]}`), train {rounds} rounds of '
      f'{settings["clients_per_round"]} speakers (the same speakers each round in every run but '
      'the sampling-seed-1 noise row), '
      f'batch {settings["batch_size"]}, client Adam {settings["client_learning_rate"]:g}, '
      'server SGD 1.0. Every run is transcribed every '
      f'{settings["evaluation_period"]} rounds; its result is the round with the lowest dev '
      'WER (for pruning, among the fine-tuning rounds; for the ZeroFL sparsity ramp, from round '
      f'{min(rounds, max(1, rounds // 3) + 1)}, after the ramp), and its test WER at that round is '
      f'reported once. Federated pruning phases: pruning rounds 1..{pruning["refine_start"] - 1}, '
      f'refining {pruning["refine_start"]}..{pruning["finetune_start"] - 1}, fine-tuning of the '
      f'reduced model {pruning["finetune_start"]}..{rounds}. Machine: {settings["machine"]}.', '']
  for model in (m for m in MODELS if initial and m in initial):
    test, dev = test_split(results), dev_split(results)
    rates = initial[model]
    lines.append(f'Starting `{model}` model: test WER {common.pct(rates[test]["wer"])} '
                 f'({rates[test]["num_reference_words"]:,} words, '
                 f'{rates[test]["num_utterances"]} utterances of speakers never seen '
                 f'in training), dev WER {common.pct(rates[dev]["wer"])} '
                 f'({rates[dev]["num_reference_words"]:,} words).')
    lines.append('')
  lines += common.revision_note(results)
  lines += ['**Rule.** Every difference is the test WER of the row against dense FedAvg\'s on '
            'the same utterances, relative to dense, with its paired bootstrap 95% interval '
            '(1,000 resamples of the test utterances, seed 0). A "within +x%" target is met '
            'only when the interval\'s upper end is at most +x%; "no worse" is met when the '
            'interval\'s lower end is at most 0 (the data do not show it worse).', '']
  lines += ['## Targets', '', '| target | measured: test WER, relative difference [95% CI] | |',
            '|---|---|---|']
  lines += [f'| {a} | {b} | {c} |' for a, b, c in target_rows(results)]
  lines.append('')
  lines += _why_missed(results)
  dense = results.get(dense_key())
  if dense and dense.get('wer_curves'):
    lines += _plateau_lines(results, dense, 'Dense FedAvg')
  for figure in figures:
    lines += [f'![{figure}]({figure})', '']
  for model in MODELS:
    keys = table_keys(results, model)
    if keys:
      lines += _method_table(results, keys, model)
  lines += _size_section(results)
  lines += zerofl_section(results)
  noise = compare(results, dense_key(seed=NOISE_SEED), dense_key())
  if noise is not None:
    lines += ['## Run-to-run noise', '',
              'Dense FedAvg with client-sampling seed 1 against seed 0 (same start, same '
              f'budget): test WER {common.pct(noise.system_wer)} vs '
              f'{common.pct(noise.baseline_wer)}, {noise.describe_relative()} relative. '
              'Differences of this size between two rows are within what resampling the '
              'clients alone produces.', '']
  missing = settings.get('missing_runs') or []
  if missing:
    lines += ['## Not run yet', '', ', '.join(f'`{k}`' for k in missing), '']
  return '\n'.join(lines)


def zerofl_section(results: dict[str, Any]) -> list[str]:
  """ZeroFL against dense FedAvg and against SWAT with the whole update uploaded: WER, uplink
  bytes, the client step's theoretical FLOPs and its measured time and tensor memory."""
  keys = [k for k in table_keys(results) if k.split('/')[0] in ('zerofl', 'swat')]
  if not keys:
    return []
  dense = results.get(dense_key())
  costs = results.get('zerofl_step_costs') or {}
  base_cost = costs.get('dense')
  lines = ['## ZeroFL: sparse local training and sparse uploads', '',
           'Clients train with SWAT (each Conformer-block dense kernel used with its top-k '
           'entries by magnitude; dense kernel gradients, so entries move in and out of the '
           'top-k set) and upload, per such kernel, the update at the top `1 - sparsity + mask '
           'ratio` entries of the trained weights (float32 values; positions as a bitmap or '
           'varint gaps, whichever is smaller), every other variable whole. The server '
           'averages each entry over the clients that sent it (zero fill: over all clients). '
           'The evaluated model is the top-k model. Uplink: bytes one client sends per round '
           '(measured buffer sizes, mean over rounds). FLOPs: dense-layer products of one client '
           'step (`fl_compression.zerofl.flops`); time and tensor memory: one SGD step of '
           f'{_step_shape(base_cost)} measured in a fresh process (`client_step`), against the '
           'dense step. The step multiplies masked dense kernels (no sparse kernel): its time '
           'and memory are those of the dense products plus the top-k selections.', '',
           '| run | test WER | vs dense [95% CI] | uplink bytes per round | vs whole upload | '
           'vs dense FedAvg uplink | forward FLOPs | backward FLOPs | step time | step tensors |',
           '|---|---|---|---|---|---|---|---|---|---|']
  test = test_split(results)
  for key in keys:
    run = results[key]
    parts = key.split('/')
    whole = results.get(swat_key(float(parts[1])))
    comparison = compare(results, key, dense_key())
    cost = costs.get(parts[1]) or {}
    ratio = lambda a, b: f'{a / b:.2f}x' if a is not None and b else 'n/a'  # noqa: E731
    field = lambda c, name: (c or {}).get(name)  # noqa: E731
    lines.append(
        f'| {label(key)} | {common.pct(run["error_rates"][test]["wer"])} | '
        f'{comparison.describe_relative() if comparison else "n/a"} | '
        f'{run["client_bytes_up"]:,.0f} | '
        f'{ratio(run["client_bytes_up"], whole["client_bytes_up"] if whole else None)} | '
        f'{ratio(run["client_bytes_up"], dense["client_bytes_up"] if dense else None)} | '
        f'{ratio(field(cost, "forward_flops"), field(base_cost, "forward_flops"))} | '
        f'{ratio(field(cost, "backward_flops"), field(base_cost, "backward_flops"))} | '
        f'{ratio(field(cost, "step_seconds"), field(base_cost, "step_seconds"))} | '
        f'{ratio(field(cost, "step_tensor_bytes"), field(base_cost, "step_tensor_bytes"))} |')
  lines.append('')
  findings = []
  for sparsity in ZEROFL_SPARSITIES:
    for mask_ratio in (0.1, 0.2):
      comparison = compare(results, zerofl_key(sparsity, mask_ratio), zerofl_key(sparsity, 0.0))
      if comparison is not None:
        findings.append(f'mask ratio {mask_ratio:g} against 0 at {100 * sparsity:g}%: '
                        f'{comparison.describe_relative()}')
  fill = compare(results, zerofl_key(0.9, 0.2, 'zero_fill'), zerofl_key(0.9, 0.2))
  if fill is not None:
    findings.append(f'zero fill against mean of senders (90%, 0.2): {fill.describe_relative()}')
  ramp = compare(results, zerofl_ramp_key(0.9, 0.2), zerofl_key(0.9, 0.2))
  if ramp is not None:
    findings.append(f'sparsity ramp over the first third of the rounds against 90% from round '
                    f'1 (0.2): {ramp.describe_relative()}')
  if findings:
    lines += ['Paired test-WER differences (relative, 95% CI): ' + '; '.join(findings) + '.',
              '']
  return lines


def _step_shape(cost: Optional[dict[str, Any]]) -> str:
  if not cost:
    return 'a batch'
  return f'{cost["batch_size"]} utterances of {cost["frames"] / 100:g} s'


def _why_missed(results: dict[str, Any]) -> list[str]:
  """For each missed target, what the runs measured about it: whether its dev WER was still
  falling at the end of the budget (the plateau rule on its own curve), and how far it stood
  from dense at each evaluation."""
  lines = []
  dev = dev_split(results) if results.get('initial') else None
  dense = results.get(dense_key())
  for key, label, kind, limit in TARGETS:
    comparison = compare(results, key, dense_key())
    if comparison is None:
      continue
    met = (comparison.within_relative(limit) if kind == 'within' else comparison.not_worse())
    run = results[key]
    if met or not run.get('wer_curves') or not dense.get('wer_curves'):
      continue
    curve = run['wer_curves'][dev]
    start = run['options'].get('finetune_start', 1) - 1
    rule = plateau(curve, start)
    gaps = ', '.join(f'{r}: {100 * (w / dense["wer_curves"][dev][r] - 1):+.0f}%'
                     for r, w in sorted(curve.items(), key=lambda x: int(x[0]))
                     if r in dense['wer_curves'][dev])
    trend = ''
    if rule:
      trend = (f' Over the last {100 * PLATEAU_FRACTION:g}% of its '
               + ('fine-tuning ' if 'finetune_start' in run['options'] else '')
               + f'rounds its best dev WER moved {100 * -rule["improvement"]:+.1f}% '
               + ('(plateaued).' if rule['plateaued'] else '(still falling at the end of the '
                  'budget).'))
    lines.append(f'- **{label}**: missed. Dev WER relative to dense by round: {gaps}.{trend}')
  return (['Why the missed targets are missed (measured on the runs themselves):', ''] + lines
          + ['']) if lines else []


def _size_section(results: dict[str, Any]) -> list[str]:
  """The cost of pruning at each model size: relative test WER against that size's dense run."""
  if not any(results.get(fp_key(sparsity, 'wide')) for sparsity in WIDE_RATES):
    return []
  rows = []
  for sparsity in WIDE_RATES:
    cells = []
    for model in MODELS:
      comparison = compare(results, fp_key(sparsity, model), dense_key(model))
      cells.append(comparison.describe_relative() if comparison else 'not run yet')
    rows.append(f'| {100 * sparsity:g}% column (adaptive) | ' + ' | '.join(cells) + ' |')
  return ['## The cost of pruning by model size', '',
          'Test WER of federated pruning relative to dense FedAvg of the same model (same '
          'budget, clients and seed), with the paired 95% interval. `wide` has the same depth '
          'and twice the width of `tiny` (4x the parameters).', '',
          '| | `tiny` | `wide` |', '|---|---|---|'] + rows + ['']


def _plateau_lines(results, run, what) -> list[str]:
  dev = dev_split(results)
  curve = run['wer_curves'][dev]
  rule = plateau(curve)
  points = ', '.join(f'{r}: {100 * w:.2f}%' for r, w in sorted(curve.items(),
                                                               key=lambda x: int(x[0])))
  lines = [f'{what} dev WER by round: {points}.']
  if rule:
    lines.append(
        f'Plateau rule (best dev WER of the last {100 * PLATEAU_FRACTION:g}% of the rounds at '
        f'least {100 * PLATEAU_MIN_IMPROVEMENT:g}% relative below the best before them, else '
        f'plateaued, with at least {PLATEAU_MIN_EVALUATIONS} evaluations after the cut): '
        f'{100 * rule["best_after"]:.2f}% after round {rule["cut"]:g} '
        f'({rule["evaluations_after"]} evaluations) against {100 * rule["best_before"]:.2f}% '
        f'before ({100 * -rule["improvement"]:+.1f}%): '
        + ('**plateaued**.' if rule['plateaued'] else '**not plateaued**.'))
  return lines + ['']


def _method_table(results, keys, model) -> list[str]:
  baseline = dense_key(model)
  base = results.get(baseline)
  parameters = results[keys[0]]['model_parameters'] if keys else 0
  dense_run = results.get(dense_key(model))
  if dense_run:
    parameters = dense_run['model_parameters']
  title = f'`{model}` ({parameters / 1e6:.2f}M parameters)'
  lines = [f'## Methods on {title}', '',
           '| method | test WER | vs dense [95% CI] | dev WER | round | final model parameters '
           '| client bytes per round (down + up) | client parameter bytes |',
           '|---|---|---|---|---|---|---|---|']
  test, dev = test_split(results), dev_split(results)
  for key in keys:
    run = results[key]
    comparison = compare(results, key, baseline) if key != baseline else None
    ratio = (lambda a, b: f' ({a / b:.2f}x)' if base and b else '')  # noqa: E731
    lines.append(
        f'| {label(key)} | {common.pct(run["error_rates"][test]["wer"])} | '
        f'{comparison.describe_relative() if comparison else "(baseline)"} | '
        f'{common.pct(run["error_rates"][dev]["wer"])} | {run["selected_round"]} | '
        f'{run["model_parameters"]:,} | {client_bytes(run):,.0f}'
        f'{ratio(client_bytes(run), client_bytes(base) if base else 0)} | '
        f'{held_bytes(run):,.0f}{ratio(held_bytes(run), held_bytes(base) if base else 0)} |')
  base_errors = utterances(base, test)
  same = [key for key in keys if key != baseline and base_errors is not None and
          utterances(results[key], test) == base_errors]
  if same:
    lines += ['', 'Same word errors as dense FedAvg on every test utterance, so the interval is '
              'a single point: ' + '; '.join(
                  label(key) + (' (a different model: its dev WER by round differs from '
                                'dense\'s)' if results[key].get('wer_curves', {}).get(dev) !=
                                base.get('wer_curves', {}).get(dev) else '')
                  for key in same) + '.']
  lines += ['', 'Federated dropout trains random sub-models but ends with the full model: '
            'its final model is dense-sized, unlike pruning\'s.' if model == 'tiny' else '', '']
  return lines


def plot(results: dict[str, Any], output_dir: str) -> list[str]:
  """WER (with interval bars) against client bytes per round, one point per current run."""
  results = current(results)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  points = pareto_points(results, 'client_bytes')
  if not points:
    return []
  fig, ax = plt.subplots(figsize=(7.2, 4.6))
  draw_points(ax, points)
  ax.set_xlabel('client bytes per round (down + up, MB)')
  ax.set_ylabel('test WER (%)')
  ax.set_title('Test WER against client traffic (bars: 95% paired interval)')
  fig.tight_layout()
  fig.savefig(os.path.join(output_dir, 'wer_vs_bytes.png'), dpi=110)
  plt.close(fig)
  figures = ['wer_vs_bytes.png']
  uplink = [p for p in pareto_points(results, 'client_bytes_up')
            if p['key'].split('/')[0] in ('zerofl', 'swat', DENSE)]
  if len(uplink) > 1:
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    draw_points(ax, uplink)
    ax.set_xlabel('client uplink bytes per round (MB)')
    ax.set_ylabel('test WER (%)')
    ax.set_title('ZeroFL and SWAT: test WER against uplink (bars: 95% paired interval)')
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, 'zerofl_wer_vs_uplink.png'), dpi=110)
    plt.close(fig)
    figures.append('zerofl_wer_vs_uplink.png')
  return figures


def pareto_points(results: dict[str, Any], axis: str, model: str = 'tiny'
                  ) -> list[dict[str, Any]]:
  """Per run of `model`: label, test WER, its interval (from the paired comparison with dense,
  shifted to the run's WER) and the x value (`client_bytes`, `client_bytes_up`, `model_bytes`
  or `held_bytes`)."""
  found = []
  baseline = dense_key(model)
  for key in table_keys(results, model):
    run = results[key]
    x = {'client_bytes': client_bytes, 'held_bytes': held_bytes,
         'client_bytes_up': lambda r: r['client_bytes_up'],
         'model_bytes': lambda r: r['model_parameter_bytes']}[axis](run)
    wer = run['error_rates'][test_split(results)]['wer']
    comparison = compare(results, key, baseline) if key != baseline else None
    low, high = ((wer, wer) if comparison is None else
                 (comparison.baseline_wer + comparison.absolute_interval[0],
                  comparison.baseline_wer + comparison.absolute_interval[1]))
    found.append({'key': key, 'label': label(key), 'wer': wer, 'low': low, 'high': high,
                  'x': float(x)})
  return found


def draw_points(ax, points: Sequence[dict[str, Any]], scale: float = 1e6) -> None:
  """Scatter with interval bars and labels; the lower-left (Pareto) front joined by a line."""
  for p in points:
    ax.errorbar(p['x'] / scale, 100 * p['wer'],
                yerr=[[100 * (p['wer'] - p['low'])], [100 * (p['high'] - p['wer'])]],
                fmt='o', capsize=3, markersize=4)
    ax.annotate(p['label'], (p['x'] / scale, 100 * p['wer']), fontsize=6,
                xytext=(3, 3), textcoords='offset points')
  front = pareto_front(points)
  ax.plot([p['x'] / scale for p in front], [100 * p['wer'] for p in front], '--',
          color='gray', linewidth=0.8, label='Pareto front')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)


def pareto_front(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """The points no other point beats in both x and WER (ascending x)."""
  front, best = [], math.inf
  for p in sorted(points, key=lambda p: (p['x'], p['wer'])):
    if p['wer'] < best:
      front.append(p)
      best = p['wer']
  return front
