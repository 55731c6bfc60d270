"""Paired bootstrap confidence intervals for the WER difference of two systems.

Both systems are scored on the same utterances (Koehn 2004; Bisani and Ney 2004): utterance
indices are resampled with replacement, and each resample's WER of each system is its summed
errors over its summed reference words (corpus-level, not a mean of per-utterance WERs). The
percentiles of the resampled differences give the interval. Seeded: the same inputs give the
same interval.
"""

import dataclasses
from typing import Any

import numpy as np

from fl_compression.evaluation import error_rates

DEFAULT_RESAMPLES = 1000


@dataclasses.dataclass(frozen=True)
class WerComparison:
  """`system` against `baseline` on the same utterances: WERs, their difference (absolute:
  WER points as a fraction; relative: to the baseline's WER) and its confidence intervals."""

  baseline_wer: float
  system_wer: float
  absolute: float
  relative: float
  absolute_interval: tuple[float, float]
  relative_interval: tuple[float, float]
  confidence: float
  num_resamples: int
  seed: int
  num_utterances: int
  num_words: int

  def within_relative(self, limit: float) -> bool:
    """The interval supports `system <= baseline * (1 + limit)`: its upper end is at most
    `limit` (0: no worse than the baseline with the interval's confidence)."""
    return self.relative_interval[1] <= limit

  def not_worse(self) -> bool:
    """The interval does not exclude 'no worse': its lower end is at most 0."""
    return self.relative_interval[0] <= 0.0

  def describe_relative(self) -> str:
    """E.g. `+4.1% [-1.3%, +9.8%]` (relative difference and its interval)."""
    low, high = self.relative_interval
    percent = lambda v: f'{100 * v:+.1f}%' if np.isfinite(v) else f'{v:+}'.replace('inf', '∞')
    return f'{percent(self.relative)} [{percent(low)}, {percent(high)}]'

  def as_dict(self) -> dict[str, Any]:
    value = dataclasses.asdict(self)
    value['absolute_interval'] = list(self.absolute_interval)
    value['relative_interval'] = list(self.relative_interval)
    return value


def _aligned(baseline: error_rates.UtteranceErrors, system: error_rates.UtteranceErrors
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(baseline errors, system errors, words) in one utterance order; a one-line ValueError
  where the systems were not scored on the same utterances."""
  base_ids, system_ids = set(baseline.utterance_ids), set(system.utterance_ids)
  if base_ids != system_ids:
    only_base, only_system = sorted(base_ids - system_ids), sorted(system_ids - base_ids)
    raise ValueError(
        'the systems were scored on different utterances: '
        f'{len(only_base)} only in the baseline{" (e.g. " + only_base[0] + ")" if only_base else ""}'
        f', {len(only_system)} only in the system'
        f'{" (e.g. " + only_system[0] + ")" if only_system else ""}')
  if not base_ids:
    raise ValueError('no utterances to compare')
  position = {u: i for i, u in enumerate(system.utterance_ids)}
  order = np.array([position[u] for u in baseline.utterance_ids])
  words = np.asarray(baseline.words, np.int64)
  system_words = np.asarray(system.words, np.int64)[order]
  if not np.array_equal(words, system_words):
    first = baseline.utterance_ids[int(np.argmax(words != system_words))]
    raise ValueError(f'the systems count different reference words for utterance {first} '
                     '(different references)')
  return (np.asarray(baseline.errors, np.int64), np.asarray(system.errors, np.int64)[order],
          words)


def _relative(differences: np.ndarray, baseline_errors: np.ndarray) -> np.ndarray:
  """differences / baseline_errors with 0/0 = 0 (no errors either way: no difference) and
  d/0 = +inf for d > 0."""
  with np.errstate(divide='ignore', invalid='ignore'):
    ratio = differences / baseline_errors
  return np.where((differences == 0) & (baseline_errors == 0), 0.0, ratio)


def _percentile(values: np.ndarray, fraction: float) -> float:
  """numpy's default (linear) percentile, except that between two equal infinite neighbours
  it is that infinity (numpy gives NaN: inf - inf)."""
  ordered = np.sort(values)
  position = fraction * (len(ordered) - 1)
  low, high = ordered[int(np.floor(position))], ordered[int(np.ceil(position))]
  if low == high:
    return float(low)
  return float(low + (high - low) * (position - np.floor(position)))


def paired_bootstrap(baseline: error_rates.UtteranceErrors,
                     system: error_rates.UtteranceErrors, *,
                     num_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                     confidence: float = 0.95) -> WerComparison:
  """The WER difference `system - baseline` with its paired bootstrap interval.

  The relative difference of each resample is its own difference over its own baseline WER:
  zero where neither system makes an error in the resample, +infinity where only the system
  does (so the interval's upper end is infinite when that happens in more than its tail).
  """
  if num_resamples < 1:
    raise ValueError(f'num_resamples must be positive, got {num_resamples}')
  if not 0 < confidence < 1:
    raise ValueError(f'confidence must be in (0, 1), got {confidence}')
  base_errors, system_errors, words = _aligned(baseline, system)
  rng = np.random.default_rng(seed)
  samples = rng.integers(0, len(words), size=(num_resamples, len(words)))
  base_sums = base_errors[samples].sum(axis=1)
  system_sums = system_errors[samples].sum(axis=1)
  word_sums = words[samples].sum(axis=1)
  absolute = (system_sums - base_sums) / word_sums
  relative = _relative(system_sums - base_sums, base_sums)
  full_relative = float(_relative(np.array([system_errors.sum() - base_errors.sum()]),
                                  np.array([base_errors.sum()]))[0])
  tail = (1 - confidence) / 2
  interval = lambda values: (_percentile(values, tail), _percentile(values, 1 - tail))
  return WerComparison(
      baseline_wer=float(base_errors.sum() / words.sum()),
      system_wer=float(system_errors.sum() / words.sum()),
      absolute=float((system_errors.sum() - base_errors.sum()) / words.sum()),
      relative=float(full_relative), absolute_interval=interval(absolute),
      relative_interval=interval(relative), confidence=confidence,
      num_resamples=num_resamples, seed=seed, num_utterances=len(words),
      num_words=int(words.sum()))
