"""Beam bookkeeping shared by CTC prefix beam search and transducer modified beam search.

A beam holds, per utterance, `beam` hypotheses as explicit token arrays `tokens: [B, K, L]` right-padded
with `pad` (the blank, which never occurs inside a hypothesis) and `lengths: [B, K]`. Each frame every
hypothesis either stays as it is or is extended by one symbol, so the candidates form a `[B, K, V]` grid:
column `pad` (the blank) is "stay", column v is "append v".

Merging identical prefixes. Distinct hypotheses have distinct stays and distinct extensions, so a
duplicate can only be an extension that equals another hypothesis's stay: prefix_k + v == prefix_j. We
find those pairs exactly by comparing token arrays (`duplicates`: [B, K, K] from a [B, K, K, L] compare,
O(K^2 L) per frame), add the extension's probability into the stay and drop the extension (`merge`)
before the top-k. Hashing the prefixes would make the test O(K^2) but lets two different prefixes collide
(polynomial hashes mod 2^32 do so for all odd bases at once on Thue-Morse strings); exact comparison keeps
the search a faithful implementation of the algorithm at a cost that stays small next to the [B, K, V]
candidate scores for the lengths we decode.

Hypotheses with score -inf are padding (fewer than K distinct ones exist yet). They never absorb an
extension, so the finite-scored hypotheses stay distinct.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class BeamResult(NamedTuple):
  """N-best hypotheses, best first.

  Attributes:
    tokens: [B, N, L] token ids right-padded with the blank id (so a row decodes with
      `tokenizer.decode` as is); L is the number of frames (the longest possible hypothesis).
    lengths: [B, N] hypothesis lengths.
    scores: [B, N] log scores (what the search ranks by); -inf marks a padding hypothesis when fewer
      than N distinct ones exist.
  """

  tokens: jax.Array
  lengths: jax.Array
  scores: jax.Array


def initial(batch: int, beam: int, max_length: int, pad: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Empty beams: (tokens [B, K, L] all `pad`, lengths [B, K] zeros, scores [B, K] = [0, -inf, ...])."""
  tokens = jnp.full((batch, beam, max_length), pad, jnp.int32)
  lengths = jnp.zeros((batch, beam), jnp.int32)
  scores = jnp.full((batch, beam), -jnp.inf, jnp.float32).at[:, 0].set(0.0)
  return tokens, lengths, scores


def last_token(tokens: jax.Array, lengths: jax.Array, pad: int) -> jax.Array:
  """[B, K] last token of each hypothesis, `pad` for an empty one."""
  last = jnp.take_along_axis(tokens, jnp.maximum(lengths - 1, 0)[..., None], axis=-1)[..., 0]
  return jnp.where(lengths > 0, last, pad)


def duplicates(tokens: jax.Array, lengths: jax.Array, valid: jax.Array, pad: int) -> jax.Array:
  """match: [B, K, K], match[b, j, k] = valid hypothesis j is hypothesis k plus one symbol.

  Args:
    tokens: [B, K, L] hypotheses padded with `pad`.
    lengths: [B, K].
    valid: [B, K] finite-scored hypotheses; only they may absorb an extension.
    pad: the padding id.
  """
  positions = jnp.arange(tokens.shape[-1])
  # Hypothesis j without its last symbol, padded like the others, so equal prefixes are equal arrays.
  parents = jnp.where(positions == (lengths - 1)[..., None], pad, tokens)
  same = jnp.all(parents[:, :, None, :] == tokens[:, None, :, :], axis=-1)
  return same & (valid & (lengths > 0))[:, :, None]


def merge(stay: jax.Array, extend: jax.Array, match: jax.Array, last: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Log-adds each extension that duplicates a stay into that stay and removes it from the extensions.

  Args:
    stay: [B, K] log scores of the hypotheses kept unchanged.
    extend: [B, K, V] log scores of hypothesis k extended by v.
    match: [B, K, K] from `duplicates`.
    last: [B, K] last token of each hypothesis.

  Returns:
    (stay [B, K], extend [B, K, V]) with the duplicates moved.
  """
  batch, beam, vocab = extend.shape
  # at_last[b, j, k] = extend[b, k, last[b, j]]: hypothesis k extended by j's last symbol.
  at_last = jnp.take_along_axis(extend, jnp.broadcast_to(last[:, None, :], (batch, beam, beam)), axis=2)
  incoming = jax.nn.logsumexp(jnp.where(match, jnp.swapaxes(at_last, 1, 2), -jnp.inf), axis=2)
  dropped = jnp.einsum("bjk,bjv->bkv", match.astype(jnp.float32), jax.nn.one_hot(last, vocab)) > 0
  return jnp.logaddexp(stay, incoming), jnp.where(dropped, -jnp.inf, extend)


def select(candidates: jax.Array, beam: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Top `beam` of the [B, K, V] candidate grid: (scores [B, beam], parent [B, beam], token [B, beam])."""
  vocab = candidates.shape[-1]
  scores, flat = jax.lax.top_k(candidates.reshape(candidates.shape[0], -1), beam)
  return scores, flat // vocab, flat % vocab


def extend(
    tokens: jax.Array, lengths: jax.Array, parent: jax.Array, token: jax.Array, pad: int
) -> tuple[jax.Array, jax.Array]:
  """New hypotheses: parent's tokens, plus `token` where it is not `pad` (the stay column).

  Args:
    tokens: [B, K, L]; lengths: [B, K]; parent: [B, K'] indices into K; token: [B, K'].

  Returns:
    (tokens [B, K', L], lengths [B, K']).
  """
  tokens = jnp.take_along_axis(tokens, parent[..., None], axis=1)
  lengths = jnp.take_along_axis(lengths, parent, axis=1)
  grows = token != pad
  write = (jnp.arange(tokens.shape[-1]) == lengths[..., None]) & grows[..., None]
  return jnp.where(write, token[..., None], tokens), lengths + grows


def sort(tokens: jax.Array, lengths: jax.Array, scores: jax.Array) -> BeamResult:
  """The beam as a BeamResult, best first."""
  scores, order = jax.lax.top_k(scores, scores.shape[-1])
  return BeamResult(
      jnp.take_along_axis(tokens, order[..., None], axis=1), jnp.take_along_axis(lengths, order, axis=1),
      scores)
