"""wav2vec 2.0 / HuBERT / WavLM waveform encoder: convolutional features, projection, positions, Transformer.

Data flow (fairseq HuBERT, HF Wav2Vec2Model / HubertModel / WavLMModel), waveform [batch, samples] at 16 kHz,
floats in [-1, 1]:
  feature_extractor  7 convs (channels, kernel, stride) = [(C, 10, 5)] + [(C, 3, 2)] x 4 + [(C, 2, 2)] x 2, no
                     bias, each followed by exact GELU; mode "group_norm" (base models) puts a GroupNorm with one
                     group per channel (per-channel statistics over time, float32) after the first conv only,
                     "layer_norm" (large models, data2vec) a LayerNorm over channels after every conv.
                     -> features [batch, T, C], T = floor((samples - 400) / 320) + 1: 20 ms hop, 25 ms window.
  feature_grad_mult  scales the gradient flowing into the extractor (fairseq HuBERT base: 0.1).
  feature_projection LayerNorm (HF HuBERT's feat_proj_layer_norm may leave it out) -> Dense to d_model -> dropout
                     (input_dropout_rate, fairseq's dropout_input).
  mask_embedding     masked frames replaced by a learned vector (speechfuse.nn.masking).
  pos_conv_embed     padding frames zeroed, then x += GELU(conv(x)): a grouped Conv1d (kernel 128, 16 groups,
                     padding 64, the extra last frame dropped) with weight norm over the kernel's time axis.
  relative bias      WavLM only (relative_position_buckets > 0): nn.relative_bias, one bucketed bias [heads, T, T]
                     shared by all blocks, gated per block from its attention input.
  post-LN (base; HF do_stable_layer_norm=False, fairseq layer_norm_first=False):
                     encoder_norm -> dropout -> post-LN TransformerBlocks.
  pre-LN (large; do_stable_layer_norm=True, layer_norm_first=True):
                     dropout -> pre-LN TransformerBlocks -> encoder_norm.
Padding: a valid frame only sees valid samples (unpadded convs), the GroupNorm statistics are taken over valid
frames and attention ignores padded keys, so a padded utterance encodes as it would alone. fairseq and HF
take the GroupNorm statistics over every frame, padding included (group_norm_over_padding=True reproduces that);
they pre-train on unpadded (cropped) batches, where both agree.

Parameters (C = extractor channels, d = d_model, K = pos_conv_kernel, G = pos_conv_groups, h = heads) and the
HF names a converter maps from (PyTorch Conv1d weights are [out, in, k], Linear weights [out, in]):
  feature_extractor/conv_layers_{i}/conv/kernel [k, in, C]  <- feature_extractor.conv_layers.{i}.conv.weight
                                                               transposed (2, 1, 0); .../conv/bias if conv_bias
  feature_extractor/conv_layers_{i}/layer_norm/{scale, bias} [C]  <- ...conv_layers.{i}.layer_norm.{weight, bias}
                                                               (the GroupNorm of layer 0, or every LayerNorm)
  feature_projection/layer_norm/{scale, bias} [C]           <- feature_projection.layer_norm.{weight, bias}
  feature_projection/projection/{kernel [C, d], bias [d]}   <- feature_projection.projection (weight.T)
  mask_embedding/embedding [d]                              <- masked_spec_embed
  pos_conv_embed/kernel_v [K, d / G, d]                     <- encoder.pos_conv_embed.conv.weight_v (2, 1, 0)
  pos_conv_embed/kernel_g [K]                               <- ...conv.weight_g [1, 1, K] (newer HF:
                                                               parametrizations.weight.original0; original1 = v)
  pos_conv_embed/bias [d]                                   <- ...conv.bias
  encoder_norm/{scale, bias} [d]                            <- encoder.layer_norm
  blocks_{i}/mhsa/{query, key, value}/kernel [d, h, d / h]  <- encoder.layers.{i}.attention.{q,k,v}_proj.weight.T
                                                               reshaped; bias [d] -> [h, d / h]
  blocks_{i}/mhsa/out/kernel [h, d / h, d]                  <- ...attention.out_proj.weight.T reshaped; bias [d]
  blocks_{i}/norm_mhsa, blocks_{i}/norm_ffn                 <- encoder.layers.{i}.layer_norm, .final_layer_norm
  blocks_{i}/ffn/dense_in, blocks_{i}/ffn/dense_out         <- ...feed_forward.intermediate_dense, .output_dense
  relative_position_bias, blocks_{i}/position_bias_gate     <- WavLM's (names in nn.relative_bias)
fairseq names the same tensors feature_extractor.conv_layers.{i}.0 (conv), .2 (GroupNorm) or .2.1 (LayerNorm),
layer_norm, post_extract_proj, mask_emb, encoder.pos_conv.0.{weight_g, weight_v, bias}, encoder.layer_norm,
encoder.layers.{i}.{self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1, fc2, final_layer_norm}.

Sizes (`wav2vec2_size`; parameter counts from jax.eval_shape, mask embedding included):
  size  blocks  d_model  heads  ffn   extractor channels  parameters
  tiny  6       144      4      576   128                 1,953,328   CPU recipes and tests
  base  12      768      12     3072  512                 94,371,712  HuBERT / wav2vec 2.0 base (fairseq's 94.7M
                                                                      adds final_proj and the label embeddings)

The blocks' FFN activation is the exact (erf) GELU of fairseq and HF by default ("gelu_exact"); the extractor and
positional convs always use it. speechfuse.convert maps HF / fairseq checkpoints onto this tree and back.

Not modelled: LayerDrop (fairseq HuBERT base drops blocks with p = 0.05). TransformerBlock ties the FFN's hidden
dropout to dropout_rate (fairseq: activation_dropout 0).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from speechfuse.audio import frames
from speechfuse.nn import attention
from speechfuse.nn import layers
from speechfuse.nn import masking
from speechfuse.nn import relative_bias
from speechfuse.nn import subsampling
from speechfuse.nn import transformer

# (kernel, stride) of the extractor's convs: 400-sample window, 320-sample hop (50 Hz at 16 kHz).
EXTRACTOR_KERNELS = ((10, 5),) + ((3, 2),) * 4 + ((2, 2),) * 2
EXTRACTOR_MODES = ("group_norm", "layer_norm")

_SIZES = {
    "tiny": dict(num_blocks=6, d_model=144, num_heads=4, ffn_dim=576, extractor_channels=128),
    "base": dict(num_blocks=12, d_model=768, num_heads=12, ffn_dim=3072, extractor_channels=512),
}
SIZES = tuple(_SIZES)


def wav2vec2_size(size: str) -> dict[str, int]:
  """Keyword arguments of Wav2Vec2Encoder for `size` (a row of the module docstring's table)."""
  if size not in _SIZES:
    raise ValueError(f"unknown wav2vec2 size {size!r}; choose from {SIZES}")
  return dict(_SIZES[size])


def frame_lengths(samples: jax.Array | int) -> jax.Array | int:
  """Frames out of the feature extractor for `samples` waveform samples: floor((samples - 400) / 320) + 1, >= 0."""
  for kernel, stride in EXTRACTOR_KERNELS:
    samples = subsampling.conv_output_length(samples, kernel, stride)
  return samples


def wav2vec2_grid(sample_rate: int = 16000) -> frames.FrameGrid:
  """Where the feature extractor's frames sit on the waveform: 400-sample windows every 320 samples (50 Hz)."""
  return frames.compose(frames.sample_grid(sample_rate), EXTRACTOR_KERNELS, "wav2vec2_cnn")


def _gelu(x: jax.Array) -> jax.Array:
  return jax.nn.gelu(x, approximate=False)  # PyTorch's nn.GELU(), as in fairseq and HF


class ChannelGroupNorm(nn.Module):
  """GroupNorm with one group per channel, statistics over valid frames only, in float32 (fairseq's Fp32GroupNorm).

  Parameters: scale, bias [channels]. PyTorch's GroupNorm(C, C) on [batch, C, time] normalises each channel of
  each utterance over time with the biased variance and eps 1e-5; here padding frames are left out of the mean
  and variance, so a padded utterance normalises as it would alone.
  """

  param_dtype: layers.Dtype = jnp.float32
  over_padding: bool = False  # statistics over every frame, padding included (PyTorch's GroupNorm)

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
    """x: [batch, time, channels], valid: [batch, time] bool -> [batch, time, channels] in x's dtype."""
    channels = x.shape[-1]
    if self.over_padding:
      valid = jnp.ones_like(valid)
    scale = self.param("scale", layers.logical(nn.initializers.ones_init(), ("conv_channels",)), (channels,),
                       self.param_dtype)
    bias = self.param("bias", layers.bias_init(("conv_channels",)), (channels,), self.param_dtype)
    valid = valid[..., None]
    h = x.astype(jnp.float32)
    count = jnp.maximum(valid.sum(axis=1, keepdims=True), 1)
    mean = jnp.sum(jnp.where(valid, h, 0.0), axis=1, keepdims=True) / count
    var = jnp.sum(jnp.where(valid, jnp.square(h - mean), 0.0), axis=1, keepdims=True) / count
    h = (h - mean) * jax.lax.rsqrt(var + layers.LAYER_NORM_EPSILON)
    return (h * scale + bias).astype(x.dtype)


class ExtractorConvLayer(nn.Module):
  """Conv1d (VALID, kernel_init as PyTorch's kaiming_normal_) -> optional norm -> GELU.

  Attributes:
    channels, kernel, stride: the convolution.
    norm: "group_norm" (ChannelGroupNorm), "layer_norm" (over channels) or None; either is named layer_norm.
    conv_bias: give the conv a bias (wav2vec 2.0 large lv60 does; base models do not).
    group_norm_over_padding: ChannelGroupNorm.over_padding.
  """

  channels: int
  kernel: int
  stride: int
  norm: str | None = None
  conv_bias: bool = False
  group_norm_over_padding: bool = False
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x: [batch, time, in], lengths: [batch] -> (x [batch, time', channels], lengths' [batch])."""
    x = nn.Conv(
        self.channels, (self.kernel,), strides=(self.stride,), padding="VALID", use_bias=self.conv_bias,
        dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=layers.logical(nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
                                   (None, None, "conv_channels")),
        bias_init=layers.bias_init(("conv_channels",)), name="conv",
    )(x)
    lengths = subsampling.conv_output_length(lengths, self.kernel, self.stride)
    if self.norm == "group_norm":
      x = ChannelGroupNorm(self.param_dtype, self.group_norm_over_padding, name="layer_norm")(
          x, attention.padding_mask(lengths, x.shape[1]))
    elif self.norm == "layer_norm":
      x = layers.layer_norm("layer_norm", self.dtype, self.param_dtype, "conv_channels")(x)
    return _gelu(x), lengths


class ConvFeatureExtractor(nn.Module):
  """The 7-conv waveform front end: submodules conv_layers_{i} (ExtractorConvLayer).

  Attributes:
    channels: output channels of every conv (512 in all published models).
    mode: "group_norm" or "layer_norm" (EXTRACTOR_MODES).
    conv_bias: biases on the convs.
    group_norm_over_padding: ChannelGroupNorm.over_padding.
  """

  channels: int = 512
  mode: str = "group_norm"
  conv_bias: bool = False
  group_norm_over_padding: bool = False
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, waveform: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """waveform: [batch, samples], lengths: [batch] -> (features [batch, frames, channels], frames [batch])."""
    if self.mode not in EXTRACTOR_MODES:
      raise ValueError(f"unknown feature extractor mode {self.mode!r}; choose from {EXTRACTOR_MODES}")
    x = waveform[..., None]
    for i, (kernel, stride) in enumerate(EXTRACTOR_KERNELS):
      norm = "layer_norm" if self.mode == "layer_norm" else ("group_norm" if i == 0 else None)
      x, lengths = ExtractorConvLayer(
          self.channels, kernel, stride, norm, self.conv_bias, self.group_norm_over_padding, self.dtype,
          self.param_dtype, name=f"conv_layers_{i}",
      )(x, lengths)
      x = nn.with_logical_constraint(x, ("batch", "time", "conv_channels"))
    return x, lengths


class FeatureProjection(nn.Module):
  """LayerNorm over the extractor channels (if `norm`) -> Dense to d_model -> dropout: submodules layer_norm,
  projection."""

  d_model: int
  dropout_rate: float = 0.0
  norm: bool = True
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """features: [batch, time, channels] -> ([batch, time, d_model], the normalised features [batch, time, channels]
    that wav2vec 2.0's quantizer reads)."""
    normed = layers.layer_norm("layer_norm", self.dtype, self.param_dtype, "conv_channels")(features) if self.norm \
        else features
    x = nn.Dense(
        self.d_model, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=layers.kernel_init(("conv_channels", "embed")), bias_init=layers.bias_init(("embed",)),
        name="projection",
    )(normed)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train), normed


class PositionalConvEmbedding(nn.Module):
  """GELU(grouped Conv1d over time) with weight norm; returns the embedding (the caller adds it).

  Parameters: kernel_v [K, d / G, d], kernel_g [K], bias [d]; the kernel is kernel_v * kernel_g[k] /
  ||kernel_v[k]|| per tap k (PyTorch's weight_norm with dim=2 on a [d, d / G, K] weight). Initialisation as
  fairseq's make_conv_pos: kernel_v normal with std 2 / sqrt(K * d), kernel_g = ||kernel_v[k]||, bias 0.

  Attributes:
    kernel_size: K (128); padding K // 2 on both sides, and for even K the extra last frame is dropped.
    groups: G (16); d_model must be divisible by it.
  """

  kernel_size: int = 128
  groups: int = 16
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [batch, time, d] (padding frames zero) -> [batch, time, d]."""
    dim = x.shape[-1]
    if dim % self.groups:
      raise ValueError(f"d_model {dim} is not divisible by pos_conv_groups={self.groups}")
    shape = (self.kernel_size, dim // self.groups, dim)
    init_v = nn.initializers.normal(2.0 / np.sqrt(self.kernel_size * dim))
    kernel_v = self.param("kernel_v", layers.logical(init_v, (None, None, "embed")), shape, self.param_dtype)

    def tap_norms(v):
      return jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2)))

    kernel_g = self.param(
        "kernel_g", layers.logical(lambda *_: tap_norms(kernel_v), (None,)), (self.kernel_size,), self.param_dtype)
    bias = self.param("bias", layers.bias_init(("embed",)), (dim,), self.param_dtype)
    kernel = kernel_v * (kernel_g / tap_norms(kernel_v))[:, None, None]
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    pad = self.kernel_size // 2
    y = jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1,), padding=[(pad, pad)], dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=self.groups,
    ) + bias
    return _gelu(y[:, :x.shape[1]])


class Wav2Vec2Output(NamedTuple):
  """What Wav2Vec2Encoder returns.

  x: [batch, frames, d_model] the last output (after encoder_norm for pre-LN), padding frames zero.
  lengths: [batch] valid frames.
  hidden: num_blocks + 1 arrays [batch, frames, d_model] as HF's hidden_states (transformers 5): the blocks' input
    (after the positions, and encoder_norm for post-LN), then each block's output (post-LN: the last one is x;
    pre-LN: x is encoder_norm of the last one); padding zero.
  features: [batch, frames, channels] the extractor's output (for the feature penalty), padding zero.
  normed_features: [batch, frames, channels] the feature projection's LayerNorm of them, unmasked (wav2vec 2.0's
    quantizer input).
  """

  x: jax.Array
  lengths: jax.Array
  hidden: tuple[jax.Array, ...]
  features: jax.Array
  normed_features: jax.Array


class Wav2Vec2Encoder(nn.Module):
  """The HuBERT / wav2vec 2.0 encoder on raw waveforms (see the module docstring for the data flow and names).

  Attributes:
    num_blocks, d_model, num_heads, ffn_dim: Transformer sizes (wav2vec2_size).
    extractor_channels, extractor_mode, conv_bias, group_norm_over_padding: the ConvFeatureExtractor.
    feature_projection_norm: the LayerNorm of the feature projection (HF HuBERT's feat_proj_layer_norm).
    pre_norm: pre-LN blocks with encoder_norm at the end (HF do_stable_layer_norm) or post-LN (base models).
    relative_position_buckets, max_relative_distance: WavLM's gated relative position bias (0 buckets: none;
      WavLM: 320 and 800).
    pos_conv_kernel, pos_conv_groups: PositionalConvEmbedding.
    ffn_activation: the blocks' FFN activation, a name in layers.ACTIVATIONS.
    dropout_rate: after the positions and in the blocks (fairseq's dropout, 0.1).
    attention_dropout_rate: on attention probabilities (0.1).
    input_dropout_rate: after the feature projection (fairseq's dropout_input, 0.1; HF's feat_proj_dropout).
    feature_grad_mult: gradient scale into the extractor (fairseq HuBERT base 0.1; 0 freezes it in effect).
    remat: rematerialise each block in the backward pass.
  """

  num_blocks: int
  d_model: int
  num_heads: int
  ffn_dim: int
  extractor_channels: int = 512
  extractor_mode: str = "group_norm"
  conv_bias: bool = False
  group_norm_over_padding: bool = False
  feature_projection_norm: bool = True
  pre_norm: bool = False
  relative_position_buckets: int = 0
  max_relative_distance: int = 800
  pos_conv_kernel: int = 128
  pos_conv_groups: int = 16
  ffn_activation: str = "gelu_exact"
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  input_dropout_rate: float = 0.1
  feature_grad_mult: float = 1.0
  remat: bool = False
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(
      self, waveform: jax.Array, lengths: jax.Array, *, mask: jax.Array | None = None, train: bool = False,
      chunk_size: int | None = None, num_left_chunks: int = -1,
  ) -> Wav2Vec2Output:
    """waveform: [batch, samples] floats in [-1, 1], lengths: [batch] valid samples.

    mask: [batch, frames] bool, frames (frame_lengths(samples)) replaced by the mask embedding before the
    positional conv (speechfuse.nn.masking.compute_mask on frame_lengths(lengths)); None masks nothing.
    chunk_size must be None: the positional convolution (128 frames, centred) and the first layer's GroupNorm over
    the utterance see the whole utterance, so this encoder has no chunked mode.
    """
    del num_left_chunks
    if chunk_size is not None:
      raise ValueError("the wav2vec2 encoder has no chunked (streaming) mode: its positional convolution and "
                       "GroupNorm span the utterance")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    features, lengths = ConvFeatureExtractor(
        self.extractor_channels, self.extractor_mode, self.conv_bias, self.group_norm_over_padding,
        name="feature_extractor", **kw,
    )(waveform.astype(self.dtype or jnp.float32), lengths)
    if self.feature_grad_mult != 1.0:
      # Forward value unchanged (x - x is exactly 0), gradient times the multiplier: fairseq's GradMultiply.
      frozen = jax.lax.stop_gradient(features)
      features = frozen + self.feature_grad_mult * (features - frozen)
    valid = attention.padding_mask(lengths, features.shape[1])
    features = jnp.where(valid[..., None], features, 0.0)

    x, normed_features = FeatureProjection(self.d_model, self.input_dropout_rate, self.feature_projection_norm,
                                           name="feature_projection", **kw)(features, train=train)
    x = masking.MaskEmbedding(self.param_dtype, name="mask_embedding")(x, mask)
    x = jnp.where(valid[..., None], x, 0.0)  # the positional conv must not see padding
    x = x + PositionalConvEmbedding(self.pos_conv_kernel, self.pos_conv_groups, name="pos_conv_embed", **kw)(x)
    encoder_norm = layers.layer_norm("encoder_norm", self.dtype, self.param_dtype)
    if not self.pre_norm:
      x = encoder_norm(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = nn.with_logical_constraint(x, ("batch", "time", "embed"))

    mask_2d = attention.attention_mask(valid)
    position_bias = None
    if self.relative_position_buckets:
      position_bias = relative_bias.RelativePositionBias(
          self.num_heads, self.relative_position_buckets, self.max_relative_distance, self.param_dtype,
          name="relative_position_bias")(x.shape[1])
    block = nn.remat(transformer.TransformerBlock, static_argnums=(3,)) if self.remat else transformer.TransformerBlock
    hidden = [x]
    for i in range(self.num_blocks):
      x = block(
          self.num_heads, self.ffn_dim, self.pre_norm, False, self.ffn_activation, self.dropout_rate,
          self.attention_dropout_rate, name=f"blocks_{i}", **kw,
      )(x, mask_2d, train, None, position_bias)
      hidden.append(x)
    if self.pre_norm:
      x = encoder_norm(x)
    keep = lambda h: jnp.where(valid[..., None], h, 0.0)
    return Wav2Vec2Output(keep(x), lengths, tuple(keep(h) for h in hidden), features, keep(normed_features))
