"""Conformer (Gulati et al., 2020) in the WeNet / ESPnet layout: macaron FFNs, rel-pos MHSA, conv module.

Block (pre-LN, residual stream x: [batch, time, embed]):
  x += 1/2 * ffn1(norm_ffn1(x)); x += mhsa(norm_mhsa(x)); x += conv(norm_conv(x)); x += 1/2 * ffn2(norm_ffn2(x));
  x = norm_out(x).
Conv module: pointwise_in (embed -> [value; gate] halves of C) -> GLU -> depthwise (kernel K, per channel)
-> norm (BatchNorm or LayerNorm) -> swish -> pointwise_out (C -> embed). Padding frames are zeroed before the
depthwise conv and left out of the BatchNorm statistics, so valid outputs do not depend on padding.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from speechfuse.nn import attention
from speechfuse.nn import layers
from speechfuse.nn import subsampling

CONV_NORMS = ("batch_norm", "layer_norm")
BATCH_NORM_MOMENTUM = 0.9  # PyTorch's momentum 0.1 in flax's convention (weight of the old running value)


class DepthwiseConv1d(nn.Module):
  """Per-channel convolution over time: kernel [kernel_size, conv_channels], bias [conv_channels].

  Attributes:
    kernel_size: taps; the 'same' padding puts (kernel_size - 1) // 2 of them in the past.
    causal: pad only on the left, so output t depends on frames <= t (streaming).
  """

  kernel_size: int
  causal: bool = False
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [batch, time, channels] -> [batch, time, channels]."""
    channels = x.shape[-1]
    kernel = self.param("kernel", layers.kernel_init((None, "conv_channels")), (self.kernel_size, channels),
                        self.param_dtype)
    bias = self.param("bias", layers.bias_init(("conv_channels",)), (channels,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    left = self.kernel_size - 1 if self.causal else (self.kernel_size - 1) // 2
    y = jax.lax.conv_general_dilated(
        x, kernel[:, None, :], window_strides=(1,), padding=[(left, self.kernel_size - 1 - left)],
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=channels,
    )
    return y + bias


class ConvModule(nn.Module):
  """Conformer convolution module; the channel count C equals embed.

  Parameters: pointwise_in/kernel [embed, 2, C] and bias [2, C], whose index 0 / 1 on the middle axis are the
  GLU's value / gate halves (PyTorch's first / second C output channels); depthwise/kernel [K, C], bias [C];
  norm/scale, norm/bias [C] (+ batch_stats norm/mean, norm/var [C] for BatchNorm); pointwise_out/kernel
  [C, embed], bias [embed].

  Attributes:
    kernel_size: depthwise taps (31 in the OTF paper and WeNet).
    norm: "batch_norm" (Gulati, WeNet) or "layer_norm".
    causal: causal depthwise conv for streaming.
  """

  kernel_size: int = 31
  norm: str = "batch_norm"
  causal: bool = False
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array, *, train: bool = False) -> jax.Array:
    """x: [batch, time, embed], valid: [batch, time] bool -> [batch, time, embed].

    With BatchNorm and train=True, batch statistics over valid frames are used and the running ones updated
    (apply with mutable=["batch_stats"]).
    """
    if self.norm not in CONV_NORMS:
      raise ValueError(f"unknown conv module norm {self.norm!r}; choose from {CONV_NORMS}")
    embed = x.shape[-1]
    glu_in = layers.Projection(
        (2, embed), ("embed", None, "conv_channels"), dtype=self.dtype, param_dtype=self.param_dtype,
        name="pointwise_in",
    )(x)
    h = glu_in[..., 0, :] * nn.sigmoid(glu_in[..., 1, :])
    # Zeroed padding makes the depthwise conv see what it would see at the end of an unpadded utterance.
    h = jnp.where(valid[..., None], h, 0.0)
    h = nn.with_logical_constraint(h, ("batch", "time", "conv_channels"))
    h = DepthwiseConv1d(self.kernel_size, self.causal, self.dtype, self.param_dtype, name="depthwise")(h)
    if self.norm == "batch_norm":
      h = nn.BatchNorm(
          use_running_average=not train, momentum=BATCH_NORM_MOMENTUM, epsilon=1e-5, dtype=self.dtype,
          param_dtype=self.param_dtype, scale_init=layers.logical(nn.initializers.ones_init(), ("conv_channels",)),
          bias_init=layers.bias_init(("conv_channels",)), name="norm",
      )(h, mask=jnp.broadcast_to(valid[..., None], h.shape))
    else:
      h = layers.layer_norm("norm", self.dtype, self.param_dtype, axis_name="conv_channels")(h)
    h = nn.swish(h)
    return nn.Dense(
        embed, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=layers.kernel_init(("conv_channels", "embed")), bias_init=layers.bias_init(("embed",)),
        name="pointwise_out",
    )(h)


class ConformerBlock(nn.Module):
  """One Conformer block; submodules norm_ffn1, ffn1, norm_mhsa, mhsa, norm_conv, conv, norm_ffn2, ffn2, norm_out.

  Attributes:
    num_heads, ffn_dim, conv_kernel, conv_norm, causal_conv: see ConformerEncoder.
    dropout_rate: dropout on each branch output and on the FFN hidden activations.
    attention_dropout_rate: dropout on attention probabilities.
  """

  num_heads: int
  ffn_dim: int
  conv_kernel: int = 31
  conv_norm: str = "batch_norm"
  causal_conv: bool = False
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    """x: [batch, time, embed], valid: [batch, time] bool, mask: [batch, time, time] bool -> [batch, time, embed]."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: layers.layer_norm(name, self.dtype, self.param_dtype)
    drop = lambda h: nn.Dropout(self.dropout_rate)(h, deterministic=not train)
    ffn = lambda name: layers.FeedForward(self.ffn_dim, "swish", self.dropout_rate, name=name, **kw)

    x = x + 0.5 * drop(ffn("ffn1")(norm("norm_ffn1")(x), train=train))
    attend = attention.MultiHeadSelfAttention(
        self.num_heads, relative=True, dropout_rate=self.attention_dropout_rate, name="mhsa", **kw)
    x = x + drop(attend(norm("norm_mhsa")(x), mask, train=train))
    conv = ConvModule(self.conv_kernel, self.conv_norm, self.causal_conv, name="conv", **kw)
    x = x + drop(conv(norm("norm_conv")(x), valid, train=train))
    x = x + 0.5 * drop(ffn("ffn2")(norm("norm_ffn2")(x), train=train))
    x = norm("norm_out")(x)
    return nn.with_logical_constraint(x, ("batch", "time", "embed"))


class ConformerEncoder(nn.Module):
  """Subsampling -> x * sqrt(d_model) -> dropout -> Conformer blocks; relative positions inside attention.

  Parameter tree: subsampling/{conv_0, conv_1, ..., proj}; blocks_{i}/... as in ConformerBlock, with
  batch_stats blocks_{i}/conv/norm/{mean, var} when conv_norm = "batch_norm".

  Attributes:
    num_blocks, d_model, num_heads, ffn_dim: block count, residual width, heads, FFN hidden width.
    conv_kernel: depthwise kernel size.
    conv_norm: "batch_norm" or "layer_norm" in the conv module.
    causal_conv: causal depthwise conv (with chunk masks: output in chunk c depends on chunks <= c only).
    subsampling, subsampling_factor, subsampling_channels: front end ("conv2d" x4/6/8, "conv1d" x2/4).
    dropout_rate, attention_dropout_rate: as in ConformerBlock; dropout_rate also after subsampling.
    dynamic_chunk_training, full_context_prob, max_chunk_size, dynamic_left_chunks: see attention.sample_chunk.
    remat: rematerialise each block in the backward pass (less memory, same parameters and names).
  """

  num_blocks: int
  d_model: int
  num_heads: int
  ffn_dim: int
  conv_kernel: int = 31
  conv_norm: str = "batch_norm"
  causal_conv: bool = False
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
      return_hidden: bool = False, frame_mask: jax.Array | None = None, mask_embedding: jax.Array | None = None,
  ) -> tuple[jax.Array, ...]:
    """Encodes padded features.

    Args:
      features: [batch, time, mel].
      lengths: [batch] valid frames per utterance.
      train: dropout, BatchNorm batch statistics (mutable "batch_stats") and dynamic chunks.
      chunk_size: attention chunk in output frames (int or traced scalar); None for full context (or a
        random chunk when training with dynamic_chunk_training).
      num_left_chunks: chunks of left context (-1: all).
      return_hidden: also return every block's output.
      frame_mask: [batch, time'] bool, output frames replaced by `mask_embedding` [d_model] right after the
        subsampling (masked prediction pre-training, speechfuse.models.ssl). The embedding is an argument, not
        a parameter here, so the encoder's parameter tree is the same with and without masking.

    Returns:
      (x [batch, time', d_model], lengths' [batch]) and, with return_hidden, a tuple of num_blocks arrays
      [batch, time', d_model] (block outputs; x is the last one with padding frames zeroed).
    """
    x, lengths = subsampling.make_subsampling(
        self.subsampling, self.subsampling_factor, self.d_model, self.subsampling_channels, self.dtype,
        self.param_dtype,
    )(features.astype(self.dtype or features.dtype), lengths)
    if frame_mask is not None:
      # Before the sqrt(d_model) scale, as any subsampled frame: the embedding stands in for a projection output.
      x = jnp.where(frame_mask[..., None], mask_embedding.astype(x.dtype), x)
    x = nn.Dropout(self.dropout_rate)(x * np.sqrt(self.d_model), deterministic=not train)
    x = nn.with_logical_constraint(x, ("batch", "time", "embed"))
    valid = attention.padding_mask(lengths, x.shape[1])
    mask = attention.encoder_attention_mask(self, valid, train, chunk_size, num_left_chunks)

    block = nn.remat(ConformerBlock, static_argnums=(4,)) if self.remat else ConformerBlock
    hidden = []
    for i in range(self.num_blocks):
      x = block(
          self.num_heads, self.ffn_dim, self.conv_kernel, self.conv_norm, self.causal_conv, self.dropout_rate,
          self.attention_dropout_rate, self.dtype, self.param_dtype, name=f"blocks_{i}",
      )(x, valid, mask, train)
      hidden.append(x)
    x = jnp.where(valid[..., None], x, 0.0)
    return (x, lengths, tuple(hidden)) if return_hidden else (x, lengths)
