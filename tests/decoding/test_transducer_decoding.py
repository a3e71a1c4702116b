"""Transducer greedy and modified beam search against plain-Python references and enumeration."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding_testlib import hypotheses
from speechfuse.decoding import modified_beam_search, transducer_greedy

ENC, PRED, HIDDEN = 4, 5, 6


class _Model:
  """A tiny random transducer: a recurrent or stateless (last token) predictor and an additive joiner."""

  def __init__(self, seed: int, vocab: int, recurrent: bool, blank_bias: float = 0.0):
    rng = np.random.default_rng(seed)
    self.vocab, self.recurrent = vocab, recurrent
    self.embed = rng.standard_normal((vocab, PRED)).astype(np.float32)
    self.recur = 0.8 * rng.standard_normal((PRED, PRED)).astype(np.float32)
    self.enc_proj = rng.standard_normal((ENC, HIDDEN)).astype(np.float32)
    self.pred_proj = rng.standard_normal((PRED, HIDDEN)).astype(np.float32)
    self.out = 1.5 * rng.standard_normal((HIDDEN, vocab)).astype(np.float32)
    self.out_bias = np.zeros(vocab, np.float32)
    self.out_bias[0] = blank_bias

  # The jax callables, batched over rows.
  def init(self, rows):
    return jnp.zeros((rows, PRED)) if self.recurrent else jnp.zeros((rows,), jnp.int32)

  def step(self, state, tokens):
    if self.recurrent:
      hidden = jnp.tanh(state @ self.recur + jnp.asarray(self.embed)[tokens])
      return hidden, hidden
    return jnp.asarray(self.embed)[tokens], tokens

  def join(self, enc, pred):
    return jnp.tanh(enc @ self.enc_proj + pred @ self.pred_proj) @ self.out + self.out_bias

  # The same model in numpy, one hypothesis at a time: the predictor output after a token history.
  def pred_out(self, history):
    if not self.recurrent:
      return self.embed[history[-1] if history else 0]
    hidden = np.zeros(PRED, np.float32)
    for token in (0, *history):  # blank starts the sequence
      hidden = np.tanh(hidden @ self.recur + self.embed[token])
    return hidden

  def log_probs(self, enc, history):
    logits = np.tanh(enc @ self.enc_proj + self.pred_out(history) @ self.pred_proj) @ self.out + self.out_bias
    return logits - np.logaddexp.reduce(logits)


def _encoder_out(seed, batch, frames):
  return np.random.default_rng(seed + 100).standard_normal((batch, frames, ENC)).astype(np.float32)


def _sequences(model: _Model, enc: np.ndarray) -> dict[tuple[int, ...], float]:
  """log p(y) summed over all one-symbol-per-frame alignments: every frame emits blank or one symbol."""
  totals: dict[tuple[int, ...], list[float]] = {}
  for path in itertools.product(range(model.vocab), repeat=len(enc)):
    history, score = (), 0.0
    for frame, label in zip(enc, path):
      score += model.log_probs(frame, history)[label]
      if label != 0:
        history = (*history, label)
    totals.setdefault(history, []).append(score)
  return {y: float(np.logaddexp.reduce(s)) for y, s in totals.items()}


def _greedy_reference(model: _Model, enc: np.ndarray, max_symbols: int) -> tuple[tuple[int, ...], int]:
  """(greedy tokens, most symbols emitted on one frame)."""
  history, most = (), 0
  for frame in enc:
    emitted = 0
    while emitted < max_symbols:
      best = int(np.argmax(model.log_probs(frame, history)))
      if best == 0:
        break
      history, emitted = (*history, best), emitted + 1
    most = max(most, emitted)
  return history, most


def _decoder(model, decode, **kwargs):
  return jax.jit(functools.partial(decode, predictor_init=model.init, predictor_step=model.step,
                                   joiner=model.join, **kwargs))


@pytest.mark.parametrize("recurrent", [True, False])
@pytest.mark.parametrize("max_symbols", [1, 2, 3])
def test_greedy_matches_reference(recurrent, max_symbols):
  # A negative blank bias makes several symbols per frame common.
  model = _Model(0, vocab=4, recurrent=recurrent, blank_bias=-1.0)
  enc = _encoder_out(0, batch=3, frames=6)
  lengths = np.array([6, 4, 0])
  tokens, token_lengths = _decoder(model, transducer_greedy, max_symbols_per_frame=max_symbols)(enc, lengths)
  assert tokens.shape == (3, 6 * max_symbols)
  most = 0
  for b, length in enumerate(lengths):
    expected, most_on_a_frame = _greedy_reference(model, enc[b, :length], max_symbols)
    assert tuple(np.asarray(tokens[b, :token_lengths[b]])) == expected
    assert np.all(np.asarray(tokens[b, token_lengths[b]:]) == 0)
    most = max(most, most_on_a_frame)
  assert most == max_symbols, "some frame should reach the per-frame limit"


def test_greedy_with_a_context_free_joiner_repeats_each_frames_argmax():
  # The joiner ignores the predictor, so a non-blank argmax wins again until the per-frame limit.
  frames = np.log(np.array([[.1, .8, .1], [.7, .2, .1], [.1, .1, .8]], np.float32))[None]
  decode = jax.jit(functools.partial(
      transducer_greedy, predictor_init=lambda rows: jnp.zeros((rows,)),
      predictor_step=lambda state, tokens: (jnp.zeros((tokens.shape[0], 1)), state),
      joiner=lambda enc, pred: enc, max_symbols_per_frame=2))
  tokens, token_lengths = decode(frames, np.array([3]))
  assert tokens[0, :token_lengths[0]].tolist() == [1, 1, 2, 2]


@pytest.mark.parametrize("recurrent", [True, False])
def test_modified_beam_search_with_a_full_beam_is_exact(recurrent):
  # 2 symbols, 4 frames: 31 sequences, so a beam of 32 never prunes and every score is exact.
  model = _Model(1, vocab=3, recurrent=recurrent)
  enc = _encoder_out(1, batch=2, frames=4)
  lengths = np.array([4, 3])
  result = _decoder(model, modified_beam_search, beam=32)(enc, lengths)
  assert result.tokens.shape == (2, 32, 4)
  for b, length in enumerate(lengths):
    exact = _sequences(model, enc[b, :length])
    found = hypotheses(result.tokens[b], result.lengths[b], result.scores[b])
    assert found.keys() == exact.keys()
    np.testing.assert_allclose([found[y] for y in exact], list(exact.values()), rtol=1e-5)
    assert next(iter(found)) == max(exact, key=exact.get)


@pytest.mark.parametrize("seed", range(3))
def test_pruned_modified_beam_search_finds_the_best_and_never_overestimates(seed):
  model = _Model(seed, vocab=3, recurrent=True)
  enc = 2.0 * _encoder_out(seed, batch=1, frames=6)
  result = _decoder(model, modified_beam_search, beam=4)(enc, np.array([6]))
  exact = _sequences(model, enc[0])
  found = hypotheses(result.tokens[0], result.lengths[0], result.scores[0])
  assert len(found) == 4
  assert next(iter(found)) == max(exact, key=exact.get)
  for sequence, score in found.items():
    assert score <= exact[sequence] + 1e-5
