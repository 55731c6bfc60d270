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
  """Larger models are more robust to resets and have more ambient layers: for the largest and
  smallest configuration of one depth, on the trainings they share a label with."""
  claim = 'Larger models are more robust to resets and have more ambient layers.'
  rule = ('Same depth, same training label (equal budget and seed): the larger configuration '
          'has the lower median relative WER change on re-initialization (more robust) and a '
          'strictly larger fraction of ambient blocks.')
  by_depth: dict[int, set[str]] = {}
  for r in ranked:
    by_depth.setdefault(len(r.ranking['blocks']), set()).add(r.config)
  candidates = [sorted(c, key=lambda name: parameters[name])
                for c in by_depth.values() if len(c) >= 2]
  if not candidates:
    return Finding('size', claim, UNDECIDED, 'no two configurations of one depth were ranked',
                   rule)
  small, large = candidates[0][0], candidates[0][-1]
  labels = ({r.label for r in ranked if r.config == small}
            & {r.label for r in ranked if r.config == large})
  if not labels:
    return Finding('size', claim, UNDECIDED,
                   f'`{small}` and `{large}` share no training label', rule)
  pick = lambda name: [r.ranking for r in ranked if r.config == name and r.label in labels]
  damage = {name: float(np.mean([_median_damage(r) for r in pick(name)]))
            for name in (small, large)}
  ambient = {name: float(np.mean([_ambient_fraction(r) for r in pick(name)]))
             for name in (small, large)}
  evidence = (f'`{large}` ({parameters[large]:,} parameters) against `{small}` '
              f'({parameters[small]:,}), trainings {", ".join(sorted(labels))}: median '
              f're-init WER change {100 * damage[large]:+.1f}% against '
              f'{100 * damage[small]:+.1f}%; ambient blocks {100 * ambient[large]:.0f}% against '
              f'{100 * ambient[small]:.0f}%.')
  return Finding('size', claim, _verdict([damage[large] < damage[small],
                                          ambient[large] > ambient[small]]), evidence, rule)


def reinit_like_rerand(ranked: Sequence[Ranked]) -> Finding:
  claim = 'Re-initialization and re-randomization give similar pictures.'
  rule = (f'Spearman\'s rank correlation across blocks between the re-init WER and the mean '
          f're-rand WER is at least {SIMILAR_SPEARMAN} in every ranking.')
  rhos = {f'{r.config} {r.label}': stability.spearman(
      [b['reinit_wer'] for b in r.ranking['blocks']],
      [b['rerand_wer'] for b in r.ranking['blocks']]) for r in ranked}
  known = {k: v for k, v in rhos.items() if v is not None}
  if not known:
    return Finding('reinit_like_rerand', claim, UNDECIDED,
                   'every ranking has constant WERs', rule)
  evidence = 'Spearman ' + ', '.join(f'{k} {v:+.2f}' for k, v in known.items()) + '.'
  return Finding('reinit_like_rerand', claim,
                 _verdict([v >= SIMILAR_SPEARMAN for v in known.values()]), evidence, rule)


def _pair_means(ranked: Sequence[Ranked], values) -> dict[str, tuple[float, int]]:
  """Per configuration with two or more trainings: the mean pairwise Spearman of `values`
  (a function of a ranking) and the number of pairs with a defined correlation."""
  found = {}
  configs = sorted({r.config for r in ranked})
  for config in configs:
    entries = [r.ranking for r in ranked if r.config == config]
    rhos = [stability.spearman(values(a), values(b))
            for a, b in itertools.combinations(entries, 2)]
    rhos = [rho for rho in rhos if rho is not None]
    if rhos:
      found[config] = (float(np.mean(rhos)), len(rhos))
  return found


def stable_across_trainings(ranked: Sequence[Ranked], parameters: dict[str, int]
                            ) -> list[Finding]:
  claim = 'The ranking is fairly stable when the whole experiment is rerun.'
  rule = (f'Mean pairwise Spearman of the blocks\' re-init WER between trainings of one '
          f'configuration is at least {STABLE_SPEARMAN}, for each configuration with two or '
          'more trainings.')
  means = _pair_means(ranked, lambda r: [b['reinit_wer'] for b in r['blocks']])
  if not means:
    return [Finding('stable', claim, UNDECIDED, 'no configuration has two trainings', rule),
            Finding('stable_when_larger', 'More so for larger models.', UNDECIDED,
                    'no configuration has two trainings', '')]
  evidence = ', '.join(f'`{c}` {m:+.2f} over {n} pairs' for c, (m, n) in means.items()) + '.'
  found = [Finding('stable', claim, _verdict([m >= STABLE_SPEARMAN for m, _ in means.values()]),
                   evidence, rule)]
  larger_rule = ('Of the configurations with two or more trainings, the one with more '
                 'parameters has the higher mean pairwise Spearman.')
  if len(means) < 2:
    found.append(Finding('stable_when_larger', 'More so for larger models.', UNDECIDED,
                         f'only `{next(iter(means))}` has two or more trainings', larger_rule))
  else:
    ordered = sorted(means, key=lambda c: parameters[c])
    small, large = ordered[0], ordered[-1]
    found.append(Finding(
        'stable_when_larger', 'More so for larger models.',
        _verdict([means[large][0] > means[small][0]]),
        f'`{large}` {means[large][0]:+.2f} against `{small}` {means[small][0]:+.2f}.',
        larger_rule))
  return found


