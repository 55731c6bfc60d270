"""The layer heterogeneity paper's findings, each decided by a stated rule on measured rankings.

Input: the `ranking.json` files of `//tff_programs:layer_importance`, each labelled with its
configuration (a named model) and its training (for example `shipped`, `seed1`), and the
configurations' parameter counts; optionally the signature history of one training (its
`signatures.csv`). Each finding gets a verdict, the numbers that decide it, and its rule:

- `reproduced`: every part of the rule holds;
- `partly`: some parts hold, some do not;
- `not reproduced`: no part holds;
- `undecided`: the inputs cannot decide it (the reason is given).
"""

import csv
import dataclasses
import itertools
from typing import Any, Optional, Sequence

import numpy as np

from fl_compression.importance import stability

# "Similar pictures": re-initialization and re-randomization order the blocks alike.
SIMILAR_SPEARMAN = 0.7
# "Fairly stable": rankings of two trainings of one configuration agree at least this much.
STABLE_SPEARMAN = 0.5
# A signature "shares features" with the reset damage / is "stable" across trainings.
SIGNATURE_SPEARMAN = 0.5
ATTENTION = ('attention/query', 'attention/key', 'attention/value', 'attention/output')

REPRODUCED, PARTLY, NOT_REPRODUCED, UNDECIDED = (
    'reproduced', 'partly', 'not reproduced', 'undecided')


@dataclasses.dataclass(frozen=True)
class Ranked:
  """One training's ranking: its configuration, label and `ranking.json` content."""

  config: str
  label: str
  ranking: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Finding:
  key: str
  claim: str
  verdict: str
  evidence: str
  rule: str

  def as_dict(self) -> dict[str, str]:
    return dataclasses.asdict(self)


def _verdict(parts: Sequence[bool]) -> str:
  if all(parts):
    return REPRODUCED
  return PARTLY if any(parts) else NOT_REPRODUCED


def _median_damage(ranking: dict[str, Any]) -> float:
  return float(np.median([b['reinit_relative'] for b in ranking['blocks']]))


def _ambient_fraction(ranking: dict[str, Any]) -> float:
  return sum(b['class'] == 'ambient' for b in ranking['blocks']) / len(ranking['blocks'])


def size(ranked: Sequence[Ranked], parameters: dict[str, int]) -> Finding:
  """Larger models are more robust to resets and have more ambient layers: per depth, the
  largest against the smallest configuration, on the trainings whose labels they share."""
  claim = 'Larger models are more robust to resets and have more ambient layers.'
  rule = ('Per depth, largest against smallest configuration, same training label (equal budget '
          'and seed): the larger has the lower median relative WER change on re-initialization '
          '(more robust, by at least 0.1 point) and a larger fraction of ambient blocks (by at '
          'least 1 point), in every depth compared.')
  by_depth: dict[int, set[str]] = {}
  for r in ranked:
    by_depth.setdefault(len(r.ranking['blocks']), set()).add(r.config)
  parts, evidence, reasons = [], [], []
  for depth, configs in sorted(by_depth.items()):
    if len(configs) < 2:
      continue
    ordered = sorted(configs, key=lambda name: parameters[name])
    small, large = ordered[0], ordered[-1]
    labels = ({r.label for r in ranked if r.config == small}
              & {r.label for r in ranked if r.config == large})
    if not labels:
      reasons.append(f'`{small}` and `{large}` share no training label')
      continue
    pick = lambda name: [r.ranking for r in ranked if r.config == name and r.label in labels]
    # Percent, at the rounding the report shows.
    damage = {n: round(100 * float(np.mean([_median_damage(r) for r in pick(n)])), 1)
              for n in (small, large)}
    ambient = {n: round(100 * float(np.mean([_ambient_fraction(r) for r in pick(n)])))
               for n in (small, large)}
    parts += [damage[large] < damage[small], ambient[large] > ambient[small]]
    evidence.append(
        f'{depth} blocks: `{large}` ({parameters[large]:,} parameters) against `{small}` '
        f'({parameters[small]:,}), trainings {", ".join(sorted(labels))}: median re-init WER '
        f'change {damage[large]:+.1f}% against {damage[small]:+.1f}%; ambient blocks '
        f'{ambient[large]:.0f}% against {ambient[small]:.0f}%.')
  if not parts:
    return Finding('size', claim, UNDECIDED,
                   '; '.join(reasons) or 'no two configurations of one depth were ranked', rule)
  return Finding('size', claim, _verdict(parts), ' '.join(evidence), rule)


def _rho(value: Optional[float]) -> str:
  return 'n/a (constant)' if value is None else f'{value:+.2f}'


def _at_least(value: Optional[float], bound: float) -> bool:
  """`value` meets `bound` at the two decimals the report shows; an undefined one does not."""
  return value is not None and round(value, 2) >= bound


