"""How stable a layer-importance ranking is across trainings, and how it changes with size.

Input: `ranking.json` files of `//tff_programs:layer_importance`, each labelled with the
configuration it ranks (e.g. `deep`, `deep_narrow`) and the training (e.g. `seed 1`). For each
configuration with two or more rankings: Spearman's rank correlation between the blocks'
re-initialization damage (their WER after the reset) of every pair of trainings, and the overlap
of their three most ambient blocks; for every ranking: its number of ambient, intermediate and
critical blocks (`ranking.RULE`).
"""

import itertools
from typing import Any, Sequence

import numpy as np

TOP = 3


class StabilityError(ValueError):
  """Rankings that cannot be compared; the message names them."""


def _damage(ranking: dict[str, Any]) -> list[float]:
  return [b['reinit_wer'] for b in ranking['blocks']]


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
  """Spearman's rank correlation (average ranks for ties); None if either side is constant."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  if len(set(a)) < 2 or len(set(b)) < 2:
    return None
  return float(stats.spearmanr(a, b).correlation)


def compare(rankings: Sequence[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
  """`rankings`: (configuration, training label, ranking.json content). Returns per
  configuration its pairs and their summary, and per ranking its class counts."""
  by_config: dict[str, list[tuple[str, dict[str, Any]]]] = {}
  for config, label, ranking in rankings:
    by_config.setdefault(config, []).append((label, ranking))
  result = {'top': TOP, 'configurations': {}}
  for config, entries in by_config.items():
    sizes = {len(r['blocks']) for _, r in entries}
    if len(sizes) != 1:
      raise StabilityError(f'the rankings of {config} have different numbers of blocks '
                           f'({sorted(sizes)}): they are not of one configuration')
    pairs = []
    for (label_a, a), (label_b, b) in itertools.combinations(entries, 2):
      top_a, top_b = set(a['ambient_first'][:TOP]), set(b['ambient_first'][:TOP])
      pairs.append({'a': label_a, 'b': label_b,
                    'spearman': spearman(_damage(a), _damage(b)),
                    'top_overlap': len(top_a & top_b)})
    rhos = [p['spearman'] for p in pairs if p['spearman'] is not None]
    result['configurations'][config] = {
        'blocks': sizes.pop(),
        'trainings': [{'label': label, 'intact_wer': r['intact_wer'],
                       'ambient_first': r['ambient_first'],
                       'classes': {c: sum(b['class'] == c for b in r['blocks'])
                                   for c in ('ambient', 'intermediate', 'critical')}}
                      for label, r in entries],
        'pairs': pairs,
        'mean_spearman': float(np.mean(rhos)) if rhos else None,
        'mean_top_overlap': float(np.mean([p['top_overlap'] for p in pairs])) if pairs
                            else None}
  return result


def render(result: dict[str, Any], command: str) -> str:
  """The Markdown report."""
  top = result['top']
  lines = ['# Stability of the layer-importance ranking', '', f'`{command}`', '',
           'Per configuration, every training ranked by `//tff_programs:layer_importance`. '
           'Pairs: Spearman\'s rank correlation of the blocks\' re-initialization WER between '
           f'two trainings, and how many of their {top} most ambient blocks they share. Classes '
           'by the ranking rule (ambient: the re-initialization\'s relative WER change has its '
           '95% interval within +10%; critical: at least +100%).', '']
  for config, entry in result['configurations'].items():
    lines += [f'## `{config}` ({entry["blocks"]} blocks)', '',
              '| training | intact WER | ambient | intermediate | critical | most ambient first |',
              '|---|---|---|---|---|---|']
    for t in entry['trainings']:
      c = t['classes']
      lines.append(f'| {t["label"]} | {100 * t["intact_wer"]:.2f}% | {c["ambient"]} | '
                   f'{c["intermediate"]} | {c["critical"]} | '
                   f'{", ".join(str(b) for b in t["ambient_first"])} |')
    lines.append('')
    if entry['pairs']:
      lines += ['| pair | Spearman | top-3 overlap |', '|---|---|---|']
      for p in entry['pairs']:
        rho = 'n/a (constant)' if p['spearman'] is None else f'{p["spearman"]:+.2f}'
        lines.append(f'| {p["a"]} / {p["b"]} | {rho} | {p["top_overlap"]} of {top} |')
      mean = entry['mean_spearman']
      lines += ['', f'Mean Spearman {"n/a" if mean is None else f"{mean:+.2f}"}; mean top-{top} '
                f'overlap {entry["mean_top_overlap"]:.1f} of {top}.', '']
  return '\n'.join(lines)
