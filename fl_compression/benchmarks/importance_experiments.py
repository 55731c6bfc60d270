"""Targeted federated dropout on the held-out domain: the layer heterogeneity paper's table.

A model pretrained on the main domain is fine-tuned federatedly on the held-out short-form
domain, every run on the same clients, seed and budget. Rows: no dropout (`none`, FedAvg);
dropout at 50% of the units of the N most ambient (`Amb-N`) or N most critical (`Crit-N`)
encoder blocks of a ranking (`//tff_programs:layer_importance`), N in 2, 3, 4; dropout of every
block at the flat rate whose dropped parameters are closest to Amb-4's (`Flat-<rate %>`); and
the pretrained model without fine-tuning (`no-finetune`). Each run is transcribed on the
held-out dev split every few rounds; its best-dev round is transcribed on the held-out test
split and on the main domain's test split (what fine-tuning forgets).
"""

from typing import Any, Callable, Optional, Sequence

from fl_compression.benchmarks import method_experiments
from fl_compression.benchmarks import pruning_experiments as common
from fl_compression.data import corpus
from fl_compression.evaluation import bootstrap
from fl_compression.evaluation import error_rates

BLOCK_COUNTS = (2, 3, 4)
RATE = 0.5
NONE = 'none'
NO_FINETUNE = 'no-finetune'
HELDOUT_TEST = corpus.domain(corpus.SHORT_FORM).test_split
MAIN_TEST = corpus.domain(corpus.MAIN).test_split
# Flat rates tried when matching Amb-N's dropped parameters: whole percents.
FLAT_RATES = tuple(r / 100 for r in range(1, 91))


def targeted_key(target: str, blocks: int, rate: float = RATE) -> str:
  return f'fd/{target}:{blocks}/{rate:g}'


def flat_key(rate: float) -> str:
  return f'fd/flat/{rate:g}'


def trainable_key(target: str, blocks: int) -> str:
  return f'trainable/{target}:{blocks}'


def row_name(key: str) -> str:
  """`Amb-2`, `Crit-3`, `Flat-20`, `none`, `no-finetune`, or `Train-Crit-8` (only the 8 most
  critical blocks train)."""
  if key in (NONE, NO_FINETUNE):
    return key
  parts = key.split('/')
  if parts[0] == 'trainable':
    target, blocks = parts[1].split(':')
    return f'Train-{"Amb" if target == "ambient" else "Crit"}-{blocks}'
  if parts[1] == 'flat':
    return f'Flat-{round(100 * float(parts[2]))}'
  target, blocks = parts[1].split(':')
  return f'{"Amb" if target == "ambient" else "Crit"}-{blocks}'


def match_flat_rate(target_fraction: float, fraction_of_rate: Callable[[float], float],
                    rates: Sequence[float] = FLAT_RATES) -> float:
  """The rate among `rates` whose flat dropout drops the fraction of parameters closest to
  `target_fraction` (ties: the lower rate)."""
  if not rates:
    raise ValueError('no flat rates to choose from')
  return min(rates, key=lambda r: (abs(fraction_of_rate(r) - target_fraction), r))


def plan_runs(block_counts: Sequence[int], ranking_path: str, flat_rate: Optional[float]
              ) -> list[common.RunSpec]:
  """The fine-tuning runs: no dropout first, then Amb-N and Crit-N for each N, then flat."""
  runs = [common.RunSpec(NONE, 'fedavg')]
  for n in block_counts:
    for target in ('ambient', 'critical'):
      runs.append(common.RunSpec(targeted_key(target, n), 'fd', tuple(sorted(
          {'pattern': 'column', 'rate': RATE, 'target': f'{target}:{n}',
           'ranking': ranking_path}.items()))))
  if flat_rate is not None:
    runs.append(common.RunSpec(flat_key(flat_rate), 'fd', tuple(sorted(
        {'pattern': 'column', 'rate': flat_rate, 'target': 'flat'}.items()))))
  return runs


def flat_rate(results: dict[str, Any]) -> Optional[float]:
  """The matched flat rate stored with the results (None before it is chosen)."""
  return (results.get('flat_rate') or {}).get('rate')


def plan_trainable_runs(counts: Sequence[int],
                        blocks_of: Callable[[str], Sequence[int]]) -> list[common.RunSpec]:
  """FedAvg fine-tuning of only the N most critical, then the N most ambient, blocks for each
  N of `counts`; `blocks_of('critical:8')` names the blocks (from the ranking)."""
  runs = []
  for n in counts:
    for target in ('critical', 'ambient'):
      blocks = tuple(sorted(int(b) for b in blocks_of(f'{target}:{n}')))
      runs.append(common.RunSpec(trainable_key(target, n), 'fedavg',
                                 (('trainable_blocks', blocks),)))
  return runs


