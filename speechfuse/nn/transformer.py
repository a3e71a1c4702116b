"""Transformer encoder (pre-LN or post-LN) with absolute sinusoidal or relative positions.

Block, residual stream x: [batch, time, embed]:
  pre-LN:  x += mhsa(norm_mhsa(x)); x += ffn(norm_ffn(x))          (the encoder ends with norm_out)
  post-LN: x = norm_mhsa(x + mhsa(x)); x = norm_ffn(x + ffn(x))    (no norm_out)
The parameter names are the same in both orders, so fusion specs do not depend on the choice.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from speechfuse.nn import attention
from speechfuse.nn import layers
from speechfuse.nn import relative_bias
from speechfuse.nn import streaming
from speechfuse.nn import subsampling

POSITIONS = ("absolute", "relative")


class TransformerBlock(nn.Module):
  """Self-attention and feed-forward sublayers: submodules norm_mhsa, mhsa, norm_ffn, ffn.

  Attributes:
    num_heads, ffn_dim: heads and FFN hidden width.
    pre_norm: LayerNorm before each sublayer (True) or after the residual sum (False).
    relative: relative-position attention (mhsa/pos, pos_bias_u, pos_bias_v).
    ffn_activation: "relu" (Vaswani, WeNet) or another name in layers.ACTIVATIONS.
    dropout_rate: on sublayer outputs and FFN hidden activations; attention_dropout_rate: on probabilities.
  """

  num_heads: int
  ffn_dim: int
  pre_norm: bool = True
  relative: bool = False
  ffn_activation: str = "relu"
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool = False,
               cache: streaming.BlockCache | None = None,
               position_bias: jax.Array | None = None) -> jax.Array | tuple[jax.Array, streaming.BlockCache]:
    """x: [batch, time, embed], mask: [batch, time, time] bool -> [batch, time, embed].

    With `cache` (a streaming chunk; its conv entry unused): mask is [batch, time, cached + time] and the result
    is (x, new cache). position_bias: [heads, time, time] (WavLM), gated from the attention's input by the
    submodule position_bias_gate (nn.relative_bias) and added to the scores.
    """
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    new_cache = []

    def sublayer(x, branch, norm_name):
      norm = layers.layer_norm(norm_name, self.dtype, self.param_dtype)
      drop = nn.Dropout(self.dropout_rate)
      if self.pre_norm:
        return x + drop(branch(norm(x)), deterministic=not train)
      return norm(x + drop(branch(x), deterministic=not train))

    def attend_branch(h):
      bias = None
      if position_bias is not None:
        bias = relative_bias.PositionBiasGate(self.num_heads, name="position_bias_gate", **kw)(h, position_bias)
      out = attend(h, mask, train=train, cache=None if cache is None else cache[:2], bias=bias)
      if cache is None:
        return out
      new_cache.append(out[1])
      return out[0]

    attend = attention.MultiHeadSelfAttention(
        self.num_heads, self.relative, self.attention_dropout_rate, name="mhsa", **kw)
    x = sublayer(x, attend_branch, "norm_mhsa")
    ffn = layers.FeedForward(self.ffn_dim, self.ffn_activation, self.dropout_rate, name="ffn", **kw)
    x = sublayer(x, lambda h: ffn(h, train=train), "norm_ffn")
    x = nn.with_logical_constraint(x, ("batch", "time", "embed"))
    return x if cache is None else (x, streaming.BlockCache(*new_cache[0], None))


class TransformerEncoder(nn.Module):
  """Subsampling -> x * sqrt(d_model) (+ absolute sinusoids) -> dropout -> blocks (-> norm_out if pre-LN).

  Parameter tree: subsampling/...; blocks_{i}/{norm_mhsa, mhsa, norm_ffn, ffn}; norm_out (pre-LN only).

  Attributes:
    num_blocks, d_model, num_heads, ffn_dim: block count, residual width, heads, FFN hidden width.
    pre_norm: pre-LN (default) or post-LN blocks.
    positions: "absolute" (sinusoids added after subsampling) or "relative" (inside attention).
    ffn_activation, dropout_rate, attention_dropout_rate: as in TransformerBlock.
    subsampling, subsampling_factor, subsampling_channels: front end, as in ConformerEncoder.
    dynamic_chunk_training, full_context_prob, max_chunk_size, dynamic_left_chunks: see attention.sample_chunk.
    remat: rematerialise each block in the backward pass.
  """

  num_blocks: int
  d_model: int
  num_heads: int
  ffn_dim: int
  pre_norm: bool = True
  positions: str = "absolute"
  ffn_activation: str = "relu"
  subsampling: str = "conv2d"
  subsampling_factor: int = 4
  subsampling_channels: int | None = None
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  dynamic_chunk_training: bool = False
  full_context_prob: float = 0.5
  max_chunk_size: int = 25
  dynamic_left_chunks: bool = False
  remat: bool = False
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(
      self, features: jax.Array, lengths: jax.Array, *, train: bool = False,
      chunk_size: attention.IntLike | None = None, num_left_chunks: attention.IntLike = -1,
      return_hidden: bool = False, state: streaming.EncoderState | None = None,
  ) -> tuple[jax.Array, ...]:
    """features: [batch, time, mel], lengths: [batch] -> (x [batch, time', d_model], lengths' [batch]).

    Arguments and the optional third output (block outputs) as in ConformerEncoder.__call__, and so is `state`
    (a streaming step, see `step`).
    """
    if self.positions not in POSITIONS:
      raise ValueError(f"unknown positions {self.positions!r}; choose from {POSITIONS}")
    x, lengths = subsampling.make_subsampling(
        self.subsampling, self.subsampling_factor, self.d_model, self.subsampling_channels, self.dtype,
        self.param_dtype,
    )(features.astype(self.dtype or features.dtype), lengths)
    x = x * np.sqrt(self.d_model)
    if self.positions == "absolute":
      if state is None:
        table = jnp.asarray(layers.sinusoids(np.arange(x.shape[1]), self.d_model), x.dtype)
      else:  # this chunk's rows of the table of every position a stream can reach
        table = jnp.asarray(layers.sinusoids(np.arange(state.max_frames + x.shape[1]), self.d_model), x.dtype)
        table = jax.lax.dynamic_slice_in_dim(table, state.offset, x.shape[1])
      x = x + table
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = nn.with_logical_constraint(x, ("batch", "time", "embed"))
    valid = attention.padding_mask(lengths, x.shape[1])
    mask, chunk_size = streaming.blocks_mask(self, valid, train, chunk_size, num_left_chunks, state)

    block = nn.remat(TransformerBlock, static_argnums=(3,)) if self.remat and state is None else TransformerBlock
    hidden, caches = [], []
    for i in range(self.num_blocks):
      layer = block(
          self.num_heads, self.ffn_dim, self.pre_norm, self.positions == "relative", self.ffn_activation,
          self.dropout_rate, self.attention_dropout_rate, self.dtype, self.param_dtype, name=f"blocks_{i}",
      )
      if state is None:
        x = layer(x, mask, train)
      else:
        x, cache = layer(x, mask, train, streaming.BlockCache(state.keys[i], state.values[i], None))
        caches.append(cache)
      hidden.append(x)
    if self.pre_norm:
      x = layers.layer_norm("norm_out", self.dtype, self.param_dtype)(x)
    x = jnp.where(valid[..., None], x, 0.0)
    if state is not None:
      return x, lengths, state.replace(offset=state.offset + x.shape[1], keys=tuple(c.keys for c in caches),
                                       values=tuple(c.values for c in caches))
    return (x, lengths, tuple(hidden)) if return_hidden else (x, lengths)

  def chunk_window(self, chunk_size: int) -> streaming.ChunkWindow:
    """The feature frames `step` reads for chunks of `chunk_size` encoder frames (streaming.chunk_window)."""
    return streaming.chunk_window(self.subsampling, self.subsampling_factor, chunk_size)

  def init_state(self, batch_size: int, chunk_size: int, num_left_chunks: int,
                 max_frames: int) -> streaming.EncoderState:
    """The state before a stream's first chunk, as ConformerEncoder.init_state (no convolution caches)."""
    cached = streaming.cache_frames(chunk_size, num_left_chunks, max_frames)
    kv = jnp.zeros((batch_size, cached, self.num_heads, self.d_model // self.num_heads), self.dtype or jnp.float32)
    return streaming.EncoderState(jnp.zeros((), jnp.int32), (kv,) * self.num_blocks, (kv,) * self.num_blocks, (),
                                  max_frames)

  def step(self, features: jax.Array, lengths: jax.Array,
           state: streaming.EncoderState) -> tuple[jax.Array, jax.Array, streaming.EncoderState]:
    """One chunk, as ConformerEncoder.step."""
    return self(features, lengths, state=state)
