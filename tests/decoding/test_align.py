"""CTC forced alignment against brute force over every alignment, and against the best path for greedy output."""

from __future__ import annotations

import itertools

import jax
import numpy as np

from decoding_testlib import collapse
from speechfuse.decoding import ctc_greedy
from speechfuse.decoding.align import ctc_forced_align


def _best_alignment_of(log_probs: np.ndarray, hypothesis: tuple[int, ...]):
  """(alignment, score) of the most probable of the V^T frame labellings that collapse to `hypothesis`."""
  frames, vocab = log_probs.shape
  scored = [(sum(log_probs[t, label] for t, label in enumerate(alignment)), alignment)
            for alignment in itertools.product(range(vocab), repeat=frames) if collapse(alignment) == hypothesis]
  if not scored:
    return None, -np.inf
  score, alignment = max(scored)
  return alignment, score


def test_matches_brute_force_on_every_short_hypothesis():
  rng = np.random.default_rng(0)
  frames, vocab = 5, 3
  log_probs = np.asarray(jax.nn.log_softmax(2.0 * rng.standard_normal((frames, vocab)), axis=-1))
  # Every hypothesis over labels {1, 2} of up to 4 symbols (repeats need a blank between them), and one too long.
  hypotheses = [h for n in range(5) for h in itertools.product((1, 2), repeat=n)] + [(1, 1, 2)]
  lengths = np.array([frames if i % 3 else frames - 1 for i in range(len(hypotheses))])
  tokens = np.full((len(hypotheses), 6), 0, np.int32)
  for i, h in enumerate(hypotheses):
    tokens[i, :len(h)] = h
  batch = np.broadcast_to(log_probs, (len(hypotheses), frames, vocab))
  labels, label_log_probs, scores = map(np.asarray, ctc_forced_align(
      batch, lengths, tokens, np.array([len(h) for h in hypotheses]), blank_id=0))
  for i, h in enumerate(hypotheses):
    length = lengths[i]
    alignment, score = _best_alignment_of(log_probs[:length], h)
    if alignment is None:
      assert scores[i] == -np.inf, h
      continue
    np.testing.assert_allclose(scores[i], score, rtol=1e-5, err_msg=str(h))
    assert tuple(labels[i, :length]) == alignment, h
    np.testing.assert_allclose(label_log_probs[i, :length], log_probs[np.arange(length), alignment], rtol=1e-6)
    assert (labels[i, length:] == 0).all() and (label_log_probs[i, length:] == 0).all()


def test_the_greedy_hypothesis_aligns_to_the_best_path():
  rng = np.random.default_rng(1)
  log_probs = np.asarray(jax.nn.log_softmax(3.0 * rng.standard_normal((3, 40, 6)), axis=-1))
  lengths = np.array([40, 31, 0])
  tokens, token_lengths = ctc_greedy(log_probs, lengths)
  labels, label_log_probs, scores = map(np.asarray, ctc_forced_align(log_probs, lengths, tokens, token_lengths))
  best = log_probs.argmax(-1)
  for b, length in enumerate(lengths):
    np.testing.assert_array_equal(labels[b, :length], best[b, :length])
    np.testing.assert_allclose(scores[b], log_probs[b, :length].max(-1).sum(), rtol=1e-5)
  np.testing.assert_allclose(label_log_probs[:2], np.where(np.arange(40) < lengths[:2, None], log_probs.max(-1)[:2],
                                                           0.0), rtol=1e-6)
  assert scores[2] == 0.0 and (labels[2] == 0).all()