def row_keys(results: dict[str, Any], block_counts: Sequence[int]) -> list[str]:
  keys = [NO_FINETUNE, NONE]
  for n in block_counts:
    keys += [targeted_key('ambient', n), targeted_key('critical', n)]
  if flat_rate(results) is not None:
    keys.append(flat_key(flat_rate(results)))
  return keys


# Reading results.


def utterances(results: dict[str, Any], key: str, split: str
               ) -> Optional[error_rates.UtteranceErrors]:
  """Per-utterance errors of row `key` on `split` (the pretrained model's for `no-finetune`);
  None until that run is done."""
  if key == NO_FINETUNE:
    found = (results.get('initial') or {}).get(split)
    return error_rates.UtteranceErrors.from_dict(found['utterances']) if found else None
  run = results.get(key)
  if not run or not run.get('utterance_errors') or split not in run['utterance_errors']:
    return None
  return error_rates.UtteranceErrors.from_dict(run['utterance_errors'][split])


def compare(results: dict[str, Any], key: str, baseline: str, split: str = HELDOUT_TEST
            ) -> Optional[bootstrap.WerComparison]:
  """`key` against `baseline` on the same utterances of `split` (paired bootstrap, 1,000
  resamples, seed 0); None until both are done."""
  system, base = utterances(results, key, split), utterances(results, baseline, split)
  if system is None or base is None:
    return None
  return bootstrap.paired_bootstrap(base, system)


def dropped(results: dict[str, Any], key: str) -> Optional[float]:
  if key in (NONE, NO_FINETUNE):
    return 0.0
  run = results.get(key)
  return None if not run else run.get('dropped_fraction')


def rows(results: dict[str, Any], block_counts: Sequence[int]) -> list[dict[str, Any]]:
  """The rows of `targeted_fd.json`, finished runs only: `row`, `params_dropped` (fraction),
  `heldout_wer`, `heldout_delta_ci` (relative to `none`: the paired interval's two ends),
  `main_wer`, and `key`, `selected_round`, `heldout_delta` and `main_delta_ci` (against the
  pretrained model on the main domain)."""
  found = []
  for key in row_keys(results, block_counts):
    heldout, main = (utterances(results, key, s) for s in (HELDOUT_TEST, MAIN_TEST))
    if heldout is None:
      continue
    against_none = compare(results, key, NONE) if key != NONE else None
    forgetting = compare(results, key, NO_FINETUNE, MAIN_TEST) if key != NO_FINETUNE else None
    found.append({
        'row': row_name(key), 'key': key, 'params_dropped': dropped(results, key),
        'heldout_wer': heldout.wer,
        'heldout_delta': against_none.relative if against_none else None,
        'heldout_delta_ci': list(against_none.relative_interval) if against_none else None,
        'main_wer': main.wer if main is not None else None,
        'main_delta_ci': list(forgetting.relative_interval) if forgetting else None,
        'selected_round': (results.get(key) or {}).get('selected_round')})
  return found


def trainable_rows(results: dict[str, Any], counts: Sequence[int]) -> list[dict[str, Any]]:
  """Per finished trainable-subset run: `row`, `blocks`, `heldout_wer`, `heldout_delta_ci`
  (against `none`, where every block trains), `main_wer`, `client_bytes_up` and its ratio to
  `none`'s, and the client step's tensor memory ratio (`trainable_step`, when measured)."""
  found = []
  base = results.get(NONE)
  steps = results.get('trainable_step') or {}
  for n in counts:
    for target in ('critical', 'ambient'):
      key = trainable_key(target, n)
      run, heldout = results.get(key), utterances(results, key, HELDOUT_TEST)
      if run is None or heldout is None:
        continue
      main = utterances(results, key, MAIN_TEST)
      against_none = compare(results, key, NONE)
      step, all_step = steps.get(key), steps.get('all')
      found.append({
          'row': row_name(key), 'key': key,
          'blocks': list(run.get('trainable_blocks', [])),
          'heldout_wer': heldout.wer,
          'heldout_delta_ci': list(against_none.relative_interval) if against_none else None,
          'main_wer': main.wer if main is not None else None,
          'client_bytes_up': run['client_bytes_up'],
          'client_bytes_up_ratio': (run['client_bytes_up'] / base['client_bytes_up']
                                    if base else None),
          'step_tensor_bytes_ratio': (step['step_tensor_bytes'] / all_step['step_tensor_bytes']
                                      if step and all_step else None)})
  return found


