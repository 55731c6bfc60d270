"""Corpus-level word and character error rates with jiwer, after text normalization."""

import dataclasses
import re
from typing import Sequence

import jiwer

_NOT_KEPT = re.compile(r"[^A-Z' ]")


def normalize(text: str) -> str:
  """Upper case, letters and apostrophes only, single spaces (LibriSpeech's convention)."""
  return ' '.join(_NOT_KEPT.sub(' ', text.upper()).split())


@dataclasses.dataclass(frozen=True)
class ErrorRates:
  wer: float
  cer: float
  num_utterances: int
  num_reference_words: int

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorRates:
  """Corpus-level WER and CER (errors summed over utterances / reference words or chars).

  An empty hypothesis counts every reference word as deleted.
  """
  if len(references) != len(hypotheses):
    raise ValueError(f'{len(references)} references but {len(hypotheses)} hypotheses')
  if not references:
    raise ValueError('no utterances to score')
  refs = [normalize(r) for r in references]
  if not all(refs):
    raise ValueError('a reference transcript is empty after normalization')
  hyps = [normalize(h) for h in hypotheses]
  # jiwer rejects empty hypotheses. A placeholder token that matches nothing stands in: against
  # a non-empty reference it turns one deletion into one substitution, so the count is the same.
  words = jiwer.process_words(refs, [h or '\u2205' for h in hyps])
  word_errors = words.substitutions + words.deletions + words.insertions
  num_words = sum(len(r.split()) for r in refs)
  chars = jiwer.process_characters(refs, [h or '\u2205' for h in hyps])
  char_errors = chars.substitutions + chars.deletions + chars.insertions
  num_chars = sum(len(r) for r in refs)
  return ErrorRates(wer=word_errors / num_words, cer=char_errors / num_chars,
                    num_utterances=len(refs), num_reference_words=num_words)
