"""Corpus-level word and character error rates with jiwer, after text normalization, with the
per-utterance word errors that paired significance tests (`bootstrap.py`) need."""

import dataclasses
import re
from typing import Any, Optional, Sequence

import jiwer

_NOT_KEPT = re.compile(r"[^A-Z' ]")


def normalize(text: str) -> str:
  """Upper case, letters and apostrophes only, single spaces (LibriSpeech's convention)."""
  return ' '.join(_NOT_KEPT.sub(' ', text.upper()).split())


@dataclasses.dataclass(frozen=True)
class UtteranceErrors:
  """One system's word errors (substitutions + deletions + insertions) and reference word
  counts per utterance of one split, keyed by utterance id."""

  utterance_ids: tuple[str, ...]
  errors: tuple[int, ...]
  words: tuple[int, ...]

  def __post_init__(self):
    if not len(self.utterance_ids) == len(self.errors) == len(self.words):
      raise ValueError(f'{len(self.utterance_ids)} utterance ids, {len(self.errors)} error '
                       f'counts and {len(self.words)} word counts')
    if len(set(self.utterance_ids)) != len(self.utterance_ids):
      raise ValueError('utterance ids repeat')

  @property
  def wer(self) -> float:
    return sum(self.errors) / sum(self.words)

  def as_dict(self) -> dict[str, list]:
    return {'utterance_ids': list(self.utterance_ids), 'errors': list(self.errors),
            'words': list(self.words)}

  @classmethod
  def from_dict(cls, value: dict[str, Any]) -> 'UtteranceErrors':
    return cls(tuple(value['utterance_ids']), tuple(int(e) for e in value['errors']),
               tuple(int(w) for w in value['words']))


@dataclasses.dataclass(frozen=True)
class ErrorRates:
  wer: float
  cer: float
  num_utterances: int
  num_reference_words: int
  # Per utterance, for paired comparisons; left out of `as_dict` (released metrics stay scalar).
  utterances: Optional[UtteranceErrors] = dataclasses.field(default=None, compare=False,
                                                            repr=False)

  def as_dict(self) -> dict:
    return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
            if field.name != 'utterances'}


def error_rates(references: Sequence[str], hypotheses: Sequence[str],
                utterance_ids: Optional[Sequence[str]] = None) -> ErrorRates:
  """Corpus-level WER and CER (errors summed over utterances / reference words or chars), and
  the word errors of each utterance (ids `utterance_ids`, default their positions).

  An empty hypothesis counts every reference word as deleted.
  """
  if len(references) != len(hypotheses):
    raise ValueError(f'{len(references)} references but {len(hypotheses)} hypotheses')
  if not references:
    raise ValueError('no utterances to score')
  if utterance_ids is None:
    utterance_ids = [f'{i:06d}' for i in range(len(references))]
  elif len(utterance_ids) != len(references):
    raise ValueError(f'{len(references)} references but {len(utterance_ids)} utterance ids')
  refs = [normalize(r) for r in references]
  if not all(refs):
    raise ValueError('a reference transcript is empty after normalization')
  hyps = [normalize(h) for h in hypotheses]
  # jiwer rejects empty hypotheses. A placeholder token that matches nothing stands in: against
  # a non-empty reference it turns one deletion into one substitution, so the count is the same.
  words = jiwer.process_words(refs, [h or '\u2205' for h in hyps])
  per_utterance = [
      sum((c.ref_end_idx - c.ref_start_idx) if c.type in ('substitute', 'delete')
          else (c.hyp_end_idx - c.hyp_start_idx) if c.type == 'insert' else 0
          for c in alignment)
      for alignment in words.alignments]
  word_counts = [len(r.split()) for r in refs]
  chars = jiwer.process_characters(refs, [h or '\u2205' for h in hyps])
  char_errors = chars.substitutions + chars.deletions + chars.insertions
  num_chars = sum(len(r) for r in refs)
  return ErrorRates(wer=sum(per_utterance) / sum(word_counts), cer=char_errors / num_chars,
                    num_utterances=len(refs), num_reference_words=sum(word_counts),
                    utterances=UtteranceErrors(tuple(utterance_ids), tuple(per_utterance),
                                               tuple(word_counts)))