def trainable_section(results: dict[str, Any], counts: Sequence[int]) -> list[str]:
  lines = ['', '## Training only some blocks', '',
           'FedAvg fine-tuning in which clients train and upload only the N most critical (or '
           'most ambient) blocks; the rest stay at their pretrained values. Against `none` '
           '(every block trains): held-out WER with its interval, client bytes up, and the '
           'tensor memory of one client step (`fl_compression/benchmarks/client_step.py`, a '
           'fresh process per configuration).', '',
           '| row | blocks | held-out test WER | vs none [95% CI] | main test WER | '
           'bytes up vs none | step tensor memory vs none |', '|---|---|---|---|---|---|---|']
  for row in trainable_rows(results, counts):
    delta = compare(results, row['key'], NONE)
    ratio = lambda v: '' if v is None else f'{v:.2f}x'  # noqa: E731
    lines.append(f'| {row["row"]} | {", ".join(map(str, row["blocks"]))} | '
                 f'{common.pct(row["heldout_wer"])} | {_cell(delta)} | '
                 f'{common.pct(row["main_wer"])} | {ratio(row["client_bytes_up_ratio"])} | '
                 f'{ratio(row["step_tensor_bytes_ratio"])} |')
  return lines


def _verdict(comparison: Optional[bootstrap.WerComparison]) -> str:
  """Of "system better than baseline": the interval decides, or it does not."""
  if comparison is None:
    return 'n/a (runs missing)'
  low, high = comparison.relative_interval
  if high < 0:
    return 'reproduced'
  if low > 0:
    return '**not reproduced** (the other way round)'
  return 'undecided (the interval contains 0)'


def shape_checks(results: dict[str, Any], block_counts: Sequence[int]
                 ) -> list[tuple[str, str, str]]:
  """(claim, measured, verdict) for each of the paper's shapes."""
  checks = []

  def measured(comparison):
    if comparison is None:
      return ''
    return (f'{common.pct(comparison.system_wer)} vs {common.pct(comparison.baseline_wer)}: '
            f'{comparison.describe_relative()}')

  for n in block_counts:
    amb, crit = targeted_key('ambient', n), targeted_key('critical', n)
    comparison = compare(results, amb, crit)
    checks.append((f'Amb-{n} better than Crit-{n}', measured(comparison), _verdict(comparison)))
  for n in block_counts:
    if n + 1 in block_counts:
      amb, crit = targeted_key('ambient', n), targeted_key('critical', n + 1)
      comparison = compare(results, amb, crit)
      checks.append((f'Amb-{n} better than Crit-{n + 1} (about equal parameters trained)',
                     measured(comparison), _verdict(comparison)))
  top = max(block_counts) if block_counts else None
  rate = flat_rate(results)
  if top is not None and rate is not None:
    amb, flat = targeted_key('ambient', top), flat_key(rate)
    comparison = compare(results, amb, flat)
    amb_dropped, flat_dropped = dropped(results, amb), dropped(results, flat)
    if comparison is None or amb_dropped is None or flat_dropped is None:
      verdict, text = 'n/a (runs missing)', ''
    else:
      more = amb_dropped > flat_dropped
      text = (f'dropped {100 * amb_dropped:.1f}% vs {100 * flat_dropped:.1f}%; '
              f'{measured(comparison)}')
      if not more:
        verdict = '**not reproduced** (drops no more)'
      elif comparison.relative_interval[1] <= 0:
        verdict = 'reproduced'
      elif comparison.not_worse():
        verdict = 'not shown worse (the interval contains 0)'
      else:
        verdict = '**not reproduced** (worse)'
    checks.append((f'Amb-{top} drops more than {row_name(flat)} at no worse WER', text,
                   verdict))
  return checks


RULE = ('Intervals: paired bootstrap over utterances, 95%, 1,000 resamples, seed 0. '
        '"A better than B" is reproduced when the interval of A\'s relative difference to B '
        'lies below 0, and not reproduced when it lies above 0; otherwise the split cannot '
        'decide. "No worse" is reproduced when the upper end is at most 0.')


