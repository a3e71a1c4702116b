"""Plain numpy float64 dynamic programs that the loss tests compare against (loops, no vectorisation tricks)."""

from __future__ import annotations

import numpy as np


def central_differences(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
  """Numerical gradient of the scalar function `f` at `x`, element by element."""
  numeric = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    step = np.zeros_like(x)
    step[index] = eps
    numeric[index] = (f(x + step) - f(x - step)) / (2 * eps)
  return numeric


def log_softmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  m = x.max(axis=-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def ctc_nll(logits: np.ndarray, labels: np.ndarray, blank_id: int = 0) -> float:
  """-log p(labels | logits [T, V]) by the forward recursion over the blank-extended labelling (Graves 2006)."""
  log_probs = log_softmax(logits)
  extended = [blank_id]
  for label in labels:
    extended += [int(label), blank_id]
  frames, states = log_probs.shape[0], len(extended)
  alpha = np.full((frames, states), -np.inf)
  alpha[0, 0] = log_probs[0, blank_id]
  if states > 1:
    alpha[0, 1] = log_probs[0, extended[1]]
  for t in range(1, frames):
    for s in range(states):
      incoming = [alpha[t - 1, s]]
      if s >= 1:
        incoming.append(alpha[t - 1, s - 1])
      if s >= 2 and extended[s] != blank_id and extended[s] != extended[s - 2]:
        incoming.append(alpha[t - 1, s - 2])
      alpha[t, s] = np.logaddexp.reduce(incoming) + log_probs[t, extended[s]]
  return -np.logaddexp.reduce(alpha[-1, max(states - 2, 0):])


def lattice_forward_backward(blank: np.ndarray, emit: np.ndarray):
  """Transducer lattice of one utterance: blank, emit [T, U+1] move log-probs (emit[:, U] unused).

  Returns:
    (alpha [T, U+1], beta [T, U+1], log_likelihood), beta[t, u] being the log-prob of finishing from (t, u)
    including the final blank.
  """
  frames, nodes = blank.shape
  alpha = np.full((frames, nodes), -np.inf)
  beta = np.full((frames, nodes), -np.inf)
  for t in range(frames):
    for u in range(nodes):
      if t == 0 and u == 0:
        alpha[t, u] = 0.0
        continue
      incoming = []
      if t > 0:
        incoming.append(alpha[t - 1, u] + blank[t - 1, u])
      if u > 0:
        incoming.append(alpha[t, u - 1] + emit[t, u - 1])
      alpha[t, u] = np.logaddexp.reduce(incoming)
  for t in reversed(range(frames)):
    for u in reversed(range(nodes)):
      if t == frames - 1 and u == nodes - 1:
        beta[t, u] = blank[t, u]
        continue
      outgoing = []
      if t < frames - 1:
        outgoing.append(beta[t + 1, u] + blank[t, u])
      if u < nodes - 1:
        outgoing.append(beta[t, u + 1] + emit[t, u])
      beta[t, u] = np.logaddexp.reduce(outgoing)
  log_likelihood = alpha[-1, -1] + blank[-1, -1]
  np.testing.assert_allclose(beta[0, 0], log_likelihood, rtol=1e-9)
  return alpha, beta, log_likelihood


def move_occupancies(blank: np.ndarray, emit: np.ndarray):
  """Posterior probabilities (blank_occ, emit_occ) [T, U+1] of each move of the lattice of one utterance."""
  alpha, beta, log_likelihood = lattice_forward_backward(blank, emit)
  frames, nodes = blank.shape
  beta_after_blank = np.full((frames, nodes), -np.inf)
  beta_after_blank[:-1] = beta[1:]
  beta_after_blank[-1, -1] = 0.0  # the final blank ends the path
  beta_after_emit = np.full((frames, nodes), -np.inf)
  beta_after_emit[:, :-1] = beta[:, 1:]
  blank_occ = np.exp(alpha + blank + beta_after_blank - log_likelihood)
  emit_occ = np.exp(alpha + emit + beta_after_emit - log_likelihood)
  return blank_occ, emit_occ


def rnnt_nll_and_grad(logits: np.ndarray, labels: np.ndarray, blank_id: int = 0):
  """-log p(labels | logits [T, U+1, V]) and its gradient w.r.t. the logits, from occupation probabilities.

  d(-log p)/d logits[t, u, k] = occ(t, u) softmax[t, u, k] - blank_occ(t, u) [k = blank]
                               - emit_occ(t, u) [k = labels[u]].
  """
  log_probs = log_softmax(logits)
  frames, nodes, _ = log_probs.shape
  blank = log_probs[:, :, blank_id]
  emit = np.full((frames, nodes), -np.inf)
  for u, label in enumerate(labels):
    emit[:, u] = log_probs[:, u, label]
  blank_occ, emit_occ = move_occupancies(blank, emit)
  grad = (blank_occ + emit_occ)[:, :, None] * np.exp(log_probs)
  grad[:, :, blank_id] -= blank_occ
  for u, label in enumerate(labels):
    grad[:, u, label] -= emit_occ[:, u]
  return -lattice_forward_backward(blank, emit)[2], grad
