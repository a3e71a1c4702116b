"""Streaming drivers: an encoder fed chunk by chunk through its step API, and chunk-by-chunk CTC greedy decoding.

`stream_encode` runs a streaming encoder (speechfuse.nn.streaming: `init_state` / `step`) over a padded batch
of feature sequences, one chunk per `lax.scan` iteration, as a deployed model would receive them: step c reads
only the feature frames of chunk c's window, so nothing of a later chunk (past the window's look-ahead) can
reach its outputs. Its outputs equal the encoder's full-utterance forward under the same chunk mask; the online
columns of the results tables are decoded from them.

Greedy CTC needs one label of look-back across chunks (to merge a repeat that straddles the boundary), which
`StreamingCTCDecoder` carries on the host; fed the chunks of an utterance in order it returns what
`ctc_greedy` returns on their concatenation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from speechfuse.decoding.ctc import collapse
from speechfuse.nn import streaming

# (window features [B, W, F], their valid frames [B], state) -> (outputs [B, C, D], valid outputs [B], state).
StepFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, jax.Array, Any]]


def chunk_count(frames: int, window: streaming.ChunkWindow, chunk_size: int) -> tuple[int, int]:
  """(encoder frames, chunks) of `frames` feature frames: the encoder's own length and the chunks covering it."""
  if window.output_frames is not None:
    encoder_frames = int(window.output_frames(frames))
  else:
    stride = window.stride // chunk_size
    encoder_frames = max((frames - window.lookahead - stride) // stride + 1, 0)
  return encoder_frames, max(-(-encoder_frames // chunk_size), 1)


def stream_encode(step: StepFn, state: Any, features: jax.Array, lengths: jax.Array, window: streaming.ChunkWindow,
                  chunk_size: int) -> tuple[jax.Array, jax.Array]:
  """Encodes features chunk by chunk (module docstring); jit-able.

  Args:
    step: one chunk of the encoder (its `step` applied with the model's variables).
    state: the encoder's `init_state` for this batch, chunk size and left context.
    features: [B, T, F] padded features; lengths: [B] valid frames.
    window: the encoder's chunk_window(chunk_size).
    chunk_size: encoder frames per chunk.

  Returns:
    (x [B, T', D], lengths' [B]): T' = the encoder's full-utterance length of T frames, frames past lengths' zero.
  """
  batch, frames = features.shape[:2]
  encoder_frames, chunks = chunk_count(frames, window, chunk_size)
  end_padding = max((chunks - 1) * window.stride + window.frames - window.history - frames, 0)
  padded = jnp.pad(features, ((0, 0), (window.history, end_padding), (0, 0)))

  def body(state, chunk):
    start = chunk * window.stride  # in `padded`: the chunk's own frames start `history` frames later
    chunk_features = jax.lax.dynamic_slice_in_dim(padded, start, window.frames, axis=1)
    chunk_lengths = jnp.clip(lengths + window.history - start, 0, window.frames).astype(jnp.int32)
    x, valid, state = step(chunk_features, chunk_lengths, state)
    return state, (x, valid)

  _, (x, valid) = jax.lax.scan(body, state, jnp.arange(chunks))
  x = jnp.swapaxes(x, 0, 1).reshape(batch, chunks * chunk_size, x.shape[-1])
  return x[:, :encoder_frames], valid.sum(axis=0)


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
