"""Multi-head self-attention with Transformer-XL relative positions, and the masks it takes.

Masks are boolean and True where attention (or a frame) is allowed:
  padding_mask(lengths, time): [batch, time], True on valid frames;
  make_chunk_mask(time, chunk_size, num_left_chunks): [time, time], WeNet's `subsequent_chunk_mask`;
  attention_mask(valid, chunk): [batch, time, time] for MultiHeadSelfAttention.
Chunk sizes may be traced scalars, so dynamic chunk training (`sample_chunk`) draws one per batch inside jit
while every shape stays static.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from speechfuse.nn import layers

IntLike = int | jax.Array


def padding_mask(lengths: jax.Array, time: int) -> jax.Array:
  """lengths: [batch] -> [batch, time] bool, True for frames t < lengths[b]."""
  return jnp.arange(time)[None, :] < jnp.asarray(lengths)[:, None]


def make_chunk_mask(time: int, chunk_size: IntLike, num_left_chunks: IntLike = -1) -> jax.Array:
  """[time, time] bool: query frame i may attend to key frame j (WeNet's `subsequent_chunk_mask`).

  Frames are grouped into chunks of `chunk_size`; frame i sees every frame of its own chunk and of the
  `num_left_chunks` chunks before it (all earlier chunks if negative), nothing later. chunk_size >= time
  is full context. Both arguments may be traced integer scalars; chunk_size must be >= 1.
  """
  chunk = jnp.arange(time) // chunk_size
  query_chunk, key_chunk = chunk[:, None], chunk[None, :]
  return (key_chunk <= query_chunk) & ((num_left_chunks < 0) | (key_chunk >= query_chunk - num_left_chunks))


def attention_mask(valid: jax.Array, chunk: jax.Array | None = None) -> jax.Array:
  """valid: [batch, time] (padding_mask), chunk: [time, time] or None -> [batch, time, time].

  Only keys are masked by padding: outputs at padded query frames are discarded by the callers, and
  masking queries too would leave rows with nothing to attend to.
  """
  mask = jnp.broadcast_to(valid[:, None, :], (valid.shape[0], valid.shape[1], valid.shape[1]))
  return mask if chunk is None else mask & chunk[None]


def sample_chunk(
    rng: jax.Array, time: int, *, full_context_prob: float = 0.5, max_chunk_size: int = 25,
    dynamic_left_chunks: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """Dynamic chunk training (WeNet / UFO2): draws one (chunk_size, num_left_chunks) for a batch, jit-safe.

  With probability `full_context_prob` the batch sees full context (chunk_size = time, num_left_chunks = -1);
  otherwise chunk_size is uniform in [1, max_chunk_size] frames (after subsampling) and num_left_chunks is -1,
  or, with `dynamic_left_chunks`, uniform in [0, (time - 1) // chunk_size) (0 when that range is empty).

  Returns:
    (chunk_size, num_left_chunks): int32 scalars for make_chunk_mask.
  """
  full_key, size_key, left_key = jax.random.split(rng, 3)
  full = jax.random.uniform(full_key) < full_context_prob
  size = jax.random.randint(size_key, (), 1, max_chunk_size + 1)
  if dynamic_left_chunks:
    max_left = jnp.maximum((time - 1) // size, 1)
    left = jax.random.randint(left_key, (), 0, max_left)
  else:
    left = jnp.int32(-1)
  return jnp.where(full, time, size).astype(jnp.int32), jnp.where(full, -1, left).astype(jnp.int32)


def encoder_chunking(module: nn.Module, time: int, train: bool, chunk_size: IntLike | None,
                     num_left_chunks: IntLike) -> tuple[IntLike | None, IntLike]:
  """The (chunk_size, num_left_chunks) an encoder `module` runs with (chunk_size None: full context).

  `module` is an encoder with the attributes dynamic_chunk_training, full_context_prob, max_chunk_size and
  dynamic_left_chunks. An explicit chunk_size wins; otherwise, when training with dynamic_chunk_training, one
  chunk is drawn per batch from the module's "dropout" RNG stream; otherwise full context.
  """
  if chunk_size is None and train and module.dynamic_chunk_training:
    return sample_chunk(module.make_rng("dropout"), time, full_context_prob=module.full_context_prob,
                        max_chunk_size=module.max_chunk_size, dynamic_left_chunks=module.dynamic_left_chunks)
  return chunk_size, num_left_chunks


def encoder_attention_mask(valid: jax.Array, chunk_size: IntLike | None, num_left_chunks: IntLike) -> jax.Array:
  """The [batch, time, time] attention mask of an encoder (valid: [batch, time] bool) running with
  encoder_chunking's (chunk_size, num_left_chunks)."""
  time = valid.shape[1]
  chunk = None if chunk_size is None else make_chunk_mask(time, chunk_size, num_left_chunks)
  return attention_mask(valid, chunk)


def relative_sinusoids(time: int, dim: int, key_time: int | None = None) -> np.ndarray:
  """Sinusoids [time + key_time - 1, dim] for relative positions key_time-1, key_time-2, ..., -(time-1) (ESPnet's
  order), for `time` queries that are the last `time` of `key_time` keys (key_time = time: self-attention over
  one sequence; key_time = cached + time: a streaming chunk attending to its cache and itself)."""
  key_time = time if key_time is None else key_time
  return layers.sinusoids(np.arange(key_time - 1, -time, -1), dim)


def rel_shift(scores: jax.Array) -> jax.Array:
  """Transformer-XL shift: [..., Tq, Tq + Tk - 1] by relative position -> [..., Tq, Tk] by key.

  Column p of `scores` holds relative position (Tk-1-p) as laid out by relative_sinusoids(Tq, dim, Tk), the
  queries being the last Tq of the Tk keys; the result has out[..., i, j] = scores[..., i, Tq-1-i+j], the score
  for query i and key j (relative position Tk-Tq+i-j). Pad one zero column in front, flatten the last two axes,
  drop the first Tq entries and view back as [Tq, Tq + Tk - 1] rows: static shapes, no gather.
  """
  *lead, queries, positions = scores.shape
  keys = positions - queries + 1
  padded = jnp.pad(scores, [(0, 0)] * len(lead) + [(0, 0), (1, 0)])
  flat = padded.reshape(*lead, queries * (positions + 1))[..., queries:]
  return flat.reshape(*lead, queries, positions)[..., :keys]


class MultiHeadSelfAttention(nn.Module):
  """Multi-head self-attention, optionally with Transformer-XL relative positions (Conformer's MHSA).

  Parameters (per-head structure kept as separate axes, so fusion can move heads and head features):
    query, key, value: kernel [embed, heads, head_dim], bias [heads, head_dim];
    out: kernel [heads, head_dim, embed], bias [embed];
    relative only: pos: kernel [embed, heads, head_dim] (no bias), projecting the sinusoids of relative
    positions; pos_bias_u, pos_bias_v [heads, head_dim], the content and position biases added to queries.
  Scores: ((q + u) k^T + rel_shift((q + v) p^T)) / sqrt(head_dim), softmax in float32.

  Attributes:
    num_heads: number of heads; head_dim = embed // num_heads.
    relative: relative positional encoding (True) or none (absolute positions are added to the input).
    dropout_rate: dropout on the attention probabilities.
  """

  num_heads: int
  relative: bool = True
  dropout_rate: float = 0.0
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool = False,
               cache: tuple[jax.Array, jax.Array] | None = None,
               bias: jax.Array | None = None) -> jax.Array | tuple[jax.Array, Any]:
    """x: [batch, time, embed], mask: [batch, time, keys] bool (query, key; True = attend) -> [batch, time, embed].

    bias: [batch or 1, heads, time, keys] added to the scaled scores (WavLM's gated relative position bias).

    A query row with no allowed key outputs zeros (then the out bias) rather than an average over padding.
    With `cache` = (keys, values) [batch, cached, heads, head_dim] of the frames just before x (a streaming
    chunk), the queries attend to cached + time keys (mask [batch, time, cached + time]) and the result is
    (output, new cache): the last `cached` keys and values, this chunk's included.
    """
    _, time, embed = x.shape
    if embed % self.num_heads:
      raise ValueError(f"embed dimension {embed} is not divisible by num_heads={self.num_heads}")
    head_dim = embed // self.num_heads
    projection = functools.partial(
        layers.Projection, (self.num_heads, head_dim), ("embed", "heads", "kv"), dtype=self.dtype,
        param_dtype=self.param_dtype,
    )
    head_axes = ("batch", "time", "heads", "kv")
    query = nn.with_logical_constraint(projection(name="query")(x), head_axes)
    key = nn.with_logical_constraint(projection(name="key")(x), head_axes)
    value = nn.with_logical_constraint(projection(name="value")(x), head_axes)
    if cache is not None:
      key = jnp.concatenate([cache[0].astype(key.dtype), key], axis=1)
      value = jnp.concatenate([cache[1].astype(value.dtype), value], axis=1)
    key_time = key.shape[1]

    if self.relative:
      bias_init = layers.logical(nn.initializers.xavier_uniform(), ("heads", "kv"))
      pos_bias_u = self.param("pos_bias_u", bias_init, (self.num_heads, head_dim), self.param_dtype)
      pos_bias_v = self.param("pos_bias_v", bias_init, (self.num_heads, head_dim), self.param_dtype)
      table = jnp.asarray(relative_sinusoids(time, embed, key_time), self.dtype or jnp.float32)
      positions = projection(use_bias=False, name="pos")(table)  # [time + key_time - 1, heads, head_dim]
      content = jnp.einsum("bqhd,bkhd->bhqk", query + pos_bias_u.astype(query.dtype), key)
      position = jnp.einsum("bqhd,phd->bhqp", query + pos_bias_v.astype(query.dtype), positions)
      scores = content + rel_shift(position)
    else:
      scores = jnp.einsum("bqhd,bkhd->bhqk", query, key)

    allowed = mask[:, None, :, :]
    scores = scores.astype(jnp.float32) / np.sqrt(head_dim)
    if bias is not None:
      scores = scores + bias.astype(jnp.float32)
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jnp.where(allowed, jax.nn.softmax(scores, axis=-1), 0.0)
    probs = nn.Dropout(self.dropout_rate)(probs, deterministic=not train)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(value.dtype), value)
    context = nn.with_logical_constraint(context, head_axes)
    out = layers.Projection(
        (embed,), ("heads", "kv", "embed"), input_axes=2, dtype=self.dtype, param_dtype=self.param_dtype, name="out",
    )(context)
    if cache is None:
      return out
    cached = cache[0].shape[1]
    return out, (key[:, key_time - cached:], value[:, key_time - cached:])