def render_report(results: dict[str, Any], block_counts: Sequence[int],
                  settings: dict[str, Any], trainable_counts: Sequence[int] = ()) -> str:
  lines = ['# Targeted federated dropout on the held-out domain', '',
           f'Command: `{settings.get("command", "")}`', '',
           f'Starting model: `{settings.get("initial_model_dir")}` (pretrained on the main '
           f'domain), ranking: `{settings.get("ranking")}` (ambient first: '
           f'{", ".join(str(b) for b in results.get("ambient_first", []))}).',
           f'Fine-tuning on the `{corpus.SHORT_FORM}` domain: {settings.get("total_rounds")} '
           f'rounds of {settings.get("clients_per_round")} speakers, batch '
           f'{settings.get("batch_size")}, client Adam {settings.get("client_learning_rate")}, '
           f'seed {settings.get("seed")}; held-out dev transcribed every '
           f'{settings.get("evaluation_period")} rounds, the best-dev round reported on both '
           f'test splits. Machine: {settings.get("machine", "")}.', '']
  missing = settings.get('missing_runs') or []
  if missing:
    lines += [f'Runs not done yet: {", ".join(missing)}.', '']
  lines += ['| row | params dropped | held-out test WER | vs none [95% CI] | main test WER | '
            'vs no-finetune [95% CI] | round |', '|---|---|---|---|---|---|---|']
  for row in rows(results, block_counts):
    delta = compare(results, row['key'], NONE) if row['key'] != NONE else None
    main = (compare(results, row['key'], NO_FINETUNE, MAIN_TEST)
            if row['key'] != NO_FINETUNE else None)
    lines.append(
        f'| {row["row"]} | {common.pct(row["params_dropped"])} | {common.pct(row["heldout_wer"])}'
        f' | {delta.describe_relative() if delta else ""} | {common.pct(row["main_wer"])} | '
        f'{main.describe_relative() if main else ""} | {row["selected_round"] or ""} |')
  lines += ['', '## The paper\'s shapes', '', RULE, '', '| claim | measured | verdict |',
            '|---|---|---|']
  for claim, measured, verdict in shape_checks(results, block_counts):
    lines.append(f'| {claim} | {measured} | {verdict} |')
  if trainable_counts:
    lines += trainable_section(results, trainable_counts)
  return '\n'.join(lines) + '\n'


# Importance-aware allocation, on the main domain: federated pruning's per-block sparsity and
# OMC's per-block mantissa bits from the ranking, against their uniform (and, for pruning,
# magnitude-adaptive) allocations at the same totals, every run from the same model on the same
# clients and budget, next to float32 FedAvg.

DENSE = 'fedavg'
FP_SPARSITIES = (0.3, 0.5)
FP_ALLOCATIONS = ('uniform', 'adaptive', 'importance')
OMC_FORMATS = ('S1E4M6', 'S1E4M3', 'S1E4M2')
OMC_ALLOCATIONS = ('uniform', 'importance')


def fp_allocation_key(allocation: str, sparsity: float) -> str:
  return f'fp/{allocation}/{sparsity:g}'


def omc_allocation_key(allocation: str, fmt: str) -> str:
  return f'omc/{allocation}/{fmt}'


def plan_allocation_runs(total_rounds: int, ranking_path: str) -> list[common.RunSpec]:
  """FedAvg; pruning at each sparsity with each allocation (phases and round selection as in
  the methods benchmark); OMC (stochastic requantization) at each format, uniform and by
  importance."""
  phases = method_experiments.phases(total_rounds)
  runs = [common.RunSpec(DENSE, 'fedavg')]
  for sparsity in FP_SPARSITIES:
    for allocation in FP_ALLOCATIONS:
      options = dict(pattern='column', importance='magnitude', sparsity=sparsity,
                     allocation=allocation, select_from_round=phases['finetune_start'],
                     **phases)
      if allocation == 'importance':
        options['ranking'] = ranking_path
      runs.append(common.RunSpec(fp_allocation_key(allocation, sparsity), 'fp',
                                 tuple(sorted(options.items()))))
  for fmt in OMC_FORMATS:
    for allocation in OMC_ALLOCATIONS:
      options = dict(format=fmt, rounding='stochastic', allocation=allocation)
      if allocation == 'importance':
        options['ranking'] = ranking_path
      runs.append(common.RunSpec(omc_allocation_key(allocation, fmt), 'omc',
                                 tuple(sorted(options.items()))))
  return runs


def client_bytes(run: Optional[dict[str, Any]]) -> Optional[float]:
  """Bytes one client exchanges per round (down + up), averaged over the rounds."""
  return None if not run else run['client_bytes_down'] + run['client_bytes_up']


def _cell(comparison: Optional[bootstrap.WerComparison]) -> str:
  return comparison.describe_relative() if comparison else ''


def _wer(results, key):
  found = utterances(results, key, MAIN_TEST)
  return common.pct(found.wer) if found else ''


