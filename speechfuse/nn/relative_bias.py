"""WavLM's gated relative position bias (Chen et al., "WavLM: Large-Scale Self-Supervised Pre-Training for Full
Stack Speech Processing", 2022, section 2.2).

  buckets      relative position r = key - query -> one of `num_buckets` buckets: half for r > 0, half for r <= 0;
               within a half (n = num_buckets / 2), |r| < n / 2 is its own bucket, larger |r| share buckets
               logarithmically up to `max_distance`: n / 2 + floor(log(|r| / (n / 2)) / log(max_distance / (n / 2))
               * n / 2), capped at n - 1 (T5's bucketing, bidirectional).
  bias         RelativePositionBias: an embedding [num_buckets, heads] looked up per (query, key) -> [heads, q, k];
               computed once by the encoder and shared by every block (WavLM: layer 0 owns the embedding).
  gate         PositionBiasGate, per block, from that block's attention input x [batch, time, embed] split into
               heads [batch, time, heads, head_dim]: a Dense head_dim -> 8 shared by the heads, viewed as (2, 4)
               and summed to two logits, sigmoid -> (a, b); gate = a (b c - 1) + 2 with a learned c [heads]
               (initialised to 1); the block's bias is gate [batch, heads, time, 1] x bias [heads, q, k].

Parameters and the HF WavLM names they map from:
  relative_position_bias/embedding [num_buckets, heads]  <- encoder.layers.0.attention.rel_attn_embed.weight
  blocks_{i}/position_bias_gate/linear/{kernel [head_dim, 8], bias [8]}
                                                         <- encoder.layers.{i}.attention.gru_rel_pos_linear (weight.T)
  blocks_{i}/position_bias_gate/const [heads]            <- ...attention.gru_rel_pos_const [1, heads, 1, 1]
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from speechfuse.nn import layers


def relative_position_buckets(queries: int, keys: int, num_buckets: int = 320, max_distance: int = 800) -> np.ndarray:
  """[queries, keys] int32 bucket of the relative position key - query (module docstring).

  Static shapes give static positions, so the table is numpy, in float32 as WavLM computes it.
  """
  half = num_buckets // 2
  max_exact = half // 2
  relative = np.arange(keys)[None, :] - np.arange(queries)[:, None]
  buckets = (relative > 0).astype(np.int64) * half
  distance = np.abs(relative)
  scaled = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
  scaled = scaled / np.float32(np.log(max_distance / max_exact)) * np.float32(half - max_exact)
  large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
  return (buckets + np.where(distance < max_exact, distance, large)).astype(np.int32)


class RelativePositionBias(nn.Module):
  """The ungated bias [heads, time, time] of self-attention over `time` frames: submodule embedding."""

  num_heads: int
  num_buckets: int = 320
  max_distance: int = 800
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, time: int) -> jax.Array:
    """time: frames (static) -> [heads, time, time] float32."""
    embedding = nn.Embed(
        self.num_buckets, self.num_heads, param_dtype=self.param_dtype,
        embedding_init=layers.logical(nn.initializers.normal(0.02), (None, "heads")), name="embedding",
    )
    values = embedding(jnp.asarray(relative_position_buckets(time, time, self.num_buckets, self.max_distance)))
    return jnp.transpose(values, (2, 0, 1)).astype(jnp.float32)


class PositionBiasGate(nn.Module):
  """Per-query, per-head gate of the relative position bias: submodules linear, parameter const [heads]."""

  num_heads: int
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
    """x: [batch, time, embed] (the attention's input), bias: [heads, time, time] -> [batch, heads, time, time]."""
    batch, time, embed = x.shape
    heads = x.reshape(batch, time, self.num_heads, embed // self.num_heads)
    logits = nn.Dense(8, dtype=self.dtype, param_dtype=self.param_dtype,
                      kernel_init=layers.kernel_init(("kv", None)), bias_init=layers.bias_init((None,)),
                      name="linear")(heads)
    gates = jax.nn.sigmoid(logits.astype(jnp.float32).reshape(batch, time, self.num_heads, 2, 4).sum(-1))
    const = self.param("const", layers.logical(nn.initializers.ones_init(), ("heads",)), (self.num_heads,),
                       self.param_dtype)
    gate = gates[..., 0] * (gates[..., 1] * const - 1.0) + 2.0  # [batch, time, heads]
    return jnp.transpose(gate, (0, 2, 1))[..., None] * bias[None]
