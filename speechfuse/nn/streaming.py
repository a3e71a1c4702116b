"""Chunk-by-chunk encoding: the state a streaming encoder carries between chunks, and the geometry of its chunks.

A streaming encoder (ConformerEncoder with a causal or chunk-restricted convolution, TransformerEncoder) offers

    state = encoder.init_state(batch, chunk_size, num_left_chunks, max_frames)
    x, lengths, state = encoder.step(window, window_lengths, state)     # x: [batch, chunk_size, d_model]

whose outputs equal its full-utterance forward under the chunk mask make_chunk_mask(chunk_size,
num_left_chunks). Chunk c is the encoder frames [c * chunk_size, (c + 1) * chunk_size); its `window` is the
feature frames [c * stride, c * stride + window_frames) of `chunk_window` (WeNet's decoding window): the
subsampling's receptive field reaches `lookahead` frames past the chunk's own stride * chunk_size frames, so
consecutive windows overlap by that much. `window_lengths` [batch] counts the window's valid frames (fewer at the
end of an utterance, 0 after it).

The state holds, per block, the keys and values of the left context the chunk mask allows (all earlier frames
when num_left_chunks < 0, up to max_frames) and the last inputs of each convolution (as many as it has taps in
the past).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from speechfuse.nn import attention, subsampling


class EncoderState(struct.PyTreeNode):
  """What a streaming encoder carries from one chunk to the next.

  Attributes:
    offset: int32 [], encoder frames emitted before the next chunk (the same for every stream of the batch).
    keys, values: per block [batch, cached, heads, head_dim], the attention inputs of the last `cached` frames
      (zeros before the utterance: masked by `offset`).
    conv: per block [batch, past taps, channels], the last inputs of the convolution (zeros before the
      utterance, as the full forward's left padding); () for encoders without one.
    max_frames: static, the most encoder frames a stream may have (absolute position tables are cut from it).
  """
  offset: jax.Array
  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  conv: tuple[jax.Array, ...]
  max_frames: int = struct.field(pytree_node=False)


class BlockCache(NamedTuple):
  """A block's streaming cache: attention keys / values [batch, cached, heads, head_dim], conv inputs
  [batch, past taps, channels] (None for blocks without a convolution)."""
  keys: jax.Array
  values: jax.Array
  conv: jax.Array | None


class ChunkWindow(NamedTuple):
  """Feature frames an encoder step reads: `frames` of them, every `stride` frames; `lookahead` of them lie past
  the chunk's own stride frames (the subsampling's right context), and `history` of them before (an encoder that
  recomputes a front end's left context rather than caching it; the driver pads the utterance's start with that
  many frames, which the encoder must ignore). `output_frames` maps feature frames to the encoder's output frames
  where they are not the receptive field's count (None: (T - lookahead - s) // s + 1 for s = stride / chunk)."""
  frames: int
  stride: int
  lookahead: int
  history: int = 0
  output_frames: Callable[[int], int] | None = None


def chunk_window(kind: str, factor: int, chunk_size: int) -> ChunkWindow:
  """The window of a subsampling `kind` x `factor` encoder for chunks of `chunk_size` encoder frames."""
  receptive, stride = subsampling.receptive_field(kind, factor)
  return ChunkWindow(stride * (chunk_size - 1) + receptive, stride * chunk_size, receptive - stride)


def cache_frames(chunk_size: int, num_left_chunks: int, max_frames: int) -> int:
  """Left-context frames a step attends to: num_left_chunks chunks, or every earlier chunk up to max_frames."""
  if num_left_chunks >= 0:
    return num_left_chunks * chunk_size
  return (math.ceil(max_frames / chunk_size) - 1) * chunk_size


def blocks_mask(module: Any, valid: jax.Array, train: bool, chunk_size: attention.IntLike | None,
                num_left_chunks: attention.IntLike,
                state: EncoderState | None) -> tuple[jax.Array, attention.IntLike | None]:
  """(the attention mask of an encoder's blocks, the chunk size they run with): a streaming step's over its cache
  and chunk, or the full forward's chunk mask (attention.encoder_chunking, dynamic chunks drawn in training)."""
  if state is not None:
    return step_mask(state.offset, state.keys[0].shape[1], valid), None
  chunk_size, num_left_chunks = attention.encoder_chunking(module, valid.shape[1], train, chunk_size, num_left_chunks)
  return attention.encoder_attention_mask(valid, chunk_size, num_left_chunks), chunk_size


def step_mask(offset: jax.Array, cached: int, valid: jax.Array) -> jax.Array:
  """[batch, chunk, cached + chunk] bool: a chunk's queries see the cached frames that exist (position >= 0) and
  the valid frames of their own chunk (valid: [batch, chunk])."""
  cache_valid = jnp.arange(cached) >= cached - offset  # [cached]
  keys = jnp.concatenate([jnp.broadcast_to(cache_valid, (valid.shape[0], cached)), valid], axis=1)
  return jnp.broadcast_to(keys[:, None, :], (valid.shape[0], valid.shape[1], cached + valid.shape[1]))
