"""The federated pruning experiments: which runs, where their results live, and the report.

The runs (`plan_runs`) reproduce the shape of the Federated Pruning paper's experiments on one
pretrained model: WER against sparsity per pattern, importance methods, unified against
adaptive sparsity, with and without mask refinement, and anchors (dense FedAvg, federated
dropout, tfmot's centralized magnitude pruning), plus costs against FedAvg, and recovery: 30%
column pruning and dense FedAvg over a longer budget, with the constant and the step schedule. `ResultStore`
keeps each finished run in a JSON file, so an interrupted benchmark resumes where it stopped;
`render_report` and `plot` turn the results into Markdown and PNG figures.
"""

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

from fl_compression.data import corpus
from fl_compression.evaluation import bootstrap
from fl_compression.evaluation import error_rates

EXPERIMENTS = ('patterns', 'importance', 'adaptive', 'refinement', 'anchors', 'costs',
               'recovery', 'prunable')
PATTERNS = ('row', 'column', 'half_row', 'half_column')
IMPORTANCE_METHODS = ('magnitude', 'gradient', 'weight_gradient')
ADAPTIVE_SPARSITY = 0.5
REFINEMENT_SPARSITY = 0.4
COST_SPARSITY = 0.5
RECOVERY_SPARSITY = 0.3
RECOVERY_ROUNDS = 18  # Three times the sweeps' budget: phases of 6 rounds each.
RECOVERY_SCHEDULES = ('constant', 'step')
DENSE = 'fedavg'
SPLITS = {'test': corpus.TEST_SPLIT, 'dev': corpus.DEV_SPLIT}


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One federated run from the pretrained model; `options` are `--fp_*` values unprefixed."""

  key: str
  algorithm: str  # fedavg, fp or fd.
  options: tuple[tuple[str, Any], ...] = ()

  @property
  def option_dict(self) -> dict[str, Any]:
    return dict(self.options)


def fp_key(pattern: str, importance: str, sparsity: float, variant: str = '') -> str:
  return f'fp/{pattern}/{importance}/{sparsity:g}' + (f'/{variant}' if variant else '')


def fd_key(pattern: str, sparsity: float) -> str:
  return f'fd/{pattern}/{sparsity:g}'


def tfmot_key(sparsity: float) -> str:
  return f'tfmot/{sparsity:g}'


def recovery_key(schedule: Optional[str]) -> str:
  """The recovery runs: dense FedAvg (`schedule=None`) and 30% column pruning, over
  `RECOVERY_ROUNDS` rounds. Their option `rounds` is read by the program, not the algorithm."""
  if schedule is None:
    return f'recovery/{DENSE}'
  return f'recovery/{fp_key("column", "magnitude", RECOVERY_SPARSITY)}/{schedule}'


def scale_cost_key(model: str, pruned: bool, prunable: str = 'paper') -> str:
  """The cost runs on a larger model (`--cost_model`): FedAvg and 50% column pruning from that
  model's initialization, not evaluated. Their option `model` is read by the program."""
  variant = '' if prunable == 'paper' else prunable
  return f'costs/{model}/' + (fp_key('column', 'magnitude', COST_SPARSITY, variant) if pruned
                              else DENSE)


EXTENDED = 'extended'  # The extended prunable set's runs (`--fp_prunable=extended`).


def run_rounds(spec: 'RunSpec', default: int) -> tuple[int, dict[str, Any]]:
  """The rounds a run trains (its `rounds` option, else `default`) and its algorithm options
  (`model` left in: the program reads it)."""
  options = spec.option_dict
  return options.pop('rounds', default), options


