"""CTC best path with token confidences and the average word confidence, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from speechfuse.eval import confidence
from speechfuse.text import CharTokenizer


def test_best_path_collapses_runs_and_averages_their_posteriors():
  tok = CharTokenizer()
  a, b, space = tok.encode("a")[0], tok.encode("b")[0], tok.encode("a b")[1]
  ids = np.array([a, a, 0, a, space, b, b, b, 0, 0])
  probs = np.array([0.9, 0.7, 0.5, 0.6, 0.8, 0.3, 0.6, 0.9, 0.99, 0.5])
  tokens, token_conf = confidence.ctc_best_path(ids, probs, length=8)
  assert tokens == [a, a, space, b]
  np.testing.assert_allclose(token_conf, [0.8, 0.6, 0.8, 0.6])
  # Words "aa" (0.8, 0.6) and "b" (0.6); the space belongs to none.
  assert confidence.word_confidences(tokens, token_conf, tok) == pytest.approx([0.7, 0.6])
  assert confidence.utterance_confidence(tokens, token_conf, tok, probs, 8) == pytest.approx(0.65)


def test_empty_hypothesis_falls_back_to_frame_posteriors():
  tok = CharTokenizer()
  probs = np.array([0.9, 0.7, 0.2])
  tokens, token_conf = confidence.ctc_best_path(np.zeros(3, int), probs, length=2)
  assert tokens == [] and token_conf == []
  assert confidence.utterance_confidence(tokens, token_conf, tok, probs, 2) == pytest.approx(0.8)
