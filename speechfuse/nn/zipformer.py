"""Zipformer encoder (Yao et al., "Zipformer: A faster and better encoder for automatic speech recognition", ICLR 2024).

After icefall, egs/librispeech/ASR/zipformer/{zipformer.py (Zipformer2), subsampling.py (Conv2dSubsampling),
scaling.py (speechfuse.nn.zipformer_scaling)}; our own JAX code, icefall's math. Data flow, fbank [batch, T, mel] at
100 Hz:
  encoder_embed   conv_0 (3x3, freq padded) -> SwooshR -> conv_1 (3x3 stride 2) -> SwooshR -> conv_2 (3x3, stride 2
                  in frequency) -> SwooshR -> ConvNeXt (7x7 depthwise, 1x1 to 3C, SwooshL, 1x1 back, residual) ->
                  Dense -> BiasNorm: T_embed = (T - 7) // 2 frames at 50 Hz (each reads fbank frames [2t, 2t + 9), the
                  ConvNeXt 3 embed frames either side).
  stacks_{i}      at downsampling factors (1, 2, 4, 8, 4, 2) of the 50 Hz frames: the residual stream is cut or
                  zero-padded to dims[i] (icefall's convert_num_channels); SimpleDownsample (a softmax-weighted average
                  of `factor` consecutive frames, the end padded by repeating the last frame) -> ZipformerLayers ->
                  SimpleUpsample (repeat) -> out_combiner, a Bypass with the stack's input. Stack i runs on
                  ceil(T_embed / factor_i) frames.
  output          icefall's get_full_dim_output (the most recent output of each width, concatenated up to
                  max(dims)) -> output_downsample (SimpleDownsample x2): ceil(T_embed / 2) frames at 25 Hz.
ZipformerLayer (x: [batch, time, dim]), icefall's order, one set of attention weights for the whole layer:
  w = AttentionWeights(x); x += FF1(x) (3/4 feedforward_dim); x += NonlinAttention(x, w head 0);
  x += SelfAttention1(x, w); x += Conv1(x); x += FF2(x); x = bypass_mid(x_in, x); x += SelfAttention2(x, w);
  x += Conv2(x); x += FF3(x) (5/4 feedforward_dim); x = BiasNorm(x); x = bypass(x_in, x).
  Bypass: out = orig + (y - orig) * scale, scale [dim] learned (0.5 at init); with a step, icefall's limit_param_value
  holds it in [0.9 -> 0.2 over 20k steps, 1.0]; in training, layer skipping sets it to 0 per utterance.
  AttentionWeights: softmax(q k^T + rel_shift(p P^T)) with no 1/sqrt(d) (query and key initialised at
  query_head_dim^-1/4, as icefall, for ScaledAdam), P the CompactRelPositionalEncoding of key - query offsets
  projected to pos_head_dim per head; masked scores -1000.
  FeedForward: Dense -> SwooshL -> dropout (shared over time) -> Dense. NonlinAttention: Dense to (s, x, y) of
  3/4 dim; (w_0 (x * tanh(s))) * y -> Dense. SelfAttention: w (Dense x to value_head_dim per head) -> Dense.
  Conv module: Dense to (value, gate) -> value * sigmoid(gate) -> padding zeroed -> depthwise conv -> SwooshR ->
  Dense. With causal=True the depthwise conv is icefall's ChunkCausalDepthwiseConv1d: a causal conv of (K + 1) / 2
  taps plus a K-tap conv inside each chunk, scaled near the chunk's edges by learned factors.
Balancer and Whiten (nn.zipformer_scaling) sit where icefall puts them; they shape gradients only, and only when the
training step reaches the call (`step`): outputs do not depend on them.

Training (train=True, RNG stream "dropout"): icefall's schedules in the step (ScheduledFloat; without a step, their
defaults: no dropout, no skipping): dropout 0.3 -> 0.1 over 20k steps (embed output, FF hidden), positional-encoding
dropout 0.15, per-utterance skipping of attention / conv / FF2 / FF3 branches and of whole layers, constant attention
weights, positional scores skipped (0.5 -> 0 over 4k), per-utterance feature masks above encoder_unmasked_dim. With
causal=True and no chunk_size, one (chunk, left context) is drawn per batch from chunk_sizes / left_context_frames.

Chunks: chunk_size counts 25 Hz output frames, as for every encoder here (icefall's --chunk-size counts the 50 Hz embed
frames: chunk_sizes and left_context_frames, the training draws, keep its units), so 2 chunk_size embed frames, a
multiple of max(downsampling_factors) as icefall asserts; num_left_chunks chunks of left context (-1: all). Stack i
sees the chunk mask of its frames' first embed positions (icefall's attn_mask[::ds, ::ds]); with causal=True no output
of chunk c reads an embed frame past chunk c, hence no fbank frame past 2 e + 14 for e the chunk's last embed frame
(the front end's look-ahead, 6 frames of it through the ConvNeXt).

Streaming (init_state / step, speechfuse.nn.streaming's API; causal=True): each step reads the fbank window of one
chunk and recomputes encoder_embed on it, CONVNEXT_CONTEXT embed frames before the chunk (the ConvNeXt's left context,
zeroed before the utterance as the offline padding) and after it (the look-ahead); every layer caches the keys, the
NonlinAttention and SelfAttention values of the left context its chunk mask allows and the last inputs of its two
causal convolutions. The outputs equal the chunk-masked forward's. icefall caches the ConvNeXt's left frames instead
of recomputing them; recomputing keeps the state free of the feature dimension, which init_state does not know.

Deviations from icefall (each so that a padded utterance encodes as it would alone): padding frames are zeroed before
the ConvNeXt; SimpleDownsample repeats each utterance's last valid frame rather than the batch's last frame; with
causal=True and full context, the chunkwise conv's edge factors apply at the utterance's end, not the padded batch's.
Also: biases start at zero (icefall: small uniform), weights as PyTorch's default uniform times icefall's
initial_scale; icefall's unused per-layer `bypass_scale` tensor is left out; Whiten's adaptive probability is fixed at
its maximum 0.25 (nn.zipformer_scaling).

Classes: ZipformerStacks holds the stacks' attributes and runs them on 50 Hz frames (`encode_stacks`);
ZipformerEncoder adds encoder_embed on fbank, nn.zipformer_waveform's encoder wav2vec 2.0's extractor (k2SSL).

Parameter tree (d = dims[i], h = heads, q / p / v = query / pos / value head dims, K = conv kernel, f = feedforward):
  encoder_embed/conv_{0,1,2}/{kernel [3, 3, in, C_j], bias}, convnext/depthwise/{kernel [7, 7, 1, C], bias},
    convnext/pointwise_{in,out}/{kernel, bias}, out/{kernel [C * F', d_0], bias}, norm/{bias [d_0], log_scale []}
  stacks_{i}/downsample/logits [factor], stacks_{i}/out_combiner/scale [d] (factor > 1; icefall: downsample.bias,
    out_combiner.bypass_scale)
  stacks_{i}/layers_{j}/attention_weights/{query, key}/{kernel [d, h, q], bias [h, q]}, .../pos_query/{kernel
    [d, h, p], bias}, .../pos/kernel [pos_dim, h, p]
  .../ffn{1,2,3}/dense_in/{kernel [d, f'], bias}, dense_out/{kernel [f', d], bias}
  .../nonlin_attention/dense_in/{kernel [d, 3, 3d/4], bias} (axis 1: s, x, y), dense_out/{kernel [3d/4, d], bias}
  .../self_attention{1,2}/value/{kernel [d, h, v], bias}, out/{kernel [h, v, d], bias [d]}
  .../conv{1,2}/pointwise_in/{kernel [d, 2, d], bias [2, d]} (axis 1: value, gate), depthwise/{kernel [K, d],
    bias} (causal: causal/{kernel [(K + 1) / 2, d], bias}, chunkwise/{kernel [K, d], bias}, chunkwise_scale
    [2, K, d]), pointwise_out/{kernel [d, d], bias}
  .../bypass_mid/scale [d], norm/{bias [d], log_scale []}, bypass/scale [d]
  output_downsample/logits [2]

Sizes (`zipformer_size`; parameters of the encoder over 80 mel bins from jax.eval_shape, tests check the table):
  size   factors      layers         dims                        feedforward                    params (causal)
  smoke  (1, 2)       (1, 1)         (48, 32)                    (96, 64)                           97,203 (99,923)
  tiny   icefall's 6  (1,) * 6       (64, 96, 128, 160, 128, 96) (192, 288, 384, 480, 384, 288) 2,546,165 (2,619,061)
  base   icefall's 6  (2,2,3,4,3,2)  (192,256,384,512,384,256)   (512,768,1024,1536,1024,768)   63,988,343 (64,550,263)
  large  icefall's 6  (2,2,4,5,4,2)  (192,256,512,768,512,256)   (512,768,1536,2048,1536,768)  146,616,250 (147,457,722)
  base is icefall's default Zipformer (M), large its Zipformer-L: heads (4, 4, 4, 8, 4, 4), kernels (31, 31, 15, 15,
  15, 31), query / value / pos head dims 32 / 12 / 4, pos_dim 48, embed channels (8, 32, 128); icefall's
  encoder_embed + encoder hold the same tensors plus the unused per-layer bypass_scale (base: 5,760 more, 63,994,103).
  smoke (2 heads, head dims 8 / 4 / 2, pos_dim 16, kernels (7, 5), embed channels (4, 8, 16)) keeps compiled tests
  short; tiny (4 heads, head dims 16 / 8 / 4, pos_dim 32, embed channels (8, 32, 64)) trains on a CPU.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from speechfuse.audio import frames
from speechfuse.nn import attention
from speechfuse.nn import layers
from speechfuse.nn import streaming
from speechfuse.nn import zipformer_scaling as scaling
from speechfuse.nn.zipformer_scaling import Balancer, BiasNorm, ScheduledFloat, Whiten

EMBED_TIME_LAYERS = ((3, 1), (3, 2), (3, 1))  # (kernel, stride) of encoder_embed's convs along time
OUTPUT_FACTOR = 2
CONVNEXT_CONTEXT = 3  # embed frames the ConvNeXt reads either side (its 7-frame kernel)
MASKED_SCORE = -1000.0  # icefall's fill for disallowed attention scores (exp underflows to exactly 0)

# icefall's schedules in the training step (zipformer.py, subsampling.py).
DROPOUT = ScheduledFloat(((0.0, 0.3), (20000.0, 0.1)))
POSITION_DROPOUT = 0.15
POS_SCORES_SKIP_RATE = ScheduledFloat(((0.0, 0.5), (4000.0, 0.0)))
ATTENTION_SKIP_RATE = ScheduledFloat(((0.0, 0.2), (4000.0, 0.05), (16000.0, 0.0)))
CONV_SKIP_RATE = ATTENTION_SKIP_RATE
CONST_ATTENTION_RATE = ScheduledFloat(((0.0, 0.25), (4000.0, 0.025)))
FF_SKIP_RATE = ScheduledFloat(((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0)))
BYPASS_SCALE_MIN = ScheduledFloat(((0.0, 0.9), (20000.0, 0.2)))
CONVNEXT_SKIP_RATE = ScheduledFloat(((0.0, 0.2), (20000.0, 0.015)))
FEATURE_MASK_RATE = 0.125

_SIZES = {
    "smoke": dict(downsampling_factors=(1, 2), num_layers=(1, 1), dims=(48, 32), unmasked_dims=(32, 32),
                  num_heads=(2, 2), feedforward_dims=(96, 64), conv_kernels=(7, 5), query_head_dim=8, value_head_dim=4,
                  pos_head_dim=2, pos_dim=16, embed_channels=(4, 8, 16)),
    "tiny": dict(downsampling_factors=(1, 2, 4, 8, 4, 2), num_layers=(1,) * 6, dims=(64, 96, 128, 160, 128, 96),
                 unmasked_dims=(64,) * 6, num_heads=(4,) * 6, feedforward_dims=(192, 288, 384, 480, 384, 288),
                 conv_kernels=(31, 31, 15, 15, 15, 31), query_head_dim=16, value_head_dim=8, pos_head_dim=4,
                 pos_dim=32, embed_channels=(8, 32, 64)),
    "base": dict(downsampling_factors=(1, 2, 4, 8, 4, 2), num_layers=(2, 2, 3, 4, 3, 2),
                 dims=(192, 256, 384, 512, 384, 256), unmasked_dims=(192, 192, 256, 256, 256, 192),
                 num_heads=(4, 4, 4, 8, 4, 4), feedforward_dims=(512, 768, 1024, 1536, 1024, 768),
                 conv_kernels=(31, 31, 15, 15, 15, 31), query_head_dim=32, value_head_dim=12, pos_head_dim=4,
                 pos_dim=48, embed_channels=(8, 32, 128)),
    "large": dict(downsampling_factors=(1, 2, 4, 8, 4, 2), num_layers=(2, 2, 4, 5, 4, 2),
                  dims=(192, 256, 512, 768, 512, 256), unmasked_dims=(192, 192, 256, 320, 256, 192),
                  num_heads=(4, 4, 4, 8, 4, 4), feedforward_dims=(512, 768, 1536, 2048, 1536, 768),
                  conv_kernels=(31, 31, 15, 15, 15, 31), query_head_dim=32, value_head_dim=12, pos_head_dim=4,
                  pos_dim=48, embed_channels=(8, 32, 128)),
}
SIZES = tuple(_SIZES)


def zipformer_size(size: str) -> dict[str, Any]:
  """Keyword arguments of ZipformerEncoder for `size` (a row of the module docstring's table)."""
  if size not in _SIZES:
    raise ValueError(f"unknown zipformer size {size!r}; choose from {SIZES}")
  return dict(_SIZES[size])


def embed_lengths(lengths: jax.Array | int) -> jax.Array | int:
  """50 Hz frames out of encoder_embed for `lengths` fbank frames: (T - 7) // 2, never below 0."""
  if isinstance(lengths, int):
    return max((lengths - 7) // 2, 0)
  return jnp.maximum((lengths - 7) // 2, 0)


def downsampled_lengths(lengths: jax.Array | int, factor: int) -> jax.Array | int:
  """Frames after SimpleDownsample by `factor`: ceil(lengths / factor)."""
  return (lengths + factor - 1) // factor


def output_lengths(lengths: jax.Array | int) -> jax.Array | int:
  """25 Hz encoder output frames for `lengths` fbank frames: ceil(((T - 7) // 2) / 2)."""
  return downsampled_lengths(embed_lengths(lengths), OUTPUT_FACTOR)


def zipformer_grid(sample_rate: int = 16000) -> frames.FrameGrid:
  """Where the encoder's 25 Hz output frames sit on the waveform: output t averages embed frames 2t and 2t + 1,
  which read fbank frames [4t, 4t + 11), centred on fbank frame 4t + 5 (640 t + 1000 samples at 16 kHz)."""
  kaldi = frames.kaldi_grid(sample_rate)
  grid = frames.compose(kaldi, EMBED_TIME_LAYERS + ((OUTPUT_FACTOR, OUTPUT_FACTOR),), "fbank_zipformer")
  return dataclasses.replace(grid, frame_count=lambda num_samples: output_lengths(kaldi.frame_count(num_samples)))


def compact_rel_positions(time: int, dim: int, length_factor: float = 1.0) -> np.ndarray:
  """icefall's CompactRelPositionalEncoding [2 time - 1, dim] (float32) for offsets key - query = -(time-1) ..
  time-1 in that order: the offset compressed logarithmically, mapped into (-pi/2, pi/2) by atan, then cosines (even
  features) and sines (odd) of 1, 2, ..., dim / 2 times it; the last feature is 1 (a bias)."""
  if dim % 2:
    raise ValueError(f"the compact relative positional encoding needs an even pos_dim, got {dim}")
  offsets = np.arange(-(time - 1), time, dtype=np.float64)[:, None]
  compression = dim ** 0.5
  compressed = compression * np.sign(offsets) * (np.log(np.abs(offsets) + compression) - np.log(compression))
  angles = np.arctan(compressed / (length_factor * dim / (2.0 * np.pi))) * (1 + np.arange(dim // 2))
  table = np.empty((2 * time - 1, dim), np.float64)
  table[:, 0::2] = np.cos(angles)
  table[:, 1::2] = np.sin(angles)
  table[:, -1] = 1.0
  return table.astype(np.float32)


def torch_init(initial_scale: float, names: tuple[str | None, ...], input_axes: int) -> nn.initializers.Initializer:
  """PyTorch's default Linear / Conv weight init (uniform, variance 1 / (3 fan-in)) times icefall's initial_scale,
  with logical axis names; fan-in is the product of the first `input_axes` axes."""
  init = nn.initializers.variance_scaling(
      initial_scale ** 2 / 3.0, "fan_in", "uniform", in_axis=tuple(range(input_axes)),
      out_axis=tuple(range(input_axes, len(names))))
  return layers.logical(init, names)


class ScaledProjection(nn.Module):
  """layers.Projection with PyTorch's init scaled by `initial_scale` (icefall's ScaledLinear): kernel [*input_shape,
  *features] named `names`, bias [*features] (zeros)."""
  features: tuple[int, ...]
  names: tuple[str | None, ...]
  input_axes: int = 1
  use_bias: bool = True
  initial_scale: float = 1.0
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., *input_shape] -> [..., *features]."""
    input_shape = x.shape[x.ndim - self.input_axes:]
    kernel = self.param("kernel", torch_init(self.initial_scale, self.names, self.input_axes),
                        (*input_shape, *self.features), self.param_dtype)
    bias = (self.param("bias", layers.bias_init(self.names[self.input_axes:]), self.features, self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    contracted = (tuple(range(x.ndim - self.input_axes, x.ndim)), tuple(range(self.input_axes)))
    y = jax.lax.dot_general(x, kernel, (contracted, ((), ())))
    return y if bias is None else y + bias


def scheduled_dropout(module: nn.Module, x: jax.Array, rate: scaling.FloatLike, step: scaling.Step, train: bool,
                      broadcast_dims: tuple[int, ...] = ()) -> jax.Array:
  """Dropout at a scheduled `rate` (may be traced), one mask shared along `broadcast_dims`; identity unless train."""
  rate = scaling.scheduled(rate, step)
  if not train or (isinstance(rate, float) and rate == 0.0):
    return x
  shape = tuple(1 if axis in broadcast_dims else size for axis, size in enumerate(x.shape))
  keep = jax.random.uniform(module.make_rng("dropout"), shape) >= rate
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def sequence_keep(module: nn.Module, rate: scaling.FloatLike, step: scaling.Step, train: bool,
                  batch: int) -> jax.Array | None:
  """[batch, 1, 1] bool, False for utterances whose branch is skipped at `rate`; None when nothing is skipped."""
  rate = scaling.scheduled(rate, step)
  if not train or (isinstance(rate, float) and rate == 0.0):
    return None
  return jax.random.uniform(module.make_rng("dropout"), (batch, 1, 1)) >= rate


def kept(y: jax.Array, keep: jax.Array | None) -> jax.Array:
  """y with skipped utterances (sequence_keep False) zeroed."""
  return y if keep is None else jnp.where(keep, y, 0.0).astype(y.dtype)


def convert_num_channels(x: jax.Array, channels: int) -> jax.Array:
  """x [..., c] -> [..., channels]: its first channels, or x followed by zeros."""
  if channels <= x.shape[-1]:
    return x[..., :channels]
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, channels - x.shape[-1])])


def full_dim_output(outputs: list[jax.Array]) -> jax.Array:
  """icefall's _get_full_dim_output: the last output, extended up to the widest one's width by the channels of the
  most recent output that has them. outputs: per stack [batch, time, dims[i]] -> [batch, time, max(dims)]."""
  pieces, width = [outputs[-1]], outputs[-1].shape[-1]
  for output in reversed(outputs[:-1]):
    if output.shape[-1] > width:
      pieces.append(output[..., width:])
      width = output.shape[-1]
  return jnp.concatenate(pieces, axis=-1)


def stack_attention_mask(valid: jax.Array, factor: int, chunk_size: attention.IntLike | None,
                         num_left_chunks: attention.IntLike) -> jax.Array:
  """[batch, time, time] bool for a stack whose frame j starts at embed frame j * factor (valid: [batch, time]): keys
  that are valid and, under a chunk mask of chunk_size embed frames (a traced -1: none), in the query's chunk or in
  the num_left_chunks before it (all when negative)."""
  mask = attention.attention_mask(valid)
  if chunk_size is None:
    return mask
  time = valid.shape[1]
  size = jnp.where(chunk_size > 0, chunk_size, time * factor + 1)
  chunk = (jnp.arange(time) * factor) // size
  query_chunk, key_chunk = chunk[:, None], chunk[None, :]
  allowed = (key_chunk <= query_chunk) & ((num_left_chunks < 0) | (key_chunk >= query_chunk - num_left_chunks))
  return mask & allowed[None]


class SimpleDownsample(nn.Module):
  """A softmax-weighted average of `factor` consecutive frames; parameter logits [factor] (zeros: a plain mean).

  Frames from each utterance's length on are replaced by its last valid frame and the end is padded with it (icefall
  repeats the batch's last frame), so an utterance's output does not depend on its padding.
  """
  factor: int
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
    """x: [batch, time, channels], lengths: [batch] -> [batch, ceil(time / factor), channels]."""
    logits = self.param("logits", nn.initializers.zeros_init(), (self.factor,), self.param_dtype)
    batch, time, channels = x.shape
    last = jnp.take_along_axis(x, jnp.clip(lengths - 1, 0, time - 1)[:, None, None], axis=1)
    x = jnp.where(attention.padding_mask(lengths, time)[..., None], x, last)
    x = jnp.pad(x, ((0, 0), (0, -time % self.factor), (0, 0)), mode="edge")
    weights = jax.nn.softmax(logits.astype(jnp.float32)).astype(self.dtype or x.dtype)
    return jnp.einsum("btfc,f->btc", x.reshape(batch, -1, self.factor, channels), weights)


class Bypass(nn.Module):
  """out = orig + (y - orig) * scale, scale [channels] learned (0.5 at init; icefall's BypassModule).

  In training, utterances skip the module at `skip_rate` (scale 0); with a step, limit_param_value holds the scale in
  [scale_min, scale_max].
  """
  skip_rate: scaling.FloatLike = 0.0
  scale_min: scaling.FloatLike = BYPASS_SCALE_MIN
  scale_max: float = 1.0
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, orig: jax.Array, y: jax.Array, *, train: bool, step: scaling.Step) -> jax.Array:
    """orig, y: [batch, time, channels] -> [batch, time, channels]."""
    scale = self.param("scale", layers.logical(nn.initializers.constant(0.5), ("embed",)), (y.shape[-1],),
                       self.param_dtype)
    scale = scaling.limit_param(self, scale, self.scale_min, self.scale_max, step).astype(y.dtype)
    keep = sequence_keep(self, self.skip_rate, step, train, y.shape[0])
    return orig + kept((y - orig) * scale, keep)


class AttentionWeights(nn.Module):
  """icefall's RelPositionMultiheadAttentionWeights: [batch, heads, time, time] float32 attention probabilities.

  Scores q k^T + rel_shift(p P^T), q / k [heads, query_head_dim], p [heads, pos_head_dim] from x, P the positional
  table projected by `pos` (no bias); no 1/sqrt(d) scaling (icefall folds it into the init of query and key).
  """
  num_heads: int
  query_head_dim: int
  pos_head_dim: int
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array, *, train: bool, step: scaling.Step,
               cache: jax.Array | None = None) -> jax.Array | tuple[jax.Array, jax.Array]:
    """x: [batch, time, embed], positions: [2 time - 1, pos_dim] (compact_rel_positions), mask: [batch, time, time]
    bool (True = attend) -> [batch, heads, time, time].

    A streaming step passes cache [batch, cached, heads, query_head_dim], the keys of the frames before the
    chunk; the keys are then those and the chunk's (keys = cached + time), positions holds the first time + keys - 1
    rows of compact_rel_positions(keys), mask is [batch, time, keys], and the result is (weights [batch, heads,
    time, keys], the keys [batch, keys, heads, query_head_dim])."""
    batch, time, _ = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    head_axes = ("embed", "heads", "kv")
    init_scale = self.query_head_dim ** -0.25
    query = ScaledProjection((self.num_heads, self.query_head_dim), head_axes, initial_scale=init_scale,
                             name="query", **kw)(x)
    key = ScaledProjection((self.num_heads, self.query_head_dim), head_axes, initial_scale=init_scale, name="key",
                           **kw)(x)
    pos_query = ScaledProjection((self.num_heads, self.pos_head_dim), head_axes, initial_scale=init_scale,
                                 name="pos_query", **kw)(x)
    flat_key = key.reshape(batch, time, -1)
    flat_key = Balancer(0.4, 0.6, min_abs=0.0, max_abs=100.0, prob=0.025)(flat_key, step)
    flat_key = Whiten(self.num_heads, scaling.whitening_schedule(3.0), grad_scale=0.025)(flat_key, step)
    key = flat_key.reshape(key.shape)
    if cache is not None:
      key = jnp.concatenate([cache.astype(key.dtype), key], axis=1)
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32)

    positions = ScaledProjection((self.num_heads, self.pos_head_dim), (None, "heads", "kv"), use_bias=False,
                                 initial_scale=0.05, name="pos", **kw)(positions.astype(x.dtype))
    pos_scores = attention.rel_shift(jnp.einsum("bqhd,phd->bhqp", pos_query, positions)).astype(jnp.float32)
    use_positions = sequence_keep(self, POS_SCORES_SKIP_RATE, step, train, 1)
    scores = scores + (pos_scores if use_positions is None else jnp.where(use_positions[0, 0, 0], pos_scores, 0.0))

    if step is not None:
      scores = scaling.penalize_abs_values_gt(scores, jnp.asarray(scaling.fires(self, 0.1, step)), 25.0, 1e-4)
    scores = jnp.where(mask[:, None], scores, MASKED_SCORE)
    weights = jax.nn.softmax(scores, axis=-1)
    return weights if cache is None else (weights, key)


class FeedForward(nn.Module):
  """Dense -> Balancer -> SwooshL -> dropout (one mask per utterance and channel, shared over time) -> Dense
  (initial_scale 0.1) -> Whiten."""
  hidden_dim: int
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, step: scaling.Step) -> jax.Array:
    """x: [batch, time, embed] -> [batch, time, embed]."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    hidden = ScaledProjection((self.hidden_dim,), ("embed", "mlp"), name="dense_in", **kw)(x)
    hidden = nn.with_logical_constraint(hidden, ("batch", "time", "mlp"))
    hidden = Balancer(0.3, 1.0, min_abs=0.75, max_abs=5.0)(hidden, step)
    hidden = scheduled_dropout(self, scaling.swoosh_l(hidden), DROPOUT, step, train, broadcast_dims=(1,))
    out = ScaledProjection((x.shape[-1],), ("mlp", "embed"), initial_scale=0.1, name="dense_out", **kw)(hidden)
    return Whiten(1, scaling.whitening_schedule(7.5), grad_scale=0.01)(out, step)


class NonlinAttention(nn.Module):
  """icefall's NonlinAttention: Dense to (s, x, y) of hidden_dim each; (w (x * tanh(s))) * y -> Dense (0.05)."""
  hidden_dim: int
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, weights: jax.Array, *, step: scaling.Step,
               cache: jax.Array | None = None) -> jax.Array | tuple[jax.Array, jax.Array]:
    """x: [batch, time, embed], weights: [batch, time, time] (one head) -> [batch, time, embed].

    Streaming: cache [batch, cached, hidden_dim] holds the earlier frames' x * tanh(s), weights is [batch, time,
    cached + time], and the result is (out, the values [batch, cached + time, hidden_dim])."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    projected = ScaledProjection((3, self.hidden_dim), ("embed", None, "mlp"), name="dense_in", **kw)(x)
    gate, values, out_gate = projected[..., 0, :], projected[..., 1, :], projected[..., 2, :]
    gate = Balancer(ScheduledFloat(((0.0, 0.25), (20000.0, 0.05))), ScheduledFloat(((0.0, 0.75), (20000.0, 0.95))),
                    min_abs=0.5, max_abs=5.0)(gate, step)
    values = Whiten(1, scaling.whitening_schedule(5.0), grad_scale=0.01)(values, step) * jnp.tanh(gate)
    if cache is not None:
      values = jnp.concatenate([cache.astype(values.dtype), values], axis=1)
    attended = jnp.einsum("bqk,bkc->bqc", weights.astype(values.dtype), values) * out_gate
    out = ScaledProjection((x.shape[-1],), ("mlp", "embed"), initial_scale=0.05, name="dense_out", **kw)(attended)
    out = Whiten(1, scaling.whitening_schedule(5.0, ratio=3.0), grad_scale=0.01)(out, step)
    return out if cache is None else (out, values)


class SelfAttention(nn.Module):
  """Attention with given weights: value [heads, value_head_dim] -> weighted sum -> out (initial_scale 0.05)."""
  value_head_dim: int
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, weights: jax.Array, *, step: scaling.Step,
               cache: jax.Array | None = None) -> jax.Array | tuple[jax.Array, jax.Array]:
    """x: [batch, time, embed], weights: [batch, heads, time, time] -> [batch, time, embed].

    Streaming: cache [batch, cached, heads, value_head_dim] holds the earlier frames' values, weights is [batch,
    heads, time, cached + time], and the result is (out, the values [batch, cached + time, heads, value_head_dim])."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    value = ScaledProjection((weights.shape[1], self.value_head_dim), ("embed", "heads", "kv"), name="value", **kw)(x)
    if cache is not None:
      value = jnp.concatenate([cache.astype(value.dtype), value], axis=1)
    context = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(value.dtype), value)
    context = nn.with_logical_constraint(context, ("batch", "time", "heads", "kv"))
    out = ScaledProjection((x.shape[-1],), ("heads", "kv", "embed"), input_axes=2, initial_scale=0.05, name="out",
                           **kw)(context)
    out = Whiten(1, scaling.whitening_schedule(7.5, ratio=3.0), grad_scale=0.01)(out, step)
    return out if cache is None else (out, value)


def _depthwise(x: jax.Array, kernel: jax.Array, padding: tuple[int, int]) -> jax.Array:
  """Per-channel cross-correlation over time: x [batch, time, channels], kernel [taps, channels]."""
  return jax.lax.conv_general_dilated(x, kernel[:, None, :], window_strides=(1,), padding=[padding],
                                      dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=x.shape[-1])


class DepthwiseWeights(nn.Module):
  """The kernel [taps, channels] (PyTorch's init) and bias [channels] of a per-channel convolution over time."""
  taps: int
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, channels: int) -> tuple[jax.Array, jax.Array]:
    kernel = self.param("kernel", torch_init(1.0, (None, "conv_channels"), 1), (self.taps, channels),
                        self.param_dtype)
    return kernel, self.param("bias", layers.bias_init(("conv_channels",)), (channels,), self.param_dtype)


class ChunkCausalDepthwiseConv(nn.Module):
  """icefall's ChunkCausalDepthwiseConv1d: a causal conv of (K + 1) // 2 taps plus a K-tap conv that reads nothing
  outside the frame's chunk, the latter (bias included) scaled by 1 + chunkwise_scale[0, p] (p < K frames after the
  chunk's start) + chunkwise_scale[1, K - q] (q <= K frames to its end, the frame included).

  Parameters: causal/{kernel [(K + 1) // 2, channels], bias}, chunkwise/{kernel [K, channels], bias},
  chunkwise_scale [2, K, channels] (zeros).
  """
  kernel_size: int
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array, chunk_size: attention.IntLike | None,
               cache: jax.Array | None = None) -> jax.Array | tuple[jax.Array, jax.Array]:
    """x: [batch, time, channels] with padding zeroed, lengths: [batch] -> [batch, time, channels].

    chunk_size None or (traced) <= 0: full context, the chunk being each utterance's valid frames. A streaming step
    passes one chunk (chunk_size = time) and cache [batch, K // 2, channels], the inputs of the frames before it
    (zeros before the utterance), and gets (out, the new cache).
    """
    taps, half = self.kernel_size, self.kernel_size // 2
    time, channels = x.shape[1], x.shape[2]
    causal_kernel, causal_bias = DepthwiseWeights(half + 1, self.param_dtype, name="causal")(channels)
    chunk_kernel, chunk_bias = DepthwiseWeights(taps, self.param_dtype, name="chunkwise")(channels)
    zeros = layers.logical(nn.initializers.zeros_init(), (None, None, "conv_channels"))
    edge_scale = self.param("chunkwise_scale", zeros, (2, taps, channels), self.param_dtype)
    x, causal_kernel, causal_bias, chunk_kernel, chunk_bias, edge_scale = nn.dtypes.promote_dtype(
        x, causal_kernel, causal_bias, chunk_kernel, chunk_bias, edge_scale, dtype=self.dtype)
    if cache is None:
      causal = _depthwise(x, causal_kernel, (half, 0)) + causal_bias
    else:
      history = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
      causal = _depthwise(history, causal_kernel, (0, 0)) + causal_bias
    t = jnp.arange(time)
    to_utterance_end = jnp.asarray(lengths)[:, None] - t[None]  # [batch, time]
    if chunk_size is None:
      chunked = _depthwise(x, chunk_kernel, (half, half))
      from_start, to_end = t[None], to_utterance_end
    else:
      full = chunk_size <= 0
      size = jnp.where(full, time + taps, chunk_size)
      padded = jnp.pad(x, ((0, 0), (half, half), (0, 0)))
      chunked = jnp.zeros_like(x)
      for tap in range(taps):
        same_chunk = ((t + tap - half) // size == t // size)[None, :, None]
        chunked = chunked + jnp.where(same_chunk, padded[:, tap:tap + time] * chunk_kernel[tap], 0.0)
      from_start = jnp.where(full, t, t % size)[None]
      to_end = jnp.where(full, to_utterance_end, size - from_start)
    left = jnp.where((from_start < taps)[..., None], jnp.take(edge_scale[0], jnp.clip(from_start, 0, taps - 1), 0), 0)
    right = jnp.where(((to_end >= 1) & (to_end <= taps))[..., None],
                      jnp.take(edge_scale[1], jnp.clip(taps - to_end, 0, taps - 1), 0), 0)
    out = (chunked + chunk_bias) * (1.0 + left + right) + causal
    return out if cache is None else (out, history[:, history.shape[1] - half:])


class ConvolutionModule(nn.Module):
  """Zipformer's conv module: pointwise_in to (value, gate) -> value * sigmoid(gate) -> padding zeroed -> depthwise
  conv (ChunkCausalDepthwiseConv when causal) -> SwooshR -> pointwise_out (initial_scale 0.05)."""
  kernel_size: int
  causal: bool = False
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array, lengths: jax.Array, chunk_size: attention.IntLike | None, *,
               step: scaling.Step, cache: jax.Array | None = None) -> jax.Array | tuple[jax.Array, jax.Array]:
    """x: [batch, time, embed], valid: [batch, time] bool, lengths: [batch] -> [batch, time, embed]; streaming
    (causal only), with the depthwise conv's cache -> (out, the new cache), as ChunkCausalDepthwiseConv."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    channels = x.shape[-1]
    glu_in = ScaledProjection((2, channels), ("embed", None, "conv_channels"), name="pointwise_in", **kw)(x)
    gate = Balancer(ScheduledFloat(((0.0, 0.05), (8000.0, 0.025))), 1.0, min_abs=1.5,
                    max_abs=ScheduledFloat(((0.0, 5.0), (8000.0, 10.0))))(glu_in[..., 1, :], step)
    h = jnp.where(valid[..., None], glu_in[..., 0, :] * nn.sigmoid(gate), 0.0)
    h = nn.with_logical_constraint(h, ("batch", "time", "conv_channels"))
    if self.causal:
      h = ChunkCausalDepthwiseConv(self.kernel_size, name="depthwise", **kw)(h, lengths, chunk_size, cache)
      if cache is not None:
        h, cache = h
    else:
      kernel, bias = DepthwiseWeights(self.kernel_size, self.param_dtype, name="depthwise")(channels)
      h, kernel, bias = nn.dtypes.promote_dtype(h, kernel, bias, dtype=self.dtype)
      h = _depthwise(h, kernel, (self.kernel_size // 2, self.kernel_size // 2)) + bias
    h = Balancer(ScheduledFloat(((0.0, 0.1), (8000.0, 0.05))), 1.0,
                 min_abs=ScheduledFloat(((0.0, 0.2), (20000.0, 0.5))), max_abs=10.0)(h, step)
    h = Whiten(1, scaling.whitening_schedule(7.5), grad_scale=0.01)(h, step)
    out = ScaledProjection((channels,), ("conv_channels", "embed"), initial_scale=0.05, name="pointwise_out",
                           **kw)(scaling.swoosh_r(h))
    return out if cache is None else (out, cache)


class LayerCache(NamedTuple):
  """A layer's streaming cache, for the `cached` frames before the chunk (zeros before the utterance, masked):
  keys [batch, cached, heads, query_head_dim], nonlin [batch, cached, 3 dim / 4] (NonlinAttention's x * tanh(s)),
  values1 / values2 [batch, cached, heads, value_head_dim] (the self-attentions'), and conv1 / conv2 [batch,
  K // 2, dim], the depthwise convs' last inputs."""
  keys: jax.Array
  nonlin: jax.Array
  values1: jax.Array
  values2: jax.Array
  conv1: jax.Array
  conv2: jax.Array


class StackState(NamedTuple):
  """A stack's streaming state: offset (int32 [], its frames before the chunk) and each layer's LayerCache."""
  offset: jax.Array
  layers: tuple[LayerCache, ...]


class ZipformerState(struct.PyTreeNode):
  """What ZipformerEncoder.step carries from one chunk to the next: offset (int32 [], output frames emitted) and
  each stack's StackState."""
  offset: jax.Array
  stacks: tuple[StackState, ...]


class ZipformerLayer(nn.Module):
  """One Zipformer2EncoderLayer (module docstring); submodules attention_weights, ffn{1,2,3}, nonlin_attention,
  self_attention{1,2}, conv{1,2}, bypass_mid, norm, bypass.

  Attributes:
    num_heads, query_head_dim, pos_head_dim, value_head_dim: attention geometry.
    feedforward_dim: FF2's hidden width (FF1 3/4 of it, FF3 5/4).
    conv_kernel, causal: the conv modules' depthwise kernel and whether it is chunk-causal.
    layer_skip_rate: probability that an utterance skips the whole layer in training.
  """
  num_heads: int
  query_head_dim: int
  pos_head_dim: int
  value_head_dim: int
  feedforward_dim: int
  conv_kernel: int
  causal: bool = False
  layer_skip_rate: scaling.FloatLike = 0.0
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, valid: jax.Array, lengths: jax.Array, mask: jax.Array,
               chunk_size: attention.IntLike | None, *, train: bool, step: scaling.Step,
               cache: LayerCache | None = None) -> jax.Array | tuple[jax.Array, LayerCache]:
    """x: [batch, time, dim], positions: [2 time - 1, pos_dim], valid: [batch, time] bool, lengths: [batch], mask:
    [batch, time, time] bool, chunk_size: the conv's chunk in this stack's frames -> [batch, time, dim].

    A streaming step (evaluation) passes one chunk (time = chunk_size), the layer's cache of the frames before it,
    positions and mask over the cached frames and the chunk's (AttentionWeights), and gets (x, the new cache)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    batch, _, dim = x.shape
    updated = {}

    def cached(name: str, call):
      """call(the cache entry `name`, None offline): a submodule's output; in streaming the submodule also returns
      its updated entry, kept in `updated`."""
      if cache is None:
        return call(None)
      out, updated[name] = call(getattr(cache, name))
      return out

    ffn = lambda hidden, name: FeedForward(hidden, name=name, **kw)(x, train=train, step=step)
    conv = lambda name: cached(name, lambda c: ConvolutionModule(self.conv_kernel, self.causal, name=name, **kw)(
        x, valid, lengths, chunk_size, step=step, cache=c))
    skip = lambda rate: sequence_keep(self, rate, step, train, batch)
    orig = x
    weights = cached("keys", lambda c: AttentionWeights(
        self.num_heads, self.query_head_dim, self.pos_head_dim, name="attention_weights", **kw)(
            x, positions, mask, train=train, step=step, cache=c))
    x = x + ffn(self.feedforward_dim * 3 // 4, "ffn1")
    attention_keep = skip(ATTENTION_SKIP_RATE)
    first_head = weights[:, 0]
    learned = sequence_keep(self, CONST_ATTENTION_RATE, step, train, 1)
    if learned is not None:  # now and then, a plain average over the allowed keys
      allowed = (first_head > 0).astype(first_head.dtype)
      first_head = jnp.where(learned[0, 0, 0], first_head, allowed / allowed.sum(-1, keepdims=True))
    nonlin = cached("nonlin", lambda c: NonlinAttention(dim * 3 // 4, name="nonlin_attention", **kw)(
        x, first_head, step=step, cache=c))
    nonlin = Balancer(0.3, 0.7, min_abs=ScheduledFloat(((0.0, 0.004), (4000.0, 0.02))), prob=0.05)(nonlin, step)
    x = x + kept(nonlin, attention_keep)
    self_attention = lambda name: cached(name.replace("self_attention", "values"), lambda c: SelfAttention(
        self.value_head_dim, name=name, **kw)(x, weights, step=step, cache=c))
    x = x + kept(self_attention("self_attention1"), attention_keep)
    x = x + kept(conv("conv1"), skip(CONV_SKIP_RATE))
    ff2 = Balancer(0.3, 0.7, min_abs=ScheduledFloat(((0.0, 0.0), (4000.0, 0.1))), max_abs=2.0, prob=0.05)(
        ffn(self.feedforward_dim, "ffn2"), step)
    x = x + kept(ff2, skip(FF_SKIP_RATE))
    x = Bypass(param_dtype=self.param_dtype, name="bypass_mid")(orig, x, train=train, step=step)
    x = x + kept(self_attention("self_attention2"), attention_keep)
    x = x + kept(conv("conv2"), skip(CONV_SKIP_RATE))
    ff3 = Balancer(0.3, 0.7, min_abs=ScheduledFloat(((0.0, 0.0), (4000.0, 0.2))), max_abs=4.0, prob=0.05)(
        ffn(self.feedforward_dim * 5 // 4, "ffn3"), step)
    x = x + kept(ff3, skip(FF_SKIP_RATE))
    x = Balancer(0.45, 0.55, min_abs=0.2, max_abs=4.0)(x, step)
    x = BiasNorm(name="norm", **kw)(x, step)
    x = Bypass(self.layer_skip_rate, param_dtype=self.param_dtype, name="bypass")(orig, x, train=train, step=step)
    x = Balancer(0.45, 0.55, min_abs=0.1, max_abs=4.0)(x, step)
    x = Whiten(1, scaling.whitening_schedule(4.0, ratio=3.0), grad_scale=0.01)(x, step)
    x = nn.with_logical_constraint(x, ("batch", "time", "embed"))
    if cache is None:
      return x
    cached_frames = cache.keys.shape[1]
    latest = lambda full: full[:, full.shape[1] - cached_frames:]  # the last `cached_frames` frames
    return x, LayerCache(latest(updated["keys"]), latest(updated["nonlin"]), latest(updated["values1"]),
                         latest(updated["values2"]), updated["conv1"], updated["conv2"])


class ZipformerStack(nn.Module):
  """icefall's Zipformer2Encoder inside DownsampledZipformer2Encoder: downsample -> layers_{j} -> upsample ->
  out_combiner (factor 1: the layers alone). Layer j skips at 0.5 -> 0.035 sqrt(factor), decaying over its share
  of [warmup_begin, warmup_end] steps (icefall's layerdrop warm-up).

  Attributes: factor, num_layers, pos_dim, warmup_begin, warmup_end and ZipformerLayer's.
  """
  factor: int
  num_layers: int
  num_heads: int
  query_head_dim: int
  pos_head_dim: int
  value_head_dim: int
  feedforward_dim: int
  conv_kernel: int
  pos_dim: int
  causal: bool = False
  warmup_begin: float = 0.0
  warmup_end: float = 0.0
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array, chunk_size: attention.IntLike | None,
               num_left_chunks: attention.IntLike, feature_mask: jax.Array | None, *, train: bool,
               step: scaling.Step, state: StackState | None = None) -> tuple[Any, ...]:
    """x: [batch, time, dim] at the embed rate, lengths: [batch], feature_mask: [batch, 1, dim] or None ->
    (x [batch, time, dim], the layers' output [batch, ceil(time / factor), dim]).

    A streaming step passes one chunk of chunk_size embed frames (time = chunk_size) and the stack's state, and gets
    the new state as a third entry."""
    orig = x
    if self.factor > 1:
      x = SimpleDownsample(self.factor, self.dtype, self.param_dtype, name="downsample")(x, lengths)
      lengths = downsampled_lengths(lengths, self.factor)
    valid = attention.padding_mask(lengths, x.shape[1])
    if state is None:
      mask = stack_attention_mask(valid, self.factor, chunk_size, num_left_chunks)
      positions = jnp.asarray(compact_rel_positions(x.shape[1], self.pos_dim))
    else:  # the chunk's queries against the cached frames' keys and its own
      cached = state.layers[0].keys.shape[1]
      mask = streaming.step_mask(state.offset, cached, valid)
      positions = jnp.asarray(compact_rel_positions(cached + x.shape[1], self.pos_dim)[:cached + 2 * x.shape[1] - 1])
    positions = nn.Dropout(POSITION_DROPOUT)(positions, deterministic=not train)  # one draw for all the layers
    masked = lambda h: h if feature_mask is None else h * feature_mask
    x = masked(x)
    share = (self.warmup_end - self.warmup_begin) / self.num_layers
    layer_caches = []
    for j in range(self.num_layers):
      begin = self.warmup_begin + j * share
      skip_rate = ScheduledFloat(((begin, 0.5), (begin + share, 0.035 * self.factor ** 0.5)))
      x = ZipformerLayer(
          self.num_heads, self.query_head_dim, self.pos_head_dim, self.value_head_dim, self.feedforward_dim,
          self.conv_kernel, self.causal, skip_rate, self.dtype, self.param_dtype, name=f"layers_{j}",
      )(x, positions, valid, lengths, mask, None if chunk_size is None else chunk_size // self.factor, train=train,
        step=step, cache=None if state is None else state.layers[j])
      if state is not None:
        x, layer_cache = x
        layer_caches.append(layer_cache)
      x = masked(x)
    hidden = x
    if self.factor > 1:
      x = jnp.repeat(x, self.factor, axis=1)[:, :orig.shape[1]]
      x = Bypass(param_dtype=self.param_dtype, name="out_combiner")(orig, x, train=train, step=step)
    if state is None:
      return x, hidden
    return x, hidden, StackState(state.offset + hidden.shape[1], tuple(layer_caches))


class ConvNeXt(nn.Module):
  """icefall's ConvNeXt over [batch, time, freq, channels]: x + pointwise_out(SwooshL(pointwise_in(depthwise(x)))),
  a 7x7 depthwise conv ('same' padding) and 1x1 convs to 3 C and back (initial_scale 0.01)."""
  hidden_ratio: int = 3
  kernel_size: int = 7
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, step: scaling.Step, pad_time: bool = True) -> jax.Array:
    """x: [batch, time, freq, channels] -> the same shape; pad_time=False (a streaming step, x holding the
    kernel_size // 2 frames either side of the chunk) -> [batch, time - kernel_size + 1, freq, channels]."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    channels, pad = x.shape[-1], self.kernel_size // 2
    time_pad = pad if pad_time else 0
    h = nn.Conv(channels, (self.kernel_size, self.kernel_size), padding=((time_pad, time_pad), (pad, pad)),
                feature_group_count=channels, kernel_init=torch_init(1.0, (None, None, None, "conv_channels"), 3),
                bias_init=layers.bias_init(("conv_channels",)), name="depthwise", **kw)(x)
    h = ScaledProjection((self.hidden_ratio * channels,), ("conv_channels", "mlp"), name="pointwise_in", **kw)(h)
    h = scaling.swoosh_l(Balancer(0.3, 1.0, min_abs=0.75, max_abs=5.0)(h, step))
    h = ScaledProjection((channels,), ("mlp", "conv_channels"), initial_scale=0.01, name="pointwise_out", **kw)(h)
    keep = sequence_keep(self, CONVNEXT_SKIP_RATE, step, train, x.shape[0])
    x = x[:, pad - time_pad:x.shape[1] - (pad - time_pad)] + kept(h, None if keep is None else keep[..., None])
    x = Balancer(0.4, 0.6, min_abs=1.0, max_abs=6.0)(x, step)
    return Whiten(1, 5.0, grad_scale=0.01)(x, step)


class ConvEmbed(nn.Module):
  """icefall's Conv2dSubsampling (encoder_embed): fbank [batch, T, mel] -> [batch, (T - 7) // 2, d_model] at 50 Hz.

  Attributes:
    d_model: output width (dims[0]).
    channels: the three convs' channels (icefall: 8, 32, 128).
  """
  d_model: int
  channels: tuple[int, int, int] = (8, 32, 128)
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, lengths: jax.Array, *, train: bool, step: scaling.Step,
               window_start: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """features: [batch, T, mel] (T >= 9), lengths: [batch] -> (x [batch, (T - 7) // 2, d_model], lengths').

    A streaming step (ZipformerEncoder.step) passes a chunk's window: its embed frames are CONVNEXT_CONTEXT before
    the chunk, the chunk's, and CONVNEXT_CONTEXT after it (the ConvNeXt's context), the first at embed position
    window_start (int32 []); frames before the utterance are zeroed, as the offline padding, and the result is the
    chunk's frames [batch, (T - 7) // 2 - 2 CONVNEXT_CONTEXT, d_model] with their valid counts."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    conv = lambda channels, strides, padding, name: nn.Conv(
        channels, (3, 3), strides=strides, padding=padding, name=name,
        kernel_init=torch_init(1.0, (None, None, None, "conv_channels"), 3),
        bias_init=layers.bias_init(("conv_channels",)), **kw)
    x = conv(self.channels[0], (1, 1), ((0, 0), (1, 1)), "conv_0")(features[..., None])
    if step is not None:
      x = scaling.scale_grad(x, 0.2)  # icefall's ScaleGrad(0.2), against fp16 overflow in the first conv
    x = scaling.swoosh_r(Balancer(max_abs=1.0)(x, step))
    x = scaling.swoosh_r(Balancer(max_abs=4.0)(conv(self.channels[1], (2, 2), "VALID", "conv_1")(x), step))
    x = scaling.swoosh_r(Balancer(max_abs=4.0)(conv(self.channels[2], (1, 2), "VALID", "conv_2")(x), step))
    lengths = embed_lengths(lengths)
    valid = attention.padding_mask(lengths, x.shape[1])
    if window_start is not None:
      valid = valid & (window_start + jnp.arange(x.shape[1]) >= 0)[None]
    x = jnp.where(valid[:, :, None, None], x, 0.0)  # as an utterance alone
    x = ConvNeXt(name="convnext", **kw)(x, train=train, step=step, pad_time=window_start is None)
    if window_start is not None:
      lengths = jnp.clip(lengths - CONVNEXT_CONTEXT, 0, x.shape[1])
    batch, time, freq, channels = x.shape
    x = jnp.swapaxes(x, 2, 3).reshape(batch, time, channels * freq)  # rows channel-major, as PyTorch's
    x = ScaledProjection((self.d_model,), (None, "embed"), name="out", **kw)(x)
    x = Whiten(1, ScheduledFloat(((0.0, 4.0), (20000.0, 8.0)), default=4.0), grad_scale=0.02)(x, step)
    x = BiasNorm(name="norm", **kw)(x, step)
    return scheduled_dropout(self, x, DROPOUT, step, train, broadcast_dims=(1,)), lengths


class ZipformerStacks(nn.Module):
  """The Zipformer's stacks on 50 Hz embedded frames, the base of the encoders (ZipformerEncoder on fbank,
  nn.zipformer_waveform on the waveform), which add their front end and call `encode_stacks`.

  Attributes (per-stack tuples have one entry per downsampling factor):
    downsampling_factors: each stack's factor relative to the 50 Hz embed frames.
    num_layers, dims, unmasked_dims, num_heads, feedforward_dims, conv_kernels: per stack (icefall's
      num_encoder_layers, encoder_dim, encoder_unmasked_dim, num_heads, feedforward_dim, cnn_module_kernel).
    query_head_dim, value_head_dim, pos_head_dim, pos_dim: attention geometry shared by the stacks.
    causal: chunk-causal convolutions (ChunkCausalDepthwiseConv); needed for chunk_size.
    chunk_sizes, left_context_frames: with causal, the training draws per batch when no chunk_size is given (embed
      frames; -1: full context), icefall's --chunk-size and --left-context-frames.
    warmup_steps: icefall's warmup_batches, over which the stacks' layer skipping decays in turn.
  """
  downsampling_factors: tuple[int, ...] = (1, 2, 4, 8, 4, 2)
  num_layers: tuple[int, ...] = (2, 2, 3, 4, 3, 2)
  dims: tuple[int, ...] = (192, 256, 384, 512, 384, 256)
  unmasked_dims: tuple[int, ...] = (192, 192, 256, 256, 256, 192)
  num_heads: tuple[int, ...] = (4, 4, 4, 8, 4, 4)
  feedforward_dims: tuple[int, ...] = (512, 768, 1024, 1536, 1024, 768)
  conv_kernels: tuple[int, ...] = (31, 31, 15, 15, 15, 31)
  query_head_dim: int = 32
  value_head_dim: int = 12
  pos_head_dim: int = 4
  pos_dim: int = 48
  causal: bool = False
  chunk_sizes: tuple[int, ...] = (16, 32, 64, -1)
  left_context_frames: tuple[int, ...] = (64, 128, 256, -1)
  warmup_steps: float = 4000.0
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @property
  def d_model(self) -> int:
    """The output width, max(dims)."""
    return max(self.dims)

  def encode_stacks(
      self, x: jax.Array, lengths: jax.Array, chunk_size: attention.IntLike | None, num_left_chunks: attention.IntLike,
      *, train: bool, step: scaling.Step, output_factor: int, states: tuple[StackState, ...] | None = None,
  ) -> tuple[Any, ...]:
    """Embedded frames x [batch, T_embed, dims[0]] at 50 Hz -> (output [batch, ceil(T_embed / output_factor),
    max(dims)] with padding zeroed, its lengths [batch], each stack's output [batch, T_embed, dims[i]], each stack's
    layers' outputs); chunk_size / num_left_chunks as `_chunking` returns them. Called from a subclass's compact
    __call__ (submodules stacks_{i}, output_downsample when output_factor > 1).

    A streaming step passes one chunk (T_embed = chunk_size) and the stacks' states, and gets their new states as a
    fifth entry."""
    stacks = len(self.downsampling_factors)
    for name in ("num_layers", "dims", "unmasked_dims", "num_heads", "feedforward_dims", "conv_kernels"):
      if len(getattr(self, name)) != stacks:
        raise ValueError(f"{name}={getattr(self, name)} needs one entry per stack ({stacks})")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    feature_masks = self._feature_masks(x.shape[0], train, x.dtype)
    outputs, hidden, new_states = [], [], []
    for i, factor in enumerate(self.downsampling_factors):
      out = ZipformerStack(
          factor, self.num_layers[i], self.num_heads[i], self.query_head_dim, self.pos_head_dim,
          self.value_head_dim, self.feedforward_dims[i], self.conv_kernels[i], self.pos_dim, self.causal,
          self.warmup_steps * (i + 1) / (stacks + 1), self.warmup_steps * (i + 2) / (stacks + 1), name=f"stacks_{i}",
          **kw,
      )(convert_num_channels(x, self.dims[i]), lengths, chunk_size, num_left_chunks, feature_masks[i], train=train,
        step=step, state=None if states is None else states[i])
      x, layers_output = out[:2]
      outputs.append(x)
      hidden.append(layers_output)
      new_states.extend(out[2:])
    x = full_dim_output(outputs)
    if output_factor > 1:
      x = SimpleDownsample(output_factor, name="output_downsample", **kw)(x, lengths)
      lengths = downsampled_lengths(lengths, output_factor)
    x = jnp.where(attention.padding_mask(lengths, x.shape[1])[..., None], x, 0.0)
    x = nn.with_logical_constraint(x, ("batch", "time", "embed"))
    if states is None:
      return x, lengths, tuple(outputs), tuple(hidden)
    return x, lengths, tuple(outputs), tuple(hidden), tuple(new_states)

  def check_chunk(self, chunk_size: int, output_factor: int) -> None:
    """Raises a ValueError unless chunks of chunk_size output frames (output_factor embed frames each) hold whole
    frames of every stack."""
    largest = max(self.downsampling_factors)
    if (chunk_size * output_factor) % largest:
      raise ValueError(f"chunk_size={chunk_size} output frames ({chunk_size * output_factor} embed frames) must be a "
                       f"multiple of {largest // math.gcd(output_factor, largest)}, for whole frames in every stack "
                       f"(downsampling factors {self.downsampling_factors})")

  def _chunking(self, train: bool, chunk_size: attention.IntLike | None, num_left_chunks: attention.IntLike,
                output_factor: int) -> tuple[attention.IntLike | None, attention.IntLike]:
    """(chunk size in embed frames, num_left_chunks), None for full context: the caller's chunk_size in output frames
    (output_factor embed frames each), else with causal and train one drawn per batch (icefall's get_chunk_info,
    chunk_sizes in embed frames), else full context."""
    if chunk_size is not None:
      if not self.causal:
        raise ValueError("chunk_size needs a ZipformerEncoder with causal=True: its symmetric convolutions look "
                         f"{max(self.conv_kernels) // 2} frames past any chunk")
      if isinstance(chunk_size, int) and chunk_size <= 0:
        return None, -1
      if isinstance(chunk_size, int):
        self.check_chunk(chunk_size, output_factor)
      return chunk_size * output_factor, num_left_chunks
    if not (train and self.causal):
      return None, -1
    size_key, left_key = jax.random.split(self.make_rng("dropout"))
    size = jnp.asarray(self.chunk_sizes)[jax.random.randint(size_key, (), 0, len(self.chunk_sizes))]
    left_frames = jnp.asarray(self.left_context_frames)[
        jax.random.randint(left_key, (), 0, len(self.left_context_frames))]
    left_chunks = jnp.where((size < 0) | (left_frames < 0), -1, jnp.maximum(left_frames // jnp.maximum(size, 1), 1))
    return size, left_chunks

  def _feature_masks(self, batch: int, train: bool, dtype: Any) -> list[jax.Array | None]:
    """Per stack [batch, 1, dims[i]] (training; else None): icefall's get_feature_masks, which zero the channels
    above unmasked_dims[i] for 12.5% of utterances, the upper half of them for about twice as many."""
    if not train:
      return [None] * len(self.dims)
    first_key, second_key = jax.random.split(self.make_rng("dropout"))
    first = jax.random.uniform(first_key, (batch, 1, 1)) > FEATURE_MASK_RATE
    second = first & (jax.random.uniform(second_key, (batch, 1, 1)) > FEATURE_MASK_RATE)
    masks = []
    for dim, unmasked in zip(self.dims, self.unmasked_dims):
      channel = jnp.arange(dim)
      masks.append(jnp.where(channel < unmasked, True,
                             jnp.where(channel < unmasked + (dim - unmasked) // 2, first, second)).astype(dtype))
    return masks


class ZipformerEncoder(ZipformerStacks):
  """Zipformer (module docstring): fbank [batch, T, mel] -> [batch, ceil(((T - 7) // 2) / 2), max(dims)] at 25 Hz.

  Attributes: ZipformerStacks', and embed_channels: encoder_embed's conv channels.
  """
  embed_channels: tuple[int, int, int] = (8, 32, 128)

  @nn.compact
  def __call__(
      self, features: jax.Array, lengths: jax.Array, *, train: bool = False,
      chunk_size: attention.IntLike | None = None, num_left_chunks: attention.IntLike = -1,
      step: scaling.Step = None, return_hidden: bool = False, state: ZipformerState | None = None,
  ) -> tuple[Any, ...]:
    """Encodes padded fbank features.

    Args:
      features: [batch, T, mel], T >= 9.
      lengths: [batch] valid frames per utterance.
      train: dropout, skipping and feature masks (RNG stream "dropout"), and chunks drawn from chunk_sizes when
        causal.
      chunk_size: attention chunk in 25 Hz output frames (int or traced scalar; -1 or None: full context), so
        2 chunk_size embed frames in the stacks; needs causal=True.
      num_left_chunks: chunks of left context (-1: all).
      step: the training step for icefall's schedules; given, the Balancers, Whitens and parameter limits shape
        the gradients (their draws use the "dropout" stream, train or not); None: exact gradients.
      return_hidden: also return each stack's layers' output.
      state: a streaming step (use `step`): features is one chunk's window and the result gains the new state.

    Returns:
      (x [batch, T', d_model] with padding frames zeroed, lengths' [batch]), T' = ceil(((T - 7) // 2) / 2); with
      return_hidden, a third entry: per stack [batch, ceil(T_embed / factor_i), dims[i]] (padding not zeroed); with
      state, (x, lengths', new state).
    """
    if state is None:
      chunk_size, num_left_chunks = self._chunking(train, chunk_size, num_left_chunks, OUTPUT_FACTOR)
    window_start = None if state is None else OUTPUT_FACTOR * state.offset - CONVNEXT_CONTEXT
    x, lengths = ConvEmbed(self.dims[0], tuple(self.embed_channels), name="encoder_embed", dtype=self.dtype,
                           param_dtype=self.param_dtype)(features.astype(self.dtype or features.dtype), lengths,
                                                         train=train, step=step, window_start=window_start)
    if state is None:
      x, lengths, _, hidden = self.encode_stacks(x, lengths, chunk_size, num_left_chunks, train=train, step=step,
                                                 output_factor=OUTPUT_FACTOR)
      return (x, lengths, hidden) if return_hidden else (x, lengths)
    x, lengths, _, _, stacks = self.encode_stacks(x, lengths, x.shape[1], -1, train=False, step=None,
                                                  output_factor=OUTPUT_FACTOR, states=state.stacks)
    return x, lengths, state.replace(offset=state.offset + x.shape[1], stacks=stacks)

  # The streaming API (speechfuse.nn.streaming): chunks of chunk_size output frames, equal to the forward's chunk mask.

  def chunk_window(self, chunk_size: int) -> streaming.ChunkWindow:
    """The fbank frames `step` reads for chunks of `chunk_size` output frames: the chunk's 2 chunk_size embed frames
    and CONVNEXT_CONTEXT either side, fbank frames [4 c chunk_size - 6, 4 (c + 1) chunk_size + 13) for chunk c."""
    embed = OUTPUT_FACTOR * chunk_size
    history = 2 * CONVNEXT_CONTEXT
    lookahead = 2 * CONVNEXT_CONTEXT + 7  # the ConvNeXt's embed frames after the chunk, and one embed frame's reach
    return streaming.ChunkWindow(history + 2 * embed + lookahead, 2 * embed, lookahead, history=history,
                                 output_frames=output_lengths)

  def init_state(self, batch_size: int, chunk_size: int, num_left_chunks: int, max_frames: int) -> ZipformerState:
    """The state before a stream's first chunk (no parameters needed): zero caches for chunks of `chunk_size` output
    frames with `num_left_chunks` chunks of left context (-1: up to `max_frames` output frames).

    Raises:
      ValueError: symmetric convolutions (causal=False), which look past the chunk, or a chunk that is not a whole
        number of frames in every stack.
    """
    if not self.causal:
      raise ValueError("streaming needs a ZipformerEncoder with causal=True: its symmetric convolutions look "
                       f"{max(self.conv_kernels) // 2} frames past any chunk")
    self.check_chunk(chunk_size, OUTPUT_FACTOR)
    embed = OUTPUT_FACTOR * chunk_size
    dtype = self.dtype or jnp.float32
    stacks = []
    for i, factor in enumerate(self.downsampling_factors):
      stack_chunk = embed // factor
      cached = streaming.cache_frames(stack_chunk, num_left_chunks, -(-OUTPUT_FACTOR * max_frames // factor))
      zeros = lambda *shape: jnp.zeros((batch_size, *shape), dtype)
      dim, heads = self.dims[i], self.num_heads[i]
      cache = LayerCache(zeros(cached, heads, self.query_head_dim), zeros(cached, dim * 3 // 4),
                         zeros(cached, heads, self.value_head_dim), zeros(cached, heads, self.value_head_dim),
                         zeros(self.conv_kernels[i] // 2, dim), zeros(self.conv_kernels[i] // 2, dim))
      stacks.append(StackState(jnp.zeros((), jnp.int32), (cache,) * self.num_layers[i]))
    return ZipformerState(jnp.zeros((), jnp.int32), tuple(stacks))

  def step(self, features: jax.Array, lengths: jax.Array,
           state: ZipformerState) -> tuple[jax.Array, jax.Array, ZipformerState]:
    """One chunk: its window features [batch, chunk_window(C).frames, mel] with `lengths` [batch] valid frames ->
    (x [batch, C, d_model] with invalid frames zeroed, valid frames [batch], the state after the chunk);
    evaluation mode."""
    return self(features, lengths, state=state)
