"""Word and character error rates with jiwer, totals and per utterance.

WER = (S + D + I) / N over words split on whitespace; CER the same over characters, the space included
(jiwer's `process_characters` default, as for English character models: a missed word boundary is an error).
Rates are corpus-level: summed errors over summed reference lengths, not a mean of per-utterance rates.
References must be non-empty (jiwer refuses empty ones); empty hypotheses count every reference unit deleted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jiwer


@dataclasses.dataclass(frozen=True)
class ErrorCounts:
  """Per-utterance edit operations against the reference (lists aligned with the inputs) and totals."""
  errors: list[int]  # S + D + I per utterance
  lengths: list[int]  # reference units per utterance

  @property
  def total_errors(self) -> int:
    return sum(self.errors)

  @property
  def total_length(self) -> int:
    return sum(self.lengths)

  @property
  def rate(self) -> float:
    """Summed errors / summed reference length (0 for an empty set)."""
    return self.total_errors / max(self.total_length, 1)


def _counts(output: jiwer.WordOutput | jiwer.CharacterOutput) -> ErrorCounts:
  errors = []
  for chunks in output.alignments:
    count = 0
    for chunk in chunks:
      if chunk.type in ("substitute", "delete"):
        count += chunk.ref_end_idx - chunk.ref_start_idx
      elif chunk.type == "insert":
        count += chunk.hyp_end_idx - chunk.hyp_start_idx
    errors.append(count)
  return ErrorCounts(errors, [len(reference) for reference in output.references])


def word_errors(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorCounts:
  """Word edit operations per utterance (jiwer.process_words)."""
  if not references:
    return ErrorCounts([], [])
  return _counts(jiwer.process_words(list(references), list(hypotheses)))


def char_errors(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorCounts:
  """Character edit operations per utterance, spaces included (jiwer.process_characters)."""
  if not references:
    return ErrorCounts([], [])
  return _counts(jiwer.process_characters(list(references), list(hypotheses)))