def read_signature_history(path: str) -> list[tuple[int, dict[str, list[float]]]]:
  """`signatures.csv` of a training: (step, {module: per-block signature}) in step order."""
  rows = []
  with open(path) as f:
    for row in csv.DictReader(f):
      step = int(row.pop('step'))
      modules: dict[str, dict[int, float]] = {}
      for key, value in row.items():
        _, rest = key.split('/', 1)
        module, block = rest.rsplit('/block_', 1)
        modules.setdefault(module, {})[int(block)] = float(value)
      rows.append((step, {m: [v[b] for b in sorted(v)] for m, v in modules.items()}))
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
  if not signature:
    return [Finding('signature_strong', 'Attention matrices show a strong per-layer signature.',
                    UNDECIDED, f'{name} has no signatures', '')]
  others = [m for m in signature if m not in ATTENTION]
  attention, rest = _spread(signature, ATTENTION), _spread(signature, others)
  found = [Finding(
      'signature_strong', 'Attention matrices show a strong per-layer signature.',
      _verdict([attention > rest]),
      f'{name}: spread across blocks (standard deviation of the signature) {attention:.3f} for '
      f'the attention matrices against {rest:.3f} for the other modules.',
      'The attention matrices\' signatures vary more across blocks than the other modules\'.')]
  if history and len(history) >= 2:
    (first_step, first), (last_step, last) = history[0], history[-1]
    early, late = _spread(first, ATTENTION), _spread(last, ATTENTION)
    found.append(Finding(
        'signature_emerges', 'The signature emerges during training.',
        _verdict([late > early]),
        f'{name}: attention spread {early:.3f} at step {first_step:,}, {late:.3f} at step '
        f'{last_step:,}.',
        'The attention matrices\' spread across blocks grows from the first logged step to the '
        'last.'))
  else:
    found.append(Finding('signature_emerges', 'The signature emerges during training.',
                         UNDECIDED, 'no signature history given', ''))
  with_signatures = [r for r in ranked if r.ranking.get('signatures')]
  stable = _pair_means(with_signatures, lambda r: [
      v for m in ATTENTION for v in r['signatures'][m]])
  # Only the configuration the reference belongs to: stability across its own trainings.
  if reference.config in stable:
    mean, pairs = stable[reference.config]
    found.append(Finding(
        'signature_stable', 'The signature is stable across seeds.',
        _verdict([mean >= SIGNATURE_SPEARMAN]),
        f'`{reference.config}`: mean pairwise Spearman of the attention signatures (all four '
        f'matrices, every block) {mean:+.2f} over {pairs} pairs.',
        f'Mean pairwise Spearman at least {SIGNATURE_SPEARMAN}.'))
  else:
    found.append(Finding('signature_stable', 'The signature is stable across seeds.', UNDECIDED,
                         f'`{reference.config}` has fewer than two trainings with signatures',
                         ''))
  correlations = reference.ranking.get('signature_correlations', {})
  known = {m: correlations.get(m) for m in ATTENTION if correlations.get(m) is not None}
  if known:
    mean = float(np.mean([abs(v) for v in known.values()]))
    found.append(Finding(
        'signature_shares_damage', 'The signature shares features with the re-init WER.',
        _verdict([mean >= SIGNATURE_SPEARMAN]),
        f'{name}: Spearman between signature and re-init WER across blocks: '
        + ', '.join(f'{m} {v:+.2f}' for m, v in known.items()) + f' (mean |rho| {mean:.2f}).',
        f'Mean absolute Spearman over the attention matrices at least {SIGNATURE_SPEARMAN}.'))
  else:
    found.append(Finding('signature_shares_damage',
                         'The signature shares features with the re-init WER.', UNDECIDED,
                         f'{name} has no defined signature correlations', ''))
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
  lines = ['| finding | verdict | measured | rule |', '|---|---|---|---|']
  for f in found:
    lines.append(f'| {f.claim} | **{f.verdict}** | {f.evidence} | {f.rule or "-"} |')
  return '\n'.join(lines)
