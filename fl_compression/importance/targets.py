"""Which encoder blocks an importance-aware method acts on, from a layer-importance ranking.

A target is `flat` (every block), `ambient:N` (the N most ambient blocks of the ranking),
`critical:N` (the N most critical) or `blocks:i,j,...` (those). The ranking is the
`ranking.json` of `//tff_programs:layer_importance`; it must be of a model with the same encoder
(block count and shapes) as the one trained.
"""

import json
from typing import Any, Optional

from fl_compression.models import conformer


class TargetError(ValueError):
  """A bad target or ranking; the message names the flag."""


def load_ranking(path: str, model_config: dict[str, Any], flag: str) -> dict[str, Any]:
  """The ranking at `path`, checked against the trained model's config."""
  try:
    with open(path) as f:
      ranking = json.load(f)
  except OSError as e:
    raise TargetError(f'--{flag}={path}: {e.strerror}') from None
  except ValueError as e:
    raise TargetError(f'--{flag}={path}: not a ranking file ({e})') from None
  if not isinstance(ranking, dict) or 'ambient_first' not in ranking or 'blocks' not in ranking:
    raise TargetError(f'--{flag}={path}: not a ranking file (no blocks or ambient_first)')
  blocks = model_config.get('encoder', {}).get('num_blocks', 0)
  if len(ranking['blocks']) != blocks:
    raise TargetError(f'--{flag}={path} ranks {len(ranking["blocks"])} encoder blocks; the '
                      f'trained model has {blocks}')
  ranked = ranking.get('model', {}).get('encoder')
  if ranked is not None:
    ranked = conformer.with_defaults(ranked)
    encoder = conformer.with_defaults(model_config.get('encoder', {}))
    changed = sorted(k for k in set(ranked) | set(encoder) if ranked.get(k) != encoder.get(k))
    if changed:
      raise TargetError(f'--{flag}={path} ranks another model (its encoder differs in '
                        f'{", ".join(changed)})')
  return ranking


def target_blocks(spec: str, num_blocks: int, ranking: Optional[dict[str, Any]],
                  flag: str, ranking_flag: str) -> Optional[list[int]]:
  """The blocks `spec` names (None for `flat`: all of them), in ranking order."""
  kind, _, value = spec.partition(':')
  if kind == 'flat' and not value:
    return None
  if kind == 'blocks':
    try:
      chosen = [int(v) for v in value.split(',') if v.strip()]
    except ValueError:
      raise TargetError(f'--{flag}={spec}: blocks must be integers') from None
    outside = [b for b in chosen if not 0 <= b < num_blocks]
    if not chosen or outside:
      raise TargetError(f'--{flag}={spec}: blocks must be in 0..{num_blocks - 1}')
    return chosen
  if kind not in ('ambient', 'critical'):
    raise TargetError(f'--{flag}={spec} is unknown; known: flat, ambient:N, critical:N, '
                      'blocks:i,j,...')
  try:
    count = int(value)
  except ValueError:
    raise TargetError(f'--{flag}={spec}: N must be an integer') from None
  if not 1 <= count <= num_blocks:
    raise TargetError(f'--{flag}={spec}: N must be in 1..{num_blocks} (the encoder blocks)')
  if ranking is None:
    raise TargetError(f'--{flag}={spec} needs --{ranking_flag}')
  order = list(ranking['ambient_first'])
  return (order if kind == 'ambient' else order[::-1])[:count]


def check_rate(rate: float, flag: str) -> None:
  if not 0.0 < rate < 1.0:
    raise TargetError(f'--{flag}={rate} is outside (0, 1)')
