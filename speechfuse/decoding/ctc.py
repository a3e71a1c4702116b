"""CTC decoding: greedy (best path) and prefix beam search, batched and jitted with static shapes.

All decoders take `log_probs: [B, T, V]` (log-softmax of the CTC head's logits; greedy only needs the
argmax, so logits do too) and `lengths: [B]` valid frames, and ignore frames at or past `lengths`.
Outputs are right-padded with the blank id, as label batches are (speechfuse.text.base), so a padded row
decodes with `tokenizer.decode` as is.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence

import jax
import jax.numpy as jnp

from speechfuse.decoding import beams, ctc_lm
from speechfuse.decoding.beams import BeamResult
from speechfuse.decoding.lm import NgramLM


def collapse(
    best: jax.Array, valid: jax.Array, previous: jax.Array, blank_id: int
) -> tuple[jax.Array, jax.Array]:
  """CTC's collapse of frame labels: merge repeats, drop blanks, compact to the left.

  Args:
    best: [B, T] frame labels (argmax ids).
    valid: [B, T] frames to read; a prefix of each row.
    previous: [B] the label of the frame before frame 0 (blank_id for an utterance's start; the last
      frame of the previous chunk when streaming), so a repeat across that boundary is merged.
    blank_id: the blank id.

  Returns:
    (tokens [B, T] padded with blank_id, token_lengths [B]).
  """
  batch, frames = best.shape
  before = jnp.concatenate([previous[:, None], best[:, :-1]], axis=1)
  keep = valid & (best != blank_id) & (best != before)
  # Kept labels go to their rank among kept labels; the others to index T, which the scatter drops.
  positions = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, frames)
  tokens = jnp.full_like(best, blank_id).at[jnp.arange(batch)[:, None], positions].set(best, mode="drop")
  return tokens, keep.sum(axis=1, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=("blank_id",))
def ctc_greedy(log_probs: jax.Array, lengths: jax.Array, blank_id: int = 0) -> tuple[jax.Array, jax.Array]:
  """Best-path decoding: the collapse of the most probable frame labelling.

  Args:
    log_probs: [B, T, V] log-probabilities (or logits).
    lengths: [B] valid frames.
    blank_id: the blank id.

  Returns:
    (tokens [B, T] padded with blank_id, token_lengths [B]).
  """
  best = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
  valid = jnp.arange(best.shape[1])[None, :] < lengths[:, None]
  return collapse(best, valid, jnp.full(best.shape[:1], blank_id, jnp.int32), blank_id)


@functools.partial(jax.jit, static_argnames=("beam", "blank_id"))
def _prefix_beam_search(log_probs: jax.Array, lengths: jax.Array, beam: int, blank_id: int) -> BeamResult:
  """Prefix beam search without an LM; see `ctc_prefix_beam_search`."""
  batch, frames, _ = log_probs.shape
  tokens, token_lengths, blank_score = beams.initial(batch, beam, frames, blank_id)
  # p_b / p_nb: log-probability of the prefix over the frames so far, alignments ending in blank / not.
  init = (tokens, token_lengths, blank_score, jnp.full((batch, beam), -jnp.inf))

  def step(carry, inputs):
    frame_log_probs, t = inputs  # [B, V], []
    tokens, token_lengths, p_b, p_nb = carry
    total = jnp.logaddexp(p_b, p_nb)
    last = beams.last_token(tokens, token_lengths, blank_id)
    stay_b = total + frame_log_probs[:, blank_id, None]
    # Repeating the last symbol without a blank in between keeps the prefix (empty prefixes have p_nb =
    # -inf, so their "last" = blank adds nothing).
    stay_nb = p_nb + jnp.take_along_axis(frame_log_probs, last, axis=1)
    # A symbol equal to the last one only extends the prefix after a blank.
    same = jnp.arange(frame_log_probs.shape[-1]) == last[..., None]
    extend = jnp.where(same, p_b[..., None], total[..., None]) + frame_log_probs[:, None, :]
    extend = extend.at[..., blank_id].set(-jnp.inf)
    match = beams.duplicates(tokens, token_lengths, total > -jnp.inf, blank_id)
    stay_nb, extend = beams.merge(stay_nb, extend, match, last)
    candidates = extend.at[..., blank_id].set(jnp.logaddexp(stay_b, stay_nb))
    scores, parent, token = beams.select(candidates, beam)
    stays = token == blank_id
    new = (
        *beams.extend(tokens, token_lengths, parent, token, blank_id),
        jnp.where(stays, jnp.take_along_axis(stay_b, parent, axis=1), -jnp.inf),
        jnp.where(stays, jnp.take_along_axis(stay_nb, parent, axis=1), scores),
    )
    running = t < lengths
    return jax.tree.map(
        lambda n, o: jnp.where(running.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, carry), None

  inputs = (jnp.swapaxes(log_probs.astype(jnp.float32), 0, 1), jnp.arange(frames))
  (tokens, token_lengths, p_b, p_nb), _ = jax.lax.scan(step, init, inputs)
  return beams.sort(tokens, token_lengths, jnp.logaddexp(p_b, p_nb))


def ctc_prefix_beam_search(
    log_probs: jax.Array,
    lengths: jax.Array,
    *,
    beam: int = 10,
    blank_id: int = 0,
    lm: NgramLM | None = None,
    lm_weight: float = 0.5,
    word_insertion: float = 0.0,
    pieces: Sequence[str] | None = None,
    lexicon: Collection[str] | None = None,
) -> BeamResult:
  """CTC prefix beam search (Hannun et al. 2014), optionally fused with a word n-gram LM.

  Each hypothesis is a label prefix with two log-probabilities, over alignments of the frames so far that
  end in a blank (p_b) or in its last symbol (p_nb). Per frame, every prefix may stay (blank, or a repeat
  of its last symbol) or grow by one symbol; candidates that reach the same prefix are log-added
  (see speechfuse.decoding.beams), and the `beam` best survive.

  Without an LM (and word_insertion == 0, no lexicon) the search runs batched and jitted: a `lax.scan` over frames
  with static beam, one top-k over the beam x vocab grid per frame. With an LM it runs host-side
  (`ctc_lm.prefix_beam_search`), ranking by k2SSL's Eq. 3,
    log p_CTC(y | x) + lm_weight * log p_LM(y) + word_insertion * |y|,
  |y| counting words and the LM scoring each word as it completes (see ctc_lm).

  Args:
    log_probs: [B, T, V] log-probabilities.
    lengths: [B] valid frames.
    beam: hypotheses kept per frame, also the number returned.
    blank_id: the blank id.
    lm: word n-gram LM (natural-log scores); None for CTC alone.
    lm_weight: lm's weight (w1 in Eq. 3).
    word_insertion: score per word (w2 in Eq. 3).
    pieces: id -> surface text with " " marking word boundaries (`ctc_lm.token_pieces(tokenizer)`);
      needed with lm, word_insertion or lexicon.
    lexicon: words the output may hold (host path; see ctc_lm), e.g. `lm.words()`; None: any spelling.

  Returns:
    BeamResult with N = beam, L = T, best first; scores are log p_CTC (jitted path) or the Eq. 3 score
    (host path, numpy arrays).
  """
  if lm is None and word_insertion == 0.0 and lexicon is None:
    return _prefix_beam_search(jnp.asarray(log_probs), jnp.asarray(lengths), beam, blank_id)
  return ctc_lm.prefix_beam_search(
      log_probs, lengths, beam=beam, blank_id=blank_id, lm=lm, lm_weight=lm_weight,
      word_insertion=word_insertion, pieces=pieces, lexicon=lexicon)
