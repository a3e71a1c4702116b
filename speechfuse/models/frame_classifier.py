"""A tiny frame-level classifier on raw waveforms: the trainer's test and benchmark model.

Frames of `frame_size` samples -> linear embedding -> residual MLP blocks -> per-frame logits. It carries the
pieces the trainer must handle for every real model: logically partitioned parameters, activation sharding
constraints, a compute dtype, and (with norm="batch") a non-parameter collection, batch statistics.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

_INIT = nn.initializers.lecun_normal()


def _dense(features: int, axes: tuple[str, str], dtype: Any, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, name=name, kernel_init=nn.with_logical_partitioning(_INIT, axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))


class FrameClassifier(nn.Module):
  """Per-frame classifier.

  Attributes:
    num_classes: output classes per frame.
    frame_size: samples per frame (no overlap).
    embed_dim, mlp_dim, num_layers: residual MLP sizes.
    norm: "layer" or "batch" (BatchNorm keeps running statistics in the `batch_stats` collection).
    dtype: compute dtype; parameters are float32 and logits are returned in float32.
  """
  num_classes: int
  frame_size: int
  embed_dim: int
  mlp_dim: int
  num_layers: int
  norm: str = "layer"
  dtype: Any = jnp.float32

  def _norm(self, name: str, train: bool) -> nn.Module:
    scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
    bias_init = nn.with_logical_partitioning(nn.initializers.zeros, ("embed",))
    if self.norm == "batch":
      return nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, scale_init=scale_init,
                          bias_init=bias_init, name=name)
    if self.norm == "layer":
      return nn.LayerNorm(dtype=self.dtype, scale_init=scale_init, bias_init=bias_init, name=name)
    raise ValueError(f"config.model.norm={self.norm!r} must be 'layer' or 'batch'")

  @nn.compact
  def __call__(self, audio: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """Classifies frames.

    Args:
      audio: int16 or float waveforms [batch, samples], samples a multiple of frame_size.
      train: BatchNorm uses batch statistics (and updates the running ones) when True.

    Returns:
      logits: float32 [batch, samples // frame_size, num_classes].
    """
    batch, samples = audio.shape
    scale = 1.0 / 32768.0 if jnp.issubdtype(audio.dtype, jnp.integer) else 1.0
    frames = (audio.astype(jnp.float32) * scale).reshape(batch, samples // self.frame_size, self.frame_size)
    x = _dense(self.embed_dim, ("frame", "embed"), self.dtype, "embed")(frames.astype(self.dtype))
    x = nn.with_logical_constraint(x, ("batch", "time", "embed"))
    for i in range(self.num_layers):
      y = self._norm(f"norm_{i}", train)(x)
      y = nn.gelu(_dense(self.mlp_dim, ("embed", "mlp"), self.dtype, f"mlp_in_{i}")(y))
      y = nn.with_logical_constraint(y, ("batch", "time", "mlp"))
      x = x + _dense(self.embed_dim, ("mlp", "embed"), self.dtype, f"mlp_out_{i}")(y)
      x = nn.with_logical_constraint(x, ("batch", "time", "embed"))
    x = self._norm("final_norm", train)(x)
    logits = _dense(self.num_classes, ("embed", "vocab"), self.dtype, "head")(x)
    return logits.astype(jnp.float32)


def from_config(config: ml_collections.ConfigDict, dtype: Any) -> FrameClassifier:
  return FrameClassifier(num_classes=config.num_classes, frame_size=config.frame_size, embed_dim=config.embed_dim,
                         mlp_dim=config.mlp_dim, num_layers=config.num_layers, norm=config.norm, dtype=dtype)
