"""WER / CER counts from jiwer against a hand-written edit distance."""

from __future__ import annotations

import pytest

import edit_distance_testlib
from speechfuse.eval import metrics


PAIRS = [
    ("the cat sat on the mat", "the cat sat on mat"),
    ("the cat sat", "a cat sat down here"),
    ("hello world", ""),
    ("one two three", "one two three"),
    ("abc def", "abd ef"),
]


@pytest.mark.parametrize("kind", ["word", "char"])
def test_counts_match_edit_distance(kind):
  references, hypotheses = zip(*PAIRS)
  if kind == "word":
    counts = metrics.word_errors(references, hypotheses)
    split = str.split
  else:
    counts = metrics.char_errors(references, hypotheses)
    split = list
  expected = [edit_distance_testlib.edit_distance(split(r), split(h)) for r, h in PAIRS]
  assert counts.errors == expected
  assert counts.lengths == [len(split(r)) for r in references]
  assert counts.rate == pytest.approx(sum(expected) / sum(len(split(r)) for r in references))


def test_char_errors_count_spaces():
  # "ab c" -> "abc": one deleted space.
  assert metrics.char_errors(["ab c"], ["abc"]).errors == [1]


def test_empty_input():
  assert metrics.word_errors([], []).rate == 0.0