def bytes_to_reach_float(results: dict[str, Any], allocation: str) -> Optional[dict[str, Any]]:
  """The OMC run of `allocation` with the fewest client bytes whose test WER the interval does
  not show worse than float32 FedAvg's (its lower end is at most 0); None if none does."""
  found = []
  for fmt in OMC_FORMATS:
    key = omc_allocation_key(allocation, fmt)
    comparison = compare(results, key, DENSE, MAIN_TEST)
    if comparison is not None and comparison.not_worse():
      found.append({'key': key, 'format': fmt, 'client_bytes': client_bytes(results[key]),
                    'delta': comparison.describe_relative()})
  return min(found, key=lambda f: f['client_bytes']) if found else None


def _allocation_rows(results, labels, settings, allocations, key_of) -> list[str]:
  """Table rows per setting (sparsity or format) and allocation, finished runs only: test WER,
  its interval against float32 FedAvg and against the same setting's uniform allocation, and
  client bytes against FedAvg's."""
  dense_bytes = client_bytes(results.get(DENSE))
  rows = []
  for label, setting in zip(labels, settings):
    uniform = key_of('uniform', setting)
    for allocation in allocations:
      key = key_of(allocation, setting)
      if results.get(key) is None:
        continue
      against_uniform = compare(results, key, uniform, MAIN_TEST) if key != uniform else None
      rows.append(f'| {label} | {allocation} | {_wer(results, key)} | '
                  f'{_cell(compare(results, key, DENSE, MAIN_TEST))} | {_cell(against_uniform)} '
                  f'| {common.ratio(client_bytes(results[key]), dense_bytes)} |')
  return rows


def allocation_report(results: dict[str, Any], settings: dict[str, Any]) -> str:
  dense_bytes = client_bytes(results.get(DENSE))
  ratio = lambda run: common.ratio(client_bytes(run), dense_bytes)  # noqa: E731
  lines = ['# Importance-aware allocation: pruning sparsity and OMC bits by layer importance',
           '', f'Command: `{settings.get("command", "")}`', '',
           f'Starting model: `{settings.get("initial_model_dir")}`, ranking: '
           f'`{settings.get("ranking")}`. Main domain, {settings.get("total_rounds")} rounds of '
           f'{settings.get("clients_per_round")} speakers, batch {settings.get("batch_size")}, '
           f'client Adam {settings.get("client_learning_rate")}, seed {settings.get("seed")}; '
           'dev transcribed every '
           f'{settings.get("evaluation_period")} rounds, test WER at the best-dev round. '
           f'Float32 FedAvg: test WER {_wer(results, DENSE)}.', '']
  missing = settings.get('missing_runs') or []
  if missing:
    lines += [f'Runs not done yet: {", ".join(missing)}.', '']
  lines += ['## Federated pruning: per-block sparsity', '',
            '`importance` sets each block\'s sparsity from its re-initialization damage in the '
            'ranking (ambient blocks sparser), `adaptive` from its weight magnitudes, '
            '`uniform` the same everywhere; all at the same total sparsity.', '',
            '| sparsity | allocation | test WER | vs FedAvg [95% CI] | vs uniform [95% CI] | '
            'client bytes per round |', '|---|---|---|---|---|---|']
  lines += _allocation_rows(results, [f'{100 * s:.0f}%' for s in FP_SPARSITIES], FP_SPARSITIES,
                            FP_ALLOCATIONS, fp_allocation_key)
  lines += ['', '## OMC: per-block mantissa bits', '',
            '`importance` gives the most ambient third of the blocks one mantissa bit fewer '
            'than the format, the most critical third one more: the same client parameter '
            'bytes as `uniform` (blocks of equal size).', '',
            '| format | allocation | test WER | vs FedAvg [95% CI] | vs uniform [95% CI] | '
            'client bytes per round |', '|---|---|---|---|---|---|']
  lines += _allocation_rows(results, OMC_FORMATS, OMC_FORMATS, OMC_ALLOCATIONS,
                            omc_allocation_key)
  lines += ['', 'Fewest client bytes at which each allocation is not shown worse than float32 '
            '(the interval\'s lower end at most 0):', '']
  for allocation in OMC_ALLOCATIONS:
    reached = bytes_to_reach_float(results, allocation)
    lines.append(f'- {allocation}: ' + (
        f'{reached["format"]}, {ratio(results[reached["key"]])} of FedAvg\'s bytes '
        f'({reached["delta"]})' if reached else 'none of the formats run'))
  return '\n'.join(lines + ['', RULE]) + '\n'