def reinit_like_rerand(ranked: Sequence[Ranked]) -> Finding:
  claim = 'Re-initialization and re-randomization give similar pictures.'
  rule = (f'Spearman\'s rank correlation across blocks between the re-init WER and the mean '
          f're-rand WER is at least {SIMILAR_SPEARMAN} in every ranking (an undefined one, '
          'where either side is constant, does not count as similar).')
  rhos = {f'{r.config} {r.label}': stability.spearman(
      [b['reinit_wer'] for b in r.ranking['blocks']],
      [b['rerand_wer'] for b in r.ranking['blocks']]) for r in ranked}
  if not rhos:
    return Finding('reinit_like_rerand', claim, UNDECIDED, 'no rankings', rule)
  evidence = 'Spearman ' + ', '.join(f'{k} {_rho(v)}' for k, v in rhos.items()) + '.'
  return Finding('reinit_like_rerand', claim,
                 _verdict([_at_least(v, SIMILAR_SPEARMAN) for v in rhos.values()]), evidence,
                 rule)


def _pair_means(ranked: Sequence[Ranked], values) -> dict[str, tuple[Optional[float], int]]:
  """Per configuration with two or more trainings: the mean pairwise Spearman of `values`
  (a function of a ranking) over the pairs where it is defined (None if none is), and the
  number of those pairs."""
  found = {}
  for config in sorted({r.config for r in ranked}):
    entries = [r.ranking for r in ranked if r.config == config]
    if len(entries) < 2:
      continue
    rhos = [stability.spearman(values(a), values(b))
            for a, b in itertools.combinations(entries, 2)]
    rhos = [rho for rho in rhos if rho is not None]
    found[config] = (float(np.mean(rhos)) if rhos else None, len(rhos))
  return found


def _pairs_text(config: str, mean: Optional[float], pairs: int) -> str:
  return f'`{config}` {_rho(mean)} over {pairs} pairs'


def stable_across_trainings(ranked: Sequence[Ranked], parameters: dict[str, int]
                            ) -> list[Finding]:
  claim = 'The ranking is fairly stable when the whole experiment is rerun.'
  rule = (f'Mean pairwise Spearman of the blocks\' re-init WER between trainings of one '
          f'configuration is at least {STABLE_SPEARMAN}, for each configuration with two or '
          'more trainings.')
  larger_claim = 'More so for larger models.'
  larger_rule = ('Of the configurations with two or more trainings (of any depth), the one with '
                 'the most parameters has a higher mean pairwise Spearman than the one with the '
                 'fewest.')
  means = _pair_means(ranked, lambda r: [b['reinit_wer'] for b in r['blocks']])
  if not means:
    reason = 'no configuration has two trainings'
    return [Finding('stable', claim, UNDECIDED, reason, rule),
            Finding('stable_when_larger', larger_claim, UNDECIDED, reason, larger_rule)]
  evidence = ', '.join(_pairs_text(c, m, n) for c, (m, n) in means.items()) + '.'
  found = [Finding('stable', claim,
                   _verdict([_at_least(m, STABLE_SPEARMAN) for m, _ in means.values()]),
                   evidence, rule)]
  defined = {c: m for c, (m, _) in means.items() if m is not None}
  if len(defined) < 2:
    found.append(Finding('stable_when_larger', larger_claim, UNDECIDED,
                         'fewer than two configurations have two trainings with a defined '
                         'correlation', larger_rule))
  else:
    ordered = sorted(defined, key=lambda c: parameters[c])
    small, large = ordered[0], ordered[-1]
    found.append(Finding(
        'stable_when_larger', larger_claim,
        _verdict([round(defined[large], 2) > round(defined[small], 2)]),
        f'`{large}` {defined[large]:+.2f} against `{small}` {defined[small]:+.2f}.',
        larger_rule))
  return found


class SignatureHistoryError(ValueError):
  """A `signatures.csv` that is not one; the message says what is wrong."""


def read_signature_history(path: str) -> list[tuple[int, dict[str, list[float]]]]:
  """`signatures.csv` of a training: (step, {module: per-block signature}) in step order."""
  rows = []
  with open(path) as f:
    reader = csv.DictReader(f)
    if not reader.fieldnames or reader.fieldnames[0] != 'step':
      raise SignatureHistoryError('not a signatures.csv (its first column is not step)')
    for line, row in enumerate(reader, start=2):
      if None in row or None in row.values():
        raise SignatureHistoryError(f'line {line} has {len(row)} fields, the header '
                                    f'{len(reader.fieldnames)}')
      try:
        step = int(row.pop('step'))
        modules: dict[str, dict[int, float]] = {}
        for key, value in row.items():
          _, rest = key.split('/', 1)
          module, block = rest.rsplit('/block_', 1)
          modules.setdefault(module, {})[int(block)] = float(value)
      except ValueError as e:
        raise SignatureHistoryError(f'line {line}: {e}') from None
      rows.append((step, {m: [v[b] for b in sorted(v)] for m, v in modules.items()}))
  if not rows:
    raise SignatureHistoryError('no rows')
  return sorted(rows, key=lambda r: r[0])


def _spread(signature: dict[str, list[float]], modules: Sequence[str]) -> float:
  """Mean over `modules` of the standard deviation of the signature across blocks."""
  return float(np.mean([np.std(signature[m]) for m in modules]))


