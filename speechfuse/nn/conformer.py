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
from speechfuse.nn import streaming
from speechfuse.nn import subsampling

CONV_NORMS = ("batch_norm", "layer_norm")
CONV_CONTEXTS = ("symmetric", "causal", "chunk")
BATCH_NORM_MOMENTUM = 0.9  # PyTorch's momentum 0.1 in flax's convention (weight of the old running value)


def conv_past(kernel_size: int, context: str) -> int:
  """Taps of a depthwise kernel before the current frame (DepthwiseConv1d): all but one when causal, else half."""
  return kernel_size - 1 if context == "causal" else (kernel_size - 1) // 2


class DepthwiseConv1d(nn.Module):
  """Per-channel convolution over time: kernel [kernel_size, conv_channels], bias [conv_channels].

  Three ways to look at time (CONV_CONTEXTS):
    "symmetric"  'same' padding: (kernel_size - 1) // 2 taps in the past, the rest in the future;
    "causal"     every tap in the past: output t depends on frames <= t (streaming);
    "chunk"      symmetric, but under a chunk mask no tap reads past the end of its frame's chunk (dynamic chunk
                 convolution, Li et al., ICASSP 2023): full context offline, chunk-causal online, so a streaming
                 chunk waits for nothing after itself, and training with full context keeps the future taps.

  Attributes:
    kernel_size: taps.
    context: one of CONV_CONTEXTS.
  """

  kernel_size: int
  context: str = "symmetric"
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @property
  def past(self) -> int:
    """Taps before the current frame: what a streaming step keeps of the previous chunks."""
    return conv_past(self.kernel_size, self.context)

  @nn.compact
  def __call__(self, x: jax.Array, cache: jax.Array | None = None,
               chunk_size: attention.IntLike | None = None) -> jax.Array | tuple[jax.Array, jax.Array]:
    """x: [batch, time, channels] -> [batch, time, channels].

    chunk_size: the chunk mask's chunk (int or traced scalar; "chunk" context only; None: full context).
    With `cache` [batch, past, channels], the inputs just before x (a streaming chunk: x is the whole chunk),
    the convolution reads them instead of the zero padding (and, for "chunk", zeros after the chunk) and returns
    (y, the new cache: the last `past` inputs, x's included).
    """
    if self.context not in CONV_CONTEXTS:
      raise ValueError(f"unknown conv context {self.context!r}; choose from {CONV_CONTEXTS}")
    channels = x.shape[-1]
    kernel = self.param("kernel", layers.kernel_init((None, "conv_channels")), (self.kernel_size, channels),
                        self.param_dtype)
    bias = self.param("bias", layers.bias_init(("conv_channels",)), (channels,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    past, future = self.past, self.kernel_size - 1 - self.past
    conv = lambda h, taps, padding: jax.lax.conv_general_dilated(
        h, taps[:, None, :], window_strides=(1,), padding=[padding], dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=channels)
    if cache is not None:
      if self.context == "symmetric":
        raise ValueError("a streaming step needs a causal or chunk-restricted depthwise convolution: a symmetric "
                         f"kernel of {self.kernel_size} looks {future} frames past its chunk")
      window = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
      y = conv(window, kernel, (0, future)) + bias  # zeros past the chunk's end
      return y, window[:, window.shape[1] - past:]
    if self.context != "chunk" or chunk_size is None:
      return conv(x, kernel, (past, future)) + bias
    # The past taps as one convolution, then each future tap d where frame t + d lies in t's chunk.
    y = conv(x, kernel[:past + 1], (past, 0)) + bias
    time = jnp.arange(x.shape[1])
    chunk_end = (time // chunk_size + 1) * chunk_size  # one past the last frame of t's chunk
    for d in range(1, future + 1):
      ahead = jnp.pad(x[:, d:], ((0, 0), (0, d), (0, 0)))
      y = y + jnp.where((time + d < chunk_end)[None, :, None], ahead * kernel[past + d], 0.0)
    return y


class ConvModule(nn.Module):
  """Conformer convolution module; the channel count C equals embed.

  Parameters: pointwise_in/kernel [embed, 2, C] and bias [2, C], whose index 0 / 1 on the middle axis are the
  GLU's value / gate halves (PyTorch's first / second C output channels); depthwise/kernel [K, C], bias [C];
  norm/scale, norm/bias [C] (+ batch_stats norm/mean, norm/var [C] for BatchNorm); pointwise_out/kernel
  [C, embed], bias [embed].

  Attributes:
    kernel_size: depthwise taps (31 in the OTF paper and WeNet).
    norm: "batch_norm" (Gulati, WeNet) or "layer_norm".
    context: the depthwise conv's view of time (DepthwiseConv1d, CONV_CONTEXTS).
  """

  kernel_size: int = 31
  norm: str = "batch_norm"
  context: str = "symmetric"
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array, *, train: bool = False, cache: jax.Array | None = None,
               chunk_size: attention.IntLike | None = None) -> jax.Array | tuple[jax.Array, jax.Array]:
    """x: [batch, time, embed], valid: [batch, time] bool -> [batch, time, embed].

    With BatchNorm and train=True, batch statistics over valid frames are used and the running ones updated
    (apply with mutable=["batch_stats"]). chunk_size: the chunk mask's (DepthwiseConv1d). With `cache` (a streaming
    chunk, DepthwiseConv1d's), returns (output, new cache).
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
    h = DepthwiseConv1d(self.kernel_size, self.context, self.dtype, self.param_dtype, name="depthwise")(
        h, cache, chunk_size)
    if cache is not None:
      h, cache = h
    if self.norm == "batch_norm":
      h = nn.BatchNorm(
          use_running_average=not train, momentum=BATCH_NORM_MOMENTUM, epsilon=1e-5, dtype=self.dtype,
          param_dtype=self.param_dtype, scale_init=layers.logical(nn.initializers.ones_init(), ("conv_channels",)),
          bias_init=layers.bias_init(("conv_channels",)), name="norm",
      )(h, mask=jnp.broadcast_to(valid[..., None], h.shape))
    else:
      h = layers.layer_norm("norm", self.dtype, self.param_dtype, axis_name="conv_channels")(h)
    h = nn.swish(h)
    out = nn.Dense(
        embed, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=layers.kernel_init(("conv_channels", "embed")), bias_init=layers.bias_init(("embed",)),
        name="pointwise_out",
    )(h)
    return out if cache is None else (out, cache)


class ConformerBlock(nn.Module):
  """One Conformer block; submodules norm_ffn1, ffn1, norm_mhsa, mhsa, norm_conv, conv, norm_ffn2, ffn2, norm_out.

  Attributes:
    num_heads, ffn_dim, conv_kernel, conv_norm, conv_context: see ConformerEncoder.
    dropout_rate: dropout on each branch output and on the FFN hidden activations.
    attention_dropout_rate: dropout on attention probabilities.
  """

  num_heads: int
  ffn_dim: int
  conv_kernel: int = 31
  conv_norm: str = "batch_norm"
  conv_context: str = "symmetric"
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array, mask: jax.Array, train: bool = False,
               cache: streaming.BlockCache | None = None,
               chunk_size: attention.IntLike | None = None) -> jax.Array | tuple[jax.Array, streaming.BlockCache]:
    """x: [batch, time, embed], valid: [batch, time] bool, mask: [batch, time, time] bool -> [batch, time, embed].

    chunk_size: the chunk of `mask` (None: full context), for a chunk-restricted convolution. With `cache` (a
    streaming chunk): mask is [batch, time, cached + time] and the result is (x, new cache).
    """
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: layers.layer_norm(name, self.dtype, self.param_dtype)
    drop = lambda h: nn.Dropout(self.dropout_rate)(h, deterministic=not train)
    ffn = lambda name: layers.FeedForward(self.ffn_dim, "swish", self.dropout_rate, name=name, **kw)

    x = x + 0.5 * drop(ffn("ffn1")(norm("norm_ffn1")(x), train=train))
    attend = attention.MultiHeadSelfAttention(
        self.num_heads, relative=True, dropout_rate=self.attention_dropout_rate, name="mhsa", **kw)
    attended = attend(norm("norm_mhsa")(x), mask, train=train, cache=None if cache is None else cache[:2])
    if cache is not None:
      attended, (keys, values) = attended
    x = x + drop(attended)
    conv = ConvModule(self.conv_kernel, self.conv_norm, self.conv_context, name="conv", **kw)
    convolved = conv(norm("norm_conv")(x), valid, train=train, cache=None if cache is None else cache[2],
                     chunk_size=chunk_size)
    if cache is not None:
      convolved, conv_cache = convolved
    x = x + drop(convolved)
    x = x + 0.5 * drop(ffn("ffn2")(norm("norm_ffn2")(x), train=train))
    x = norm("norm_out")(x)
    x = nn.with_logical_constraint(x, ("batch", "time", "embed"))
    return x if cache is None else (x, streaming.BlockCache(keys, values, conv_cache))


class ConformerEncoder(nn.Module):
  """Subsampling -> x * sqrt(d_model) -> dropout -> Conformer blocks; relative positions inside attention.

  Parameter tree: subsampling/{conv_0, conv_1, ..., proj}; blocks_{i}/... as in ConformerBlock, with
  batch_stats blocks_{i}/conv/norm/{mean, var} when conv_norm = "batch_norm".

  Attributes:
    num_blocks, d_model, num_heads, ffn_dim: block count, residual width, heads, FFN hidden width.
    conv_kernel: depthwise kernel size.
    conv_norm: "batch_norm" or "layer_norm" in the conv module.
    conv_context: the depthwise conv's view of time (DepthwiseConv1d): "symmetric" (looks ahead, offline only),
      "causal" or "chunk" (with chunk masks, output in chunk c then depends on chunks <= c only: they stream).
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
  conv_context: str = "symmetric"
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
      state: streaming.EncoderState | None = None,
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
      state: a streaming step (use `step`): features is one chunk's window and the result gains the new state.

    Returns:
      (x [batch, time', d_model], lengths' [batch]) and, with return_hidden, a tuple of num_blocks arrays
      [batch, time', d_model] (block outputs; x is the last one with padding frames zeroed); with state,
      (x, lengths', new state).
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
    mask, chunk_size = streaming.blocks_mask(self, valid, train, chunk_size, num_left_chunks, state)

    block = nn.remat(ConformerBlock, static_argnums=(4,)) if self.remat and state is None else ConformerBlock
    hidden, caches = [], []
    for i in range(self.num_blocks):
      layer = block(
          self.num_heads, self.ffn_dim, self.conv_kernel, self.conv_norm, self.conv_context, self.dropout_rate,
          self.attention_dropout_rate, self.dtype, self.param_dtype, name=f"blocks_{i}",
      )
      if state is None:
        x = layer(x, valid, mask, train, None, chunk_size)
      else:
        x, cache = layer(x, valid, mask, train, streaming.BlockCache(state.keys[i], state.values[i], state.conv[i]))
        caches.append(cache)
      hidden.append(x)
    x = jnp.where(valid[..., None], x, 0.0)
    if state is not None:
      return x, lengths, state.replace(offset=state.offset + x.shape[1], keys=tuple(c.keys for c in caches),
                                       values=tuple(c.values for c in caches), conv=tuple(c.conv for c in caches))
    return (x, lengths, tuple(hidden)) if return_hidden else (x, lengths)

  def chunk_window(self, chunk_size: int) -> streaming.ChunkWindow:
    """The feature frames `step` reads for chunks of `chunk_size` encoder frames (streaming.chunk_window)."""
    return streaming.chunk_window(self.subsampling, self.subsampling_factor, chunk_size)

  def init_state(self, batch_size: int, chunk_size: int, num_left_chunks: int,
                 max_frames: int) -> streaming.EncoderState:
    """The state before a stream's first chunk (no parameters needed): zero caches for `num_left_chunks` chunks of
    left context (-1: up to `max_frames` encoder frames).

    Raises:
      ValueError: a symmetric convolution, which looks past the chunk: no chunk's output is final before the next
        one arrives.
    """
    if self.conv_context == "symmetric":
      raise ValueError(f"streaming needs conv_context 'causal' or 'chunk': the symmetric conv kernel of "
                       f"{self.conv_kernel} looks {(self.conv_kernel - 1) // 2} frames ahead in every block")
    cached = streaming.cache_frames(chunk_size, num_left_chunks, max_frames)
    head_dim = self.d_model // self.num_heads
    dtype = self.dtype or jnp.float32
    kv = jnp.zeros((batch_size, cached, self.num_heads, head_dim), dtype)
    conv = jnp.zeros((batch_size, conv_past(self.conv_kernel, self.conv_context), self.d_model), dtype)
    return streaming.EncoderState(jnp.zeros((), jnp.int32), (kv,) * self.num_blocks, (kv,) * self.num_blocks,
                                  (conv,) * self.num_blocks, max_frames)

  def step(self, features: jax.Array, lengths: jax.Array,
           state: streaming.EncoderState) -> tuple[jax.Array, jax.Array, streaming.EncoderState]:
    """One chunk: its window features [batch, chunk_window(C).frames, mel] with `lengths` [batch] valid frames
    -> (x [batch, C, d_model] with invalid frames zeroed, valid frames [batch], the state after the chunk);
    evaluation mode (no dropout, BatchNorm running statistics)."""
    return self(features, lengths, state=state)