def no_refine_rounds(total_rounds: int) -> dict[str, int]:
  """Phase boundaries without refining: fine-tuning starts where refining would have."""
  start = max(2, 1 + total_rounds // 3)  # Masks come from at least one pruning round.
  return {'refine_start': start, 'finetune_start': start}


def plan_runs(experiments: Sequence[str], sparsities: Sequence[float], total_rounds: int,
              cost_model: str = '') -> list[RunSpec]:
  """The federated runs the experiments need, each once, in a useful order; with 'costs' and
  a `cost_model`, also FedAvg and 50% column pruning of that model (`scale_cost_key`)."""
  unknown = sorted(set(experiments) - set(EXPERIMENTS))
  if unknown:
    raise ValueError(f'--experiments: unknown {", ".join(unknown)}; known: '
                     f'{", ".join(EXPERIMENTS)}')
  runs: dict[str, RunSpec] = {}

  def add(key, algorithm, **options):
    runs.setdefault(key, RunSpec(key, algorithm, tuple(sorted(options.items()))))

  def fp(pattern, importance, sparsity, variant='', **extra):
    add(fp_key(pattern, importance, sparsity, variant), 'fp', pattern=pattern,
        importance=importance, sparsity=sparsity, **extra)

  # Ordered so that an interrupted benchmark has the runs the targets need first.
  add(DENSE, 'fedavg')
  if 'patterns' in experiments or 'importance' in experiments:
    for sparsity in sparsities:
      fp('column', 'magnitude', sparsity)
  if 'costs' in experiments:
    fp('column', 'magnitude', COST_SPARSITY)
  if 'adaptive' in experiments:
    fp('column', 'magnitude', ADAPTIVE_SPARSITY)
    fp('column', 'magnitude', ADAPTIVE_SPARSITY, 'adaptive', adaptive=True)
  if 'refinement' in experiments:
    fp('column', 'magnitude', REFINEMENT_SPARSITY)
    fp('column', 'magnitude', REFINEMENT_SPARSITY, 'no_refinement',
       **no_refine_rounds(total_rounds))
  if 'recovery' in experiments:
    add(recovery_key(None), 'fedavg', rounds=RECOVERY_ROUNDS)
    for schedule in RECOVERY_SCHEDULES:
      add(recovery_key(schedule), 'fp', pattern='column', importance='magnitude',
          sparsity=RECOVERY_SPARSITY, schedule=schedule, rounds=RECOVERY_ROUNDS)
  if 'costs' in experiments and cost_model:
    add(scale_cost_key(cost_model, False), 'fedavg', model=cost_model)
    add(scale_cost_key(cost_model, True), 'fp', pattern='column', importance='magnitude',
        sparsity=COST_SPARSITY, model=cost_model)
  if 'prunable' in experiments:
    fp('column', 'magnitude', COST_SPARSITY)
    fp('column', 'magnitude', COST_SPARSITY, EXTENDED, prunable=EXTENDED)
    if cost_model:
      add(scale_cost_key(cost_model, False), 'fedavg', model=cost_model)
      add(scale_cost_key(cost_model, True, EXTENDED), 'fp', pattern='column',
          importance='magnitude', sparsity=COST_SPARSITY, model=cost_model, prunable=EXTENDED)
  # The sweeps coarse to fine (every other sparsity first): an interrupted benchmark still
  # has every curve's shape.
  for pass_sparsities in (sparsities[::2], sparsities[1::2]):
    if 'anchors' in experiments:
      for sparsity in pass_sparsities:
        add(fd_key('column', sparsity), 'fd', pattern='column', rate=sparsity)
    if 'patterns' in experiments:
      for pattern in PATTERNS:
        for sparsity in pass_sparsities:
          fp(pattern, 'magnitude', sparsity)
    if 'importance' in experiments:
      for importance in IMPORTANCE_METHODS:
        for sparsity in pass_sparsities:
          fp('column', importance, sparsity)
  return list(runs.values())


_NOT_CODE = ('reports', 'docs', 'tests', '*.md')


def code_revision() -> str:
  """The last commit that changed the code that runs (`+dirty` when the code has uncommitted
  changes), from the workspace `bazel run` was started in or this file's checkout; `unknown`
  outside git.

  Reports, docs, tests and Markdown files are not code: a benchmark writes its own
  `results.json` while it runs, and a commit of reports or docs changes no result.
  """
  import subprocess  # pylint: disable=g-import-not-at-top
  where = os.environ.get('BUILD_WORKSPACE_DIRECTORY') or os.path.dirname(os.path.realpath(
      __file__))
  code = ['--', ':(top)', *(f':(top,exclude){p}' for p in _NOT_CODE)]
  try:
    head = subprocess.run(['git', '-C', where, 'log', '-1', '--format=%H', *code],
                          capture_output=True, text=True, check=True).stdout.strip()[:12]
    dirty = subprocess.run(['git', '-C', where, 'status', '--porcelain', '--untracked-files=no',
                            *code], capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'
  if not head:
    return 'unknown'
  return head + ('+dirty' if dirty else '')


DERIVED_SETTINGS = ('initial_model', 'corpus')


def is_current(spec: 'RunSpec', result: Optional[dict[str, Any]]) -> bool:
  """Whether `result` stands for `spec` under today's plan: it exists, and a selected round
  was chosen no earlier than the spec's first selectable round (a result chosen under an
  earlier rule is rerun)."""
  if result is None:
    return False
  selected = result.get('selected_round')
  return selected is None or selected >= spec.option_dict.get('select_from_round', 1)


class ResultStore:
  """Results by key in one JSON file, rewritten atomically after each finished piece. Every
  stored result records the code revision that produced it: its own `code_revision` (a
  federated run's, taken when its process started), or else the revision when it is stored."""

  def __init__(self, path: str, settings: dict[str, Any]):
    self.path = path
    self.data: dict[str, Any] = {'settings': settings, 'results': {}}
    if os.path.exists(path):
      try:
        with open(path) as f:
          saved = json.load(f)
      except (OSError, ValueError) as e:
        raise ValueError(f'{path}: unreadable results file ({e}); move it away to start '
                         'over') from None
      # Settings that are not flags (the starting weights, the corpus) are named plainly.
      name = lambda k: k if k in DERIVED_SETTINGS else f'--{k}'  # noqa: E731
      changed = [f'{name(k)}={settings[k]} (the results have {saved["settings"].get(k)})'
                 for k in settings if saved.get('settings', {}).get(k) != settings[k]]
      if changed:
        raise ValueError(f'{path} holds results of other settings: {"; ".join(changed)}; use '
                         'another --output_dir')
      self.data = saved

  def get(self, key: str) -> Optional[dict[str, Any]]:
    return self.data['results'].get(key)

  def put(self, key: str, value: dict[str, Any]) -> None:
    if isinstance(value, dict) and 'code_revision' not in value:
      value = {**value, 'code_revision': code_revision()}
    self.data['results'][key] = value
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(self.data, f, indent=2, default=float)
    os.replace(tmp, self.path)


# The report.


def revision_note(results: dict[str, Any]) -> list[str]:
  """Report lines naming the code revisions of the stored rows when they differ, and which
  rows came from which (rows stored before revisions were recorded count as `unrecorded`)."""
  by_revision: dict[str, list[str]] = {}
  for key, value in results.items():
    if isinstance(value, dict) and ('error_rates' in value or 'round_seconds' in value):
      by_revision.setdefault(value.get('code_revision', 'unrecorded'), []).append(key)
  if len(by_revision) <= 1:
    return [f'All runs: code revision `{next(iter(by_revision), "n/a")}`.', '']
  lines = ['**Rows from several code revisions** (a row is as its revision computed it; rerun '
           'a row by removing its key from `results.json`):', '']
  for revision, keys in sorted(by_revision.items(), key=lambda x: -len(x[1])):
    lines.append(f'- `{revision}`: ' + ', '.join(f'`{k}`' for k in keys))
  return lines + ['']


def pct(value: Optional[float]) -> str:
  return '' if value is None else f'{100 * value:.2f}%'


def wer(results, key, split='test') -> Optional[float]:
  run = results.get(key)
  if not run or not run.get('error_rates'):
    return None
  return run['error_rates'][SPLITS[split]]['wer']


def paired(results, key, baseline=DENSE, split='test') -> Optional[bootstrap.WerComparison]:
  """`key`'s WER against `baseline`'s on the same utterances of `split` (paired bootstrap 95%
  interval); None where either run is missing or predates per-utterance errors."""
  runs = [results.get(k) for k in (baseline, key)]
  if not all(run and run.get('utterance_errors') for run in runs):
    return None
  split_name = SPLITS.get(split, split)
  base, system = (error_rates.UtteranceErrors.from_dict(run['utterance_errors'][split_name])
                  for run in runs)
  return bootstrap.paired_bootstrap(base, system)


def relative(results, key, baseline=DENSE, split='test') -> str:
  """`+4.1% [-1.3%, +9.8%]`: the relative WER difference to `baseline` with its interval."""
  comparison = paired(results, key, baseline, split)
  return comparison.describe_relative() if comparison else ''


def wer_cell(results, key, baseline=DENSE) -> str:
  """A table cell: test WER, and below it the difference to `baseline` with its interval."""
  difference = relative(results, key, baseline) if key != baseline else ''
  return pct(wer(results, key)) + (f'<br>{difference}' if difference else '')


def better(results, key, other) -> tuple[str, str]:
  """(measured, verdict) of "`key` beats `other`": met when the interval of the relative
  difference lies below 0."""
  comparison = paired(results, key, other)
  if comparison is None:
    return f'{pct(wer(results, key))} vs {pct(wer(results, other))}', 'n/a (no intervals)'
  return (f'{pct(comparison.system_wer)} vs {pct(comparison.baseline_wer)}: '
          f'{comparison.describe_relative()}', check(comparison.relative_interval[1] < 0))


def within(results, key, baseline, limit) -> tuple[str, str]:
  """(measured, verdict) of "`key` within `limit` relative of `baseline`": met when the
  interval's upper end is at most `limit`."""
  comparison = paired(results, key, baseline)
  if comparison is None:
    return f'{pct(wer(results, key))} vs {pct(wer(results, baseline))}', 'n/a (no intervals)'
  return (f'{pct(comparison.system_wer)} vs {pct(comparison.baseline_wer)}: '
          f'{comparison.describe_relative()}', check(comparison.within_relative(limit)))


INTERVAL_RULE = ('Differences are relative to the baseline\'s test WER on the same utterances, '
                 'with their paired bootstrap 95% interval (1,000 resamples). A "within x%" '
                 'target is met only when the upper end of the interval is at most x%; "beats" '
                 'when the whole interval is below 0.')


def ratio(a: Optional[float], b: Optional[float]) -> str:
  return '' if a is None or not b else f'{a / b:.2f}x'


def mib(value: float) -> str:
  return f'{value / 2**20:.1f}'


def check(ok: Optional[bool]) -> str:
  return 'n/a' if ok is None else ('met' if ok else '**missed**')


def paired_steady_rounds(base: dict[str, Any], other: dict[str, Any], finetune_start: int
                         ) -> dict[str, list[int]]:
  """The 1-based rounds in which neither run built computations: all of them, those before
  fine-tuning and the fine-tuning ones (keyed by the cost field they average)."""

  def steady(run):
    built = run.get('round_build_seconds')
    if built is None:  # Stored before per-round build times: the first round built.
      built = [1.0] + [0.0] * (len(run['round_seconds']) - 1)
    return {i + 1 for i, seconds in enumerate(built) if seconds == 0}

  common = sorted(steady(base) & steady(other))
  return {'round_seconds': common,
          'prune_round_seconds': [r for r in common if r < finetune_start],
          'finetune_round_seconds': [r for r in common if r >= finetune_start]}


def summary_checks(results: dict[str, Any], settings: dict[str, Any]) -> list[tuple[str, str, str]]:
  """The issue's numbers to reach: (target, measured, met/missed)."""
  rows = []
  if results.get(fp_key('column', 'magnitude', 0.3)) and results.get(DENSE):
    rows.append(('30% column (magnitude): test WER within 10% relative of dense',
                 *within(results, fp_key('column', 'magnitude', 0.3), DENSE, 0.10)))
  for schedule in RECOVERY_SCHEDULES:
    if results.get(recovery_key(schedule)) and results.get(recovery_key(None)):
      rows.append((f'30% column (magnitude), {RECOVERY_ROUNDS} rounds, {schedule} schedule: '
                   f'test WER within 10% relative of dense over {RECOVERY_ROUNDS} rounds',
                   *within(results, recovery_key(schedule), recovery_key(None), 0.10)))
  unified = fp_key('column', 'magnitude', ADAPTIVE_SPARSITY)
  adaptive = fp_key('column', 'magnitude', ADAPTIVE_SPARSITY, 'adaptive')
  if results.get(unified) and results.get(adaptive):
    rows.append(('adaptive beats unified at 50%', *better(results, adaptive, unified)))
  refine = fp_key('column', 'magnitude', REFINEMENT_SPARSITY)
  no_refine = fp_key('column', 'magnitude', REFINEMENT_SPARSITY, 'no_refinement')
  if results.get(refine) and results.get(no_refine):
    rows.append(('refinement beats no refinement at 40%', *better(results, refine, no_refine)))
  for key in ('costs', 'scale_costs', 'costs_extended', 'scale_costs_extended'):
    costs = results.get(key)
    if not costs:
      continue
    where = ', '.join(([f'`{costs["model"]}`'] if costs.get('model') else []) +
                      (['extended prunable set'] if key.endswith('extended') else []))
    where = f' ({where})' if where else ''
    floor = costs.get('floor_ratio')
    if floor is not None and costs['ratios'].get('client_bytes') is not None:
      measured = costs['ratios']['client_bytes']
      rows.append((f'50% column{where}: client bytes per round (down + up) at most the physical '
                   'floor of the prunable set + 1% (index vectors)',
                   f'{measured:.3f}x (floor {floor:.3f}x, overhead {100 * (measured - floor):.2f}'
                   ' points)', check(measured <= floor + 0.01)))
    if key.endswith('extended') and costs['ratios'].get('client_bytes') is not None:
      rows.append((f'50% column{where}: client bytes per round at most 0.45x FedAvg\'s',
                   f'{costs["ratios"]["client_bytes"]:.3f}x',
                   check(costs['ratios']['client_bytes'] <= 0.45)))
      continue
    for name, label, limit in (('round_seconds', 'steady-state round time', 1.0),
                               ('finetune_round_seconds', 'fine-tuning round time', 1.0)):
      measured = costs['ratios'].get(name)
      if measured is not None:
        rows.append((f'50% column{where}: {label} at most {limit}x FedAvg\'s',
                     f'{measured:.2f}x', check(measured <= limit)))
  memory = results.get('memory')
  if memory:
    for field, what in (('tensor_peak_bytes', 'tensor memory: parameters, activations, '
                         'gradients, temporaries'), ('peak_rss_bytes', 'process RSS')):
      dense_value, pruned_value = memory['dense'].get(field), memory['pruned'].get(field)
      if dense_value and pruned_value:
        measured = pruned_value / dense_value
        rows.append((f'{memory["model"]} client step peak memory clearly below dense ({what})',
                     f'{measured:.2f}x', check(measured < 0.95)))
  return rows


def _phases_section(phases: Optional[dict[str, Any]]) -> list[str]:
  """Where a round's time goes, FedAvg against 50% column pruning of the cost model."""
  if not phases:
    return []
  from fl_compression.benchmarks import round_phases  # pylint: disable=g-import-not-at-top
  base = phases.get(DENSE)
  pruned = phases.get(fp_key('column', 'magnitude', COST_SPARSITY))
  if not base or not pruned:
    return []
  lines = ['', f'### Where a round\'s time goes (`{phases["model"]}`, from its initialization)',
           '', 'Growing prefixes of one round on the same state and clients (distributor; + '
           'client work; + aggregator; the whole round), each run once untimed and '
           f'{phases["repeats"]} times timed (median); a phase is its prefix less the previous '
           'one. The pruning round\'s distributor holds the importance scores, masks, shrink '
           'and broadcast, its finalizer the expansion and server update.', '',
           '| phase | FedAvg, s | federated pruning, s | difference, s |', '|---|---|---|---|']
  for phase in round_phases.PHASES + ('round',):
    lines.append(f'| {phase} | {base[phase]:.2f} | {pruned[phase]:.2f} | '
                 f'{pruned[phase] - base[phase]:+.2f} |')
  return lines


def _prunable_section(results: dict[str, Any]) -> list[str]:
  """The paper's prunable set against the extended one at 50% column: bytes, floor, WER."""
  rows = []
  for model_key, paper_costs, extended_costs in (
      ('tiny', 'costs', 'costs_extended'), ('cost model', 'scale_costs', 'scale_costs_extended')):
    for label, key in (('paper', paper_costs), ('extended', extended_costs)):
      costs = results.get(key)
      if not costs or costs.get('floor_ratio') is None:
        continue
      model = costs.get('model', 'tiny')
      run_key = fp_key('column', 'magnitude', COST_SPARSITY,
                       '' if label == 'paper' else EXTENDED)
      test = relative(results, run_key) if model == 'tiny' else 'not evaluated'
      rows.append(f'| `{model}` | {label} | {costs["ratios"]["client_bytes"]:.3f}x | '
                  f'{costs["floor_ratio"]:.3f}x | {costs["prunable_fraction"]:.3f} | '
                  f'{pct(wer(results, run_key)) if model == "tiny" else ""} | {test} |')
    del model_key
  if not rows:
    return []
  return ['', f'## 7. Prunable sets at {COST_SPARSITY:g} column sparsity: the paper\'s and the '
          'extended one', '',
          'The paper prunes the blocks\' feed-forward and attention kernels; `--fp_prunable='
          'extended` also prunes the convolution modules\' pointwise kernels and the '
          'subsampling projection. The floor is the client bytes of the reduced model without '
          'its int32 index vectors (dense bytes minus the removed kernel entries, down and up), '
          'relative to FedAvg\'s; the prunable fraction is the share of the model\'s '
          'parameters in the set.', '',
          '| model | prunable set | client bytes per round | floor | prunable fraction | '
          'test WER | vs dense [95% CI] |', '|---|---|---|---|---|---|---|'] + rows


def _cost_table(costs: dict[str, Any]) -> list[str]:
  """Rows of FedAvg's and federated pruning's costs per round and their ratios."""
  base, pruned = costs['fedavg'], costs['pruned']
  lines = ['| | FedAvg | federated pruning | ratio |', '|---|---|---|---|']
  for label, name, fmt in (
      ('bytes down per client', 'client_bytes_down', lambda v: f'{int(v):,}'),
      ('bytes up per client', 'client_bytes_up', lambda v: f'{int(v):,}'),
      ('client parameter bytes', 'client_parameter_bytes', lambda v: f'{int(v):,}'),
      ('client step time, s (batch of real utterances)', 'client_step_seconds',
       lambda v: f'{v:.3f}'),
      ('steady-state round time, s', 'round_seconds', lambda v: f'{v:.2f}'),
      ('round time, s: pruning and refining rounds', 'prune_round_seconds', lambda v: f'{v:.2f}'),
      ('round time, s: fine-tuning rounds (reduced server model)', 'finetune_round_seconds',
       lambda v: f'{v:.2f}'),
      ('computation build time, s (once per stage)', 'build_seconds',
       lambda v: f'{v:.1f}')):
    if base.get(name) is not None and pruned.get(name) is not None:
      if name in costs.get('rounds', {}):
        label = f'{label} ({_round_list(costs["rounds"][name])})'
      lines.append(f'| {label} | {fmt(base[name])} | {fmt(pruned[name])} | '
                   f'{ratio(pruned[name], base[name])} |')
  return lines


def render_report(results: dict[str, Any], settings: dict[str, Any], figures: Sequence[str]
                  ) -> str:
  sparsities = settings['sparsities']
  dense = wer(results, DENSE)
  lines = ['# Federated pruning experiments', '',
           f'`{settings["command"]}`', '',
           f'All runs start from `{settings["initial_model_dir"]}` and train '
           f'{settings["total_rounds"]} rounds of {settings["clients_per_round"]} speakers '
           f'(the same speakers in every run), batch {settings["batch_size"]}, client Adam '
           f'{settings["client_learning_rate"]:g}, server SGD 1.0. Phases: pruning rounds '
           f'1..{settings["refine_start"] - 1}, refining {settings["refine_start"]}..'
           f'{settings["finetune_start"] - 1}, fine-tuning {settings["finetune_start"]}..'
           f'{settings["total_rounds"]} (constant schedule). WER is corpus-level with greedy '
           'decoding; *test* speakers never appear in training, *dev* speakers do. '
           f'Machine: {settings.get("machine", "")}.', '']
  initial = results.get('initial')
  if initial:
    lines += [f'Starting model: test WER {pct(initial[SPLITS["test"]]["wer"])}, dev WER '
              f'{pct(initial[SPLITS["dev"]]["wer"])}.', '']
  lines += revision_note(results)
  if settings.get('missing_runs'):
    lines += [f'**Not run yet** ({len(settings["missing_runs"])}; the same command resumes '
              f'them): ' + ', '.join(f'`{k}`' for k in settings['missing_runs']) + '.', '']
  checks = summary_checks(results, settings)
  if checks:
    lines += ['## Numbers to reach', '', INTERVAL_RULE, '', '| target | measured | |',
              '|---|---|---|']
    lines += [f'| {a} | {b} | {c} |' for a, b, c in checks]
    lines.append('')
  for figure in figures:
    lines += [f'![{figure}]({figure})', '']

  header = '| | ' + ' | '.join(f'{s:g}' for s in sparsities) + ' |'
  rule = '|---' * (len(sparsities) + 1) + '|'
  lines += ['## 1. Test WER against sparsity, per pattern (weight magnitude, L2)', '',
            f'Dense FedAvg, same rounds: test {pct(dense)}, dev {pct(wer(results, DENSE, "dev"))}. '
            'Under each WER: its difference to dense, relative, with the paired 95% interval.',
            '', header, rule]
  for pattern in PATTERNS:
    cells = [wer_cell(results, fp_key(pattern, 'magnitude', s)) for s in sparsities]
    if any(cells):
      lines.append(f'| {pattern} | ' + ' | '.join(cells) + ' |')
  for label, key_fn in (('federated dropout (random column units; full model)',
                         lambda s: fd_key('column', s)),
                        ('tfmot prune_low_magnitude, centralized (unstructured)', tfmot_key)):
    cells = [wer_cell(results, key_fn(s)) for s in sparsities]
    if any(cells):
      lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  removed = results.get('zero_parameter_ratio', {})
  if removed:
    lines += ['', 'Zero-parameter ratio of the prunable variables (the fraction actually removed; '
              'column pruning of a feed-forward `dense_in` also removes rows of `dense_out`):',
              '', header, rule]
    for pattern in PATTERNS:
      if pattern in removed:
        lines.append(f'| {pattern} | ' + ' | '.join(
            f'{removed[pattern][f"{s:g}"]:.3f}' for s in sparsities) + ' |')
  tfmot_rows = [(s, results.get(tfmot_key(s))) for s in sparsities]
  if any(r for _, r in tfmot_rows):
    lines += ['', 'tfmot runs: ' + '; '.join(
        f'{s:g}: {r["steps"]} steps, {100 * r["achieved_sparsity"]:.1f}% of prunable weights zero'
        for s, r in tfmot_rows if r) + '.']

  lines += ['', '## 2. Importance methods (column pattern, L2), test WER', '', header, rule]
  for method in IMPORTANCE_METHODS:
    cells = [wer_cell(results, fp_key('column', method, s)) for s in sparsities]
    if any(cells):
      lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
  lines += ['', 'gradient: momentum of the gradient magnitude; weight_gradient: weight magnitude '
            'times that momentum. Their runs start with one dense round (sparsity 0), so every '
            'unit has a momentum before the first mask; the rest of the run is as for '
            'magnitude.']

  lines += ['', f'## 3. Unified against adaptive sparsity at {ADAPTIVE_SPARSITY:g} (column, '
            'magnitude)', '', '| sparsity | test WER | vs dense [95% CI] | dev WER | '
            'client parameters |', '|---|---|---|---|---|']
  for label, key in (('unified', fp_key('column', 'magnitude', ADAPTIVE_SPARSITY)),
                     ('adaptive', fp_key('column', 'magnitude', ADAPTIVE_SPARSITY, 'adaptive'))):
    run = results.get(key)
    if run:
      lines.append(f'| {label} | {pct(wer(results, key))} | {relative(results, key)} | '
                   f'{pct(wer(results, key, "dev"))} | {run["client_parameters"]:,} |')

  lines += ['', f'## 4. With and without mask refinement at {REFINEMENT_SPARSITY:g} (column, '
            'magnitude)', '', '| | test WER | vs dense [95% CI] | dev WER | mask changes (all '
            'rounds) |', '|---|---|---|---|---|']
  for label, key in (('with refinement', fp_key('column', 'magnitude', REFINEMENT_SPARSITY)),
                     ('without', fp_key('column', 'magnitude', REFINEMENT_SPARSITY,
                                        'no_refinement'))):
    run = results.get(key)
    if run:
      lines.append(f'| {label} | {pct(wer(results, key))} | {relative(results, key)} | '
                   f'{pct(wer(results, key, "dev"))} | {int(sum(run.get("mask_changes", [])))} |')

  costs = results.get('costs')
  if costs:
    lines += ['', f'## 5. Costs per round at {COST_SPARSITY:g} column sparsity against FedAvg '
              '(same clients)', '']
    lines += _cost_table(costs)
  scale = results.get('scale_costs')
  if scale:
    lines += ['', f'### The same costs with `{scale["model"]}` '
              f'({scale["parameters"]:,} parameters)', '',
              f'FedAvg and {COST_SPARSITY:g} column pruning (magnitude) of `{scale["model"]}` '
              'from its initialization, on the same clients, rounds and optimizers as above, '
              'not evaluated (their WER says nothing at this budget): the costs at a model '
              'whose client steps take a larger share of a round.', '']
    lines += _cost_table(scale)
  lines += _phases_section(results.get('round_phases'))
  memory = results.get('memory')
  if memory:
    dense_m, pruned_m = memory['dense'], memory['pruned']
    lines += ['', f'### One client training step of `{memory["model"]}`, dense against '
              f'{COST_SPARSITY:g} column-pruned (separate fresh processes)', '',
              f'Batch {dense_m["batch_size"]} x {dense_m["frames"]} frames, '
              f'{dense_m["label_length"]} tokens, plain SGD.', '',
              '| | dense | pruned | ratio |', '|---|---|---|---|']
    for label, name, fmt in (('parameters', 'parameters', lambda v: f'{int(v):,}'),
                             ('parameter MiB', 'parameter_bytes', mib),
                             ('peak RSS MiB', 'peak_rss_bytes', mib),
                             ('step working MiB (RSS)', 'step_working_bytes', mib),
                             ('step tensors MiB (activations, gradients, temporaries)',
                              'step_tensor_bytes', mib),
                             ('tensor memory MiB (parameters + step tensors)',
                              'tensor_peak_bytes', mib),
                             ('step time s (median)', 'step_seconds', lambda v: f'{v:.2f}')):
      if dense_m.get(name) is None or pruned_m.get(name) is None:
        continue  # Measured before this field existed.
      lines.append(f'| {label} | {fmt(dense_m[name])} | {fmt(pruned_m[name])} | '
                   f'{ratio(pruned_m[name], dense_m[name])} |')

  recovery = [(label, key, results.get(key)) for label, key in
              [('dense FedAvg', recovery_key(None))] +
              [(f'{RECOVERY_SPARSITY:.0%} column, {schedule} schedule', recovery_key(schedule))
               for schedule in RECOVERY_SCHEDULES]]
  if any(run for _, _, run in recovery):
    phases = settings['recovery_phases']
    lines += ['', f'## 6. Recovery over a longer budget: {RECOVERY_SPARSITY:.0%} column '
              f'pruning in {RECOVERY_ROUNDS} rounds', '',
              f'The same clients per round, data and optimizers as above, {RECOVERY_ROUNDS} '
              f'rounds instead of {settings["total_rounds"]}: pruning rounds 1..'
              f'{phases["refine_start"] - 1}, refining {phases["refine_start"]}..'
              f'{phases["finetune_start"] - 1}, fine-tuning {phases["finetune_start"]}..'
              f'{RECOVERY_ROUNDS}. The step schedule raises the sparsity in 4 equal steps over '
              'the pruning rounds; the constant one prunes to the target in round 1.', '',
              '| run | test WER | dev WER | relative to dense (test) [95% CI] | client '
              'parameters |', '|---|---|---|---|---|']
    for label, key, run in recovery:
      if run:
        difference = (relative(results, key, recovery_key(None))
                      if key != recovery_key(None) else '')
        lines.append(f'| {label} | {pct(wer(results, key))} | {pct(wer(results, key, "dev"))} '
                     f'| {difference} | {run["model_parameters"]:,} |')

  lines += _prunable_section(results)
  lines += ['', '## All runs', '',
            '| run | test WER | vs dense [95% CI] | dev WER | test CER | model parameters | '
            'build s | mean round s | wall s |', '|---|---|---|---|---|---|---|---|---|']
  for key, run in results.items():
    if not isinstance(run, dict) or 'error_rates' not in run:
      continue
    rates = run['error_rates'] or {}  # None: a cost run, not evaluated.
    cer = rates.get(SPLITS['test'], {}).get('cer')
    lines.append(
        f'| {key} | {pct(wer(results, key))} | '
        f'{relative(results, key) if key != DENSE else ""} | {pct(wer(results, key, "dev"))} | '
        f'{pct(cer)} | {run.get("model_parameters") or 0:,} | '
        f'{run.get("build_seconds") or 0:.1f} | {run.get("mean_round_seconds") or 0:.1f} | '
        f'{run.get("wall_seconds") or 0:.0f} |')
  return '\n'.join(lines) + '\n'


def _round_list(rounds: Sequence[int]) -> str:
  return ('round ' if len(rounds) == 1 else 'rounds ') + ', '.join(str(r) for r in rounds)


def plot(results: dict[str, Any], settings: dict[str, Any], output_dir: str) -> list[str]:
  """PNG figures: WER against sparsity per pattern (with anchors), and per importance method."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  sparsities = settings['sparsities']
  dense = wer(results, DENSE)
  figures = []

  def series(key_fn):
    points = [(s, wer(results, key_fn(s))) for s in sparsities]
    return [s for s, w in points if w is not None], [100 * w for _, w in points if w is not None]

  panels = [
      ('wer_vs_sparsity.png', 'Test WER against sparsity (magnitude importance)',
       [(p, lambda s, p=p: fp_key(p, 'magnitude', s), '-o') for p in PATTERNS] +
       [('federated dropout (column)', lambda s: fd_key('column', s), ':x'),
        ('tfmot centralized', tfmot_key, '--^')]),
      ('importance.png', 'Test WER by importance method (column)',
       [(m, lambda s, m=m: fp_key('column', m, s), '-o') for m in IMPORTANCE_METHODS]),
  ]
  for filename, title, lines in panels:
    drawn = [(label, *series(key_fn), style) for label, key_fn, style in lines]
    drawn = [d for d in drawn if d[1]]
    if not drawn:
      continue
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, xs, ys, style in drawn:
      ax.plot(xs, ys, style, label=label)
    if dense is not None:
      ax.axhline(100 * dense, color='gray', linestyle='-.', label='dense FedAvg')
    ax.set_xlabel('target sparsity')
    ax.set_ylabel('test WER (%)')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, filename), dpi=110)
    plt.close(fig)
    figures.append(filename)
  return figures
