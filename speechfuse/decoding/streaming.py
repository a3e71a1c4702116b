"""Streaming (chunk-by-chunk) CTC greedy decoding for the online mode.

The online mode runs the encoder with a chunk attention mask (ConformerEncoder's `chunk_size` /
`num_left_chunks`, with `causal_conv=True`): an output frame in chunk c then depends on input chunks <= c
only, so the log-probs of chunk c are final once its audio has arrived, and evaluating "online" is
decoding those chunk-causal outputs. Greedy CTC needs one label of look-back across chunks (to merge a
repeat that straddles the boundary), which `StreamingCTCDecoder` carries on the host; fed the chunks of
an utterance in order it returns what `ctc_greedy` returns on their concatenation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from speechfuse.decoding.ctc import collapse


@functools.partial(jax.jit, static_argnames=("blank_id",))
def _greedy_chunk(log_probs: jax.Array, lengths: jax.Array, previous: jax.Array, blank_id: int):
  """One chunk: (tokens [B, t], token_lengths [B], label of the last valid frame (else previous) [B])."""
  best = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
  valid = jnp.arange(best.shape[1])[None, :] < lengths[:, None]
  tokens, token_lengths = collapse(best, valid, previous, blank_id)
  last = jnp.take_along_axis(best, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
  return tokens, token_lengths, jnp.where(lengths > 0, last, previous)


class StreamingCTCDecoder:
  """Greedy CTC over a batch of streams, fed chunk by chunk.

  Example:
    decoder = StreamingCTCDecoder(batch_size=4)
    for chunk_log_probs, chunk_lengths in chunks:   # [4, t, V], [4]
      decoder.accept(chunk_log_probs, chunk_lengths)
      partial_tokens, partial_lengths = decoder.result()
  """

  def __init__(self, batch_size: int, blank_id: int = 0):
    self.batch_size = batch_size
    self.blank_id = blank_id
    self.reset()

  def reset(self) -> None:
    """Starts new utterances in every stream."""
    self._previous = jnp.full((self.batch_size,), self.blank_id, jnp.int32)
    self._tokens: list[list[int]] = [[] for _ in range(self.batch_size)]

  def accept(self, log_probs, lengths=None) -> None:
    """Consumes the next chunk.

    Args:
      log_probs: [B, t, V] log-probabilities (or logits) of the chunk's frames.
      lengths: [B] valid frames in this chunk (0 for a stream that has ended; fewer than t for the last,
        partial chunk); None when all t are valid.
    """
    log_probs = jnp.asarray(log_probs)
    if log_probs.shape[0] != self.batch_size:
      raise ValueError(f"chunk batch {log_probs.shape[0]} != decoder batch_size {self.batch_size}")
    if lengths is None:
      lengths = jnp.full((self.batch_size,), log_probs.shape[1], jnp.int32)
    tokens, token_lengths, self._previous = _greedy_chunk(
        log_probs, jnp.asarray(lengths, jnp.int32), self._previous, self.blank_id)
    tokens, token_lengths = np.asarray(tokens), np.asarray(token_lengths)
    for stream, (row, length) in enumerate(zip(tokens, token_lengths)):
      self._tokens[stream].extend(row[:length].tolist())

  def result(self) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [B, L] padded with blank_id, token_lengths [B]) decoded so far, L the longest."""
    token_lengths = np.array([len(tokens) for tokens in self._tokens], np.int32)
    out = np.full((self.batch_size, token_lengths.max(initial=0)), self.blank_id, np.int32)
    for stream, tokens in enumerate(self._tokens):
      out[stream, :len(tokens)] = tokens
    return out, token_lengths
