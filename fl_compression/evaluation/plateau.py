"""The plateau rule of dev WER curves: pretraining stops on it, and federated budgets are
checked against it.

Over the last `fraction` of the steps (or rounds), the best dev WER must be at least
`min_improvement` (relative) below the best before them; when it is not, the curve has
plateaued.
"""

from typing import Any, Optional, Sequence

FRACTION = 0.25
MIN_IMPROVEMENT = 0.01


def plateau(curve: Sequence[tuple[int, float]], fraction: float = FRACTION,
            min_improvement: float = MIN_IMPROVEMENT, start: int = 0
            ) -> Optional[dict[str, Any]]:
  """The rule on a curve of (step, WER) in step order that covers steps `start`..last: the best
  WER before and after the cut at `(1 - fraction)` of that span, the relative improvement,
  whether it plateaued, and how many evaluations fall after the cut; None when either side is
  empty."""
  if not curve:
    return None
  cut = start + (curve[-1][0] - start) * (1.0 - fraction)
  before = [wer for step, wer in curve if step <= cut]
  after = [wer for step, wer in curve if step > cut]
  if not before or not after:
    return None
  improvement = 1.0 - min(after) / min(before) if min(before) > 0 else 0.0
  return {'cut': cut, 'best_before': min(before), 'best_after': min(after),
          'improvement': improvement, 'plateaued': improvement < min_improvement,
          'evaluations_after': len(after)}


def plateau_reached(curve: Sequence[tuple[int, float]], fraction: float = FRACTION,
                    min_improvement: float = MIN_IMPROVEMENT, min_evaluations: int = 4,
                    from_step: int = 0) -> bool:
  """Whether the curve has plateaued, with at least `min_evaluations` evaluations in its
  trailing `fraction`; never before step `from_step` (a model on CTC's early plateau, blank
  outputs at a dev WER near 100%, is flat for thousands of steps before it starts to learn)."""
  if not curve or curve[-1][0] < from_step:
    return False
  rule = plateau(curve, fraction, min_improvement)
  return bool(rule and rule['plateaued'] and rule['evaluations_after'] >= min_evaluations)
