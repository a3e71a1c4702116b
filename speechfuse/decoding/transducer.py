"""Transducer decoding: greedy (several symbols per frame) and modified beam search (one per frame).

Model-agnostic: the decoders see the encoder output and three callables,
  predictor_init(batch) -> state            a pytree whose leaves have `batch` as leading axis,
  predictor_step(state, tokens [N]) -> (pred_out [N, P], state)
                                            the prediction network fed one token per row,
  joiner(enc [N, D], pred [N, P]) -> logits [N, V],
where N is the batch for greedy and batch * beam for beam search (row b * beam + k is hypothesis k of
utterance b). As in icefall the blank doubles as the start-of-sequence token: the first predictor output
is predictor_step(predictor_init(N), blank). The decoders are traceable, not jitted: jit them with the
parameters as arguments and the callables closing over them, so one compilation serves every checkpoint.
With speechfuse.models.transducer.TransducerModel:

  @jax.jit
  def decode(variables, encoder_out, lengths):
    apply = lambda method, *args: model.apply(variables, *args, method=method)
    return transducer_greedy(
        apply("project_encoder", encoder_out), lengths,
        lambda n: apply("predictor_initial_state", n),
        lambda state, tokens: apply("predictor_step", state, tokens),
        lambda enc, pred: apply("join", enc, pred))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from speechfuse.decoding import beams
from speechfuse.decoding.beams import BeamResult

PredictorInit = Callable[[int], Any]
PredictorStep = Callable[[Any, jax.Array], tuple[jax.Array, Any]]
Joiner = Callable[[jax.Array, jax.Array], jax.Array]


def _where(mask: jax.Array, new, old):
  """Per-row select between pytrees whose leaves lead with mask's axis."""
  return jax.tree.map(lambda n, o: jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old)


def transducer_greedy(
    encoder_out: jax.Array,
    lengths: jax.Array,
    predictor_init: PredictorInit,
    predictor_step: PredictorStep,
    joiner: Joiner,
    *,
    max_symbols_per_frame: int = 3,
    blank_id: int = 0,
) -> tuple[jax.Array, jax.Array]:
  """Greedy search: per frame, emit the argmax symbol and re-run the predictor until blank wins or
  `max_symbols_per_frame` symbols were emitted, then move to the next frame.

  Args:
    encoder_out: [B, T, D] encoder output.
    lengths: [B] valid frames.
    predictor_init, predictor_step, joiner: see the module docstring (N = B).
    max_symbols_per_frame: symbols emitted per frame at most (bounds the inner loop and the output).
    blank_id: the blank id.

  Returns:
    (tokens [B, T * max_symbols_per_frame] padded with blank_id, token_lengths [B]).
  """
  batch, frames, _ = encoder_out.shape
  capacity = frames * max_symbols_per_frame
  rows = jnp.arange(batch)
  pred, state = predictor_step(predictor_init(batch), jnp.full((batch,), blank_id, jnp.int32))

  def frame(carry, inputs):
    enc, t = inputs  # [B, D], []

    def symbol(_, inner):
      state, pred, tokens, count, active = inner
      best = jnp.argmax(joiner(enc, pred), axis=-1).astype(jnp.int32)
      emit = active & (best != blank_id)
      tokens = tokens.at[rows, jnp.where(emit, count, capacity)].set(best, mode="drop")
      # Most frames emit nothing: skip the predictor then (a select under vmap, a branch otherwise).
      new_pred, new_state = jax.lax.cond(
          jnp.any(emit), lambda: predictor_step(state, best), lambda: (pred, state))
      return _where(emit, new_state, state), _where(emit, new_pred, pred), tokens, count + emit, emit

    inner = jax.lax.fori_loop(0, max_symbols_per_frame, symbol, (*carry, t < lengths))
    return inner[:4], None

  init = (state, pred, jnp.full((batch, capacity), blank_id, jnp.int32), jnp.zeros((batch,), jnp.int32))
  (_, _, tokens, count), _ = jax.lax.scan(frame, init, (jnp.swapaxes(encoder_out, 0, 1), jnp.arange(frames)))
  return tokens, count


def modified_beam_search(
    encoder_out: jax.Array,
    lengths: jax.Array,
    predictor_init: PredictorInit,
    predictor_step: PredictorStep,
    joiner: Joiner,
    *,
    beam: int = 8,
    blank_id: int = 0,
) -> BeamResult:
  """Modified beam search (icefall; "constrained" beam search in k2SSL): at most one symbol per frame.

  Per frame every hypothesis either takes blank (stays) or one symbol, scored by its log-softmax joiner
  output; an extension that equals another hypothesis's token sequence is log-added into it (exact
  comparison, see speechfuse.decoding.beams); the top `beam` of the beam x vocab grid survive, and the
  predictor advances on the hypotheses that grew. Merging before the top-k keeps `beam` distinct
  hypotheses, where icefall merges after it.

  Args:
    encoder_out: [B, T, D] encoder output.
    lengths: [B] valid frames.
    predictor_init, predictor_step, joiner: see the module docstring (N = B * beam).
    beam: hypotheses kept per frame, also the number returned.
    blank_id: the blank id.

  Returns:
    BeamResult, N = beam, L = T, best first, scores the log-probability summed over one-symbol-per-frame
    alignments.
  """
  batch, frames, _ = encoder_out.shape
  rows = batch * beam
  pred, state = predictor_step(predictor_init(rows), jnp.full((rows,), blank_id, jnp.int32))
  tokens, token_lengths, scores = beams.initial(batch, beam, frames, blank_id)

  def frame(carry, inputs):
    enc, t = inputs  # [B, D], []
    tokens, token_lengths, scores, state, pred = carry
    logits = joiner(jnp.repeat(enc, beam, axis=0), pred)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, beam, -1)
    extend = scores[..., None] + log_probs
    stay = extend[..., blank_id]
    extend = extend.at[..., blank_id].set(-jnp.inf)
    last = beams.last_token(tokens, token_lengths, blank_id)
    match = beams.duplicates(tokens, token_lengths, scores > -jnp.inf, blank_id)
    stay, extend = beams.merge(stay, extend, match, last)
    new_scores, parent, token = beams.select(extend.at[..., blank_id].set(stay), beam)
    new_tokens, new_lengths = beams.extend(tokens, token_lengths, parent, token, blank_id)
    source = (parent + jnp.arange(batch)[:, None] * beam).reshape(rows)
    state, pred = jax.tree.map(lambda x: x[source], (state, pred))
    step_pred, step_state = predictor_step(state, token.reshape(rows))
    grew = (token != blank_id).reshape(rows)
    new = (new_tokens, new_lengths, new_scores, _where(grew, step_state, state), _where(grew, step_pred, pred))
    running = t < lengths
    return (*_where(running, new[:3], carry[:3]), *_where(jnp.repeat(running, beam), new[3:], carry[3:])), None

  init = (tokens, token_lengths, scores, state, pred)
  (tokens, token_lengths, scores, _, _), _ = jax.lax.scan(
      frame, init, (jnp.swapaxes(encoder_out, 0, 1), jnp.arange(frames)))
  return beams.sort(tokens, token_lengths, scores)
