"""CTC greedy and prefix beam search against brute-force enumeration, closed forms and the host search."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from decoding_testlib import best_alignment, collapse, ctc_labellings, hypotheses
from speechfuse.decoding import ctc_greedy, ctc_prefix_beam_search, ctc_lm


def _log_probs(seed: int, batch: int, frames: int, vocab: int, scale: float = 2.0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return np.asarray(jax.nn.log_softmax(scale * rng.standard_normal((batch, frames, vocab)), axis=-1))


def test_greedy_is_the_collapsed_best_alignment():
  log_probs = _log_probs(0, batch=4, frames=5, vocab=3)
  lengths = np.array([5, 3, 1, 0])
  tokens, token_lengths = ctc_greedy(log_probs, lengths)
  assert tokens.shape == (4, 5)
  for b, length in enumerate(lengths):
    expected = collapse(best_alignment(log_probs[b, :length]))
    assert tuple(np.asarray(tokens[b, :token_lengths[b]])) == expected
    assert np.all(np.asarray(tokens[b, token_lengths[b]:]) == 0), "padded with the blank"


def test_greedy_merges_repeats_only_without_a_blank_between():
  best = np.array([[1, 1, 0, 1, 2, 2, 0, 3]])
  log_probs = np.log(np.eye(4)[best] * 0.97 + 0.01)
  tokens, token_lengths = ctc_greedy(log_probs, np.array([8]), blank_id=0)
  assert tokens.tolist() == [[1, 1, 2, 3, 0, 0, 0, 0]] and token_lengths.tolist() == [4]
  # Another blank id: 0 is then a label and 3 the blank.
  tokens, token_lengths = ctc_greedy(log_probs, np.array([8]), blank_id=3)
  assert tokens[0, :token_lengths[0]].tolist() == [1, 0, 1, 2, 0]


def test_beam_search_two_frames_closed_form():
  p = np.array([[0.5, 0.3, 0.2], [0.6, 0.1, 0.3]])  # [T=2, V=3]: blank, a, b
  result = ctc_prefix_beam_search(np.log(p)[None], np.array([2]), beam=8)
  found = hypotheses(result.tokens[0], result.lengths[0], result.scores[0])
  expected = {
      (): p[0, 0] * p[1, 0],
      (1,): p[0, 1] * p[1, 1] + p[0, 1] * p[1, 0] + p[0, 0] * p[1, 1],
      (2,): p[0, 2] * p[1, 2] + p[0, 2] * p[1, 0] + p[0, 0] * p[1, 2],
      (1, 2): p[0, 1] * p[1, 2],
      (2, 1): p[0, 2] * p[1, 1],
  }
  assert found.keys() == expected.keys()
  for labelling, probability in expected.items():
    assert found[labelling] == pytest.approx(math.log(probability), rel=1e-5)
  assert list(found)[0] == max(expected, key=expected.get) == (2,), "best first"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_beam_is_exact(seed):
  # 2 symbols, 4 frames: 31 labellings, so a beam of 32 never prunes and every score is exact.
  log_probs = _log_probs(seed, batch=3, frames=4, vocab=3)
  lengths = np.array([4, 3, 2])
  result = ctc_prefix_beam_search(log_probs, lengths, beam=32)
  for b, length in enumerate(lengths):
    exact = ctc_labellings(log_probs[b, :length])
    found = hypotheses(result.tokens[b], result.lengths[b], result.scores[b])
    assert found.keys() == exact.keys()
    np.testing.assert_allclose([found[y] for y in exact], list(exact.values()), rtol=1e-5)
    assert next(iter(found)) == max(exact, key=exact.get)


@pytest.mark.parametrize("seed", range(4))
def test_pruned_beam_finds_the_best_labelling_and_never_overestimates(seed):
  log_probs = _log_probs(seed, batch=2, frames=6, vocab=4, scale=3.0)
  lengths = np.array([6, 5])
  result = ctc_prefix_beam_search(log_probs, lengths, beam=6)
  for b, length in enumerate(lengths):
    exact = ctc_labellings(log_probs[b, :length])
    found = hypotheses(result.tokens[b], result.lengths[b], result.scores[b])
    assert next(iter(found)) == max(exact, key=exact.get)
    # A pruned search sums a subset of each labelling's alignments.
    for labelling, score in found.items():
      assert score <= exact[labelling] + 1e-5


def test_blank_id_other_than_zero():
  log_probs = _log_probs(3, batch=1, frames=4, vocab=3)
  result = ctc_prefix_beam_search(log_probs, np.array([4]), beam=32, blank_id=2)
  exact = ctc_labellings(log_probs[0], blank_id=2)
  found = hypotheses(result.tokens[0], result.lengths[0], result.scores[0])
  assert found.keys() == exact.keys()
  np.testing.assert_allclose([found[y] for y in exact], list(exact.values()), rtol=1e-5)


def test_jitted_search_matches_the_host_search():
  log_probs = _log_probs(5, batch=3, frames=16, vocab=6, scale=2.5)
  lengths = np.array([16, 9, 0])
  jitted = ctc_prefix_beam_search(log_probs, lengths, beam=5)
  host = ctc_lm.prefix_beam_search(log_probs, lengths, beam=5)
  assert jitted.tokens.shape == host.tokens.shape == (3, 5, 16)
  np.testing.assert_array_equal(jitted.tokens, host.tokens)
  np.testing.assert_array_equal(jitted.lengths, host.lengths)
  np.testing.assert_allclose(jitted.scores, host.scores, rtol=1e-5)
  assert hypotheses(jitted.tokens[2], jitted.lengths[2], jitted.scores[2]) == {(): 0.0}, "no frames"