def attention_signatures(ranked: Sequence[Ranked], reference: Ranked,
                         history: Optional[list[tuple[int, dict[str, list[float]]]]] = None
                         ) -> list[Finding]:
  """The numerical-signature findings, read from the rankings' final-step signatures (the
  `reference` training for the single-training parts) and from `history`."""
  signature = reference.ranking.get('signatures')
  name = f'`{reference.config}` {reference.label}'
  found = []
  strong_claim = 'Attention matrices show a strong per-layer signature.'
  strong_rule = ('The attention matrices\' signatures vary more across blocks than the other '
                 'modules\'.')
  if signature:
    others = [m for m in signature if m not in ATTENTION]
    attention = round(_spread(signature, ATTENTION), 3)
    rest = round(_spread(signature, others), 3)
    found.append(Finding(
        'signature_strong', strong_claim, _verdict([attention > rest]),
        f'{name}: spread across blocks (standard deviation of the signature) {attention:.3f} '
        f'for the attention matrices against {rest:.3f} for the other modules.', strong_rule))
  else:
    found.append(Finding('signature_strong', strong_claim, UNDECIDED,
                         f'{name} has no signatures', strong_rule))
  emerges_claim = 'The signature emerges during training.'
  emerges_rule = ('The attention matrices\' spread across blocks grows from the first logged '
                  'step to the last.')
  if history and len(history) >= 2:
    (first_step, first), (last_step, last) = history[0], history[-1]
    early, late = round(_spread(first, ATTENTION), 3), round(_spread(last, ATTENTION), 3)
    found.append(Finding(
        'signature_emerges', emerges_claim, _verdict([late > early]),
        f'{name}: attention spread {early:.3f} at step {first_step:,}, {late:.3f} at step '
        f'{last_step:,}.', emerges_rule))
  else:
    found.append(Finding('signature_emerges', emerges_claim, UNDECIDED,
                         'no signature history of two or more logged steps', emerges_rule))
  stable_claim = 'The signature is stable across seeds.'
  stable_rule = (f'Mean pairwise Spearman of the attention signatures (all four matrices, every '
                 f'block) between trainings of the reference\'s configuration at least '
                 f'{SIGNATURE_SPEARMAN}.')
  with_signatures = [r for r in ranked if r.ranking.get('signatures')]
  stable = _pair_means(with_signatures, lambda r: [
      v for m in ATTENTION for v in r['signatures'][m]])
  if reference.config in stable and stable[reference.config][0] is not None:
    mean, pairs = stable[reference.config]
    found.append(Finding(
        'signature_stable', stable_claim, _verdict([_at_least(mean, SIGNATURE_SPEARMAN)]),
        _pairs_text(reference.config, mean, pairs) + '.', stable_rule))
  else:
    found.append(Finding('signature_stable', stable_claim, UNDECIDED,
                         f'`{reference.config}` has no two trainings with comparable '
                         'signatures', stable_rule))
  shares_claim = 'The signature shares features with the re-init WER.'
  shares_rule = (f'Mean absolute Spearman (across blocks, signature against re-init WER) over '
                 f'the attention matrices at least {SIGNATURE_SPEARMAN}; an undefined one counts '
                 'as 0.')
  correlations = reference.ranking.get('signature_correlations') or {}
  if signature and correlations:
    values = [correlations.get(m) for m in ATTENTION]
    mean = float(np.mean([abs(v) if v is not None else 0.0 for v in values]))
    found.append(Finding(
        'signature_shares_damage', shares_claim, _verdict([_at_least(mean, SIGNATURE_SPEARMAN)]),
        f'{name}: Spearman between signature and re-init WER across blocks: '
        + ', '.join(f'{m} {_rho(v)}' for m, v in zip(ATTENTION, values))
        + f' (mean absolute {mean:.2f}).', shares_rule))
  else:
    found.append(Finding('signature_shares_damage', shares_claim, UNDECIDED,
                         f'{name} has no signature correlations', shares_rule))
  return found


def decide(ranked: Sequence[Ranked], parameters: dict[str, int], reference: Ranked,
           history: Optional[list[tuple[int, dict[str, list[float]]]]] = None) -> list[Finding]:
  """Every finding, in the paper's order. `reference` is the training whose single-training
  signature findings are reported (the shipped model)."""
  missing = sorted({r.config for r in ranked} - set(parameters))
  if missing:
    raise ValueError(f'no parameter count for {", ".join(missing)}')
  return ([size(ranked, parameters), reinit_like_rerand(ranked)]
          + stable_across_trainings(ranked, parameters)
          + attention_signatures(ranked, reference, history)
          + [Finding('normalization', 'GroupNorm yields ambient layers where BatchNorm '
                     'interferes.', UNDECIDED, 'not run: no BatchNorm variant was trained', '')])


def render(found: Sequence[Finding]) -> str:
  cell = lambda text: text.replace('|', '\\|')  # noqa: E731
  lines = ['| finding | verdict | measured | rule |', '|---|---|---|---|']
  for f in found:
    lines.append(f'| {cell(f.claim)} | **{f.verdict}** | {cell(f.evidence)} | '
                 f'{cell(f.rule or "-")} |')
  return '\n'.join(lines)
