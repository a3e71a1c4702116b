"""Brute-force references for the decoding tests: every alignment of a tiny problem, enumerated."""

from __future__ import annotations

import itertools

import numpy as np


def collapse(alignment, blank_id: int = 0) -> tuple[int, ...]:
  """CTC's many-to-one map: merge repeats, then drop blanks."""
  merged = [label for i, label in enumerate(alignment) if i == 0 or label != alignment[i - 1]]
  return tuple(label for label in merged if label != blank_id)


def ctc_labellings(log_probs: np.ndarray, blank_id: int = 0) -> dict[tuple[int, ...], float]:
  """log p(y | x) of every labelling y with nonzero probability, by summing all V^T alignments.

  Args:
    log_probs: [T, V] log-probabilities of the valid frames.
  """
  frames, vocab = log_probs.shape
  totals: dict[tuple[int, ...], list[float]] = {}
  for alignment in itertools.product(range(vocab), repeat=frames):
    score = float(sum(log_probs[t, label] for t, label in enumerate(alignment)))
    totals.setdefault(collapse(alignment, blank_id), []).append(score)
  return {labelling: float(np.logaddexp.reduce(scores)) for labelling, scores in totals.items()}


def best_alignment(log_probs: np.ndarray) -> tuple[int, ...]:
  """The single most probable alignment, by enumeration."""
  frames, vocab = log_probs.shape
  return max(itertools.product(range(vocab), repeat=frames),
             key=lambda alignment: sum(log_probs[t, label] for t, label in enumerate(alignment)))


def hypotheses(tokens, lengths, scores) -> dict[tuple[int, ...], float]:
  """One utterance's finite-scored n-best as {token tuple: score}; asserts they are distinct."""
  out = {}
  for row, length, score in zip(np.asarray(tokens), np.asarray(lengths), np.asarray(scores)):
    if np.isfinite(score):
      key = tuple(int(t) for t in row[:length])
      assert key not in out, f"hypothesis {key} appears twice in the beam"
      out[key] = float(score)
  return out


def prefix_beam_search(log_probs: np.ndarray, beam: int, prior, final_prior, blank_id: int = 0):
  """The textbook CTC prefix beam search, unpruned and unvectorised, as a reference.

  Args:
    log_probs: [T, V] log-probabilities of the valid frames.
    beam: prefixes kept per frame.
    prior: prefix -> score added to log p_CTC when ranking during the search.
    final_prior: prefix -> score added at the end.

  Returns:
    [(prefix, score)], best first.
  """
  hyps = {(): (0.0, -np.inf)}
  for frame in log_probs:
    candidates: dict[tuple[int, ...], tuple[float, float]] = {}

    def add(prefix, p_b, p_nb):
      old_b, old_nb = candidates.get(prefix, (-np.inf, -np.inf))
      candidates[prefix] = (np.logaddexp(old_b, p_b), np.logaddexp(old_nb, p_nb))

    for prefix, (p_b, p_nb) in hyps.items():
      total = np.logaddexp(p_b, p_nb)
      add(prefix, total + frame[blank_id], p_nb + frame[prefix[-1]] if prefix else -np.inf)
      for token in range(len(frame)):
        if token != blank_id:
          repeat = bool(prefix) and token == prefix[-1]
          add((*prefix, token), -np.inf, (p_b if repeat else total) + frame[token])
    ranked = sorted(candidates, key=lambda p: np.logaddexp(*candidates[p]) + prior(p), reverse=True)
    hyps = {prefix: candidates[prefix] for prefix in ranked[:beam]}
  final = [(prefix, float(np.logaddexp(*scores) + final_prior(prefix))) for prefix, scores in hyps.items()]
  return sorted(final, key=lambda item: item[1], reverse=True)
