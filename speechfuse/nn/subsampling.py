"""Convolutional front ends that shorten feature sequences before the encoder blocks (WeNet / icefall layout).

Every convolution is unpadded ('VALID') with ReLU, so an output frame is valid exactly when its whole receptive
field lies inside the utterance: lengths' = (lengths - kernel) // stride + 1 per layer, and frames past
lengths' may hold anything (callers mask them).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from speechfuse.audio import frames
from speechfuse.nn import layers

# (kernel, stride) per conv layer along time (and frequency for Conv2d), by subsampling factor.
CONV2D_LAYERS = {4: ((3, 2), (3, 2)), 6: ((3, 2), (5, 3)), 8: ((3, 2), (3, 2), (3, 2))}
CONV1D_LAYERS = {2: ((3, 2),), 4: ((3, 2), (3, 2))}
KINDS = ("conv2d", "conv1d")


def conv_output_length(length: jax.Array | int, kernel: int, stride: int) -> jax.Array | int:
  """Frames out of an unpadded convolution: (length - kernel) // stride + 1, never below 0."""
  if isinstance(length, int):
    return max((length - kernel) // stride + 1, 0)
  return jnp.maximum((length - kernel) // stride + 1, 0)


def subsampled_length(length: jax.Array | int, kind: str = "conv2d", factor: int = 4) -> jax.Array | int:
  """Frames after the subsampling front end `kind` with `factor` (conv2d x4: ((length - 1) // 2 - 1) // 2)."""
  for kernel, stride in conv_layers(kind, factor):
    length = conv_output_length(length, kernel, stride)
  return length


def receptive_field(kind: str, factor: int) -> tuple[int, int]:
  """(frames, stride): output frame t of subsampling `kind` x `factor` reads input frames [stride * t,
  stride * t + frames) (conv2d x4: 7 and 4; conv1d x2: 3 and 2), so T frames give (T - frames) // stride + 1."""
  field, stride = 1, 1
  for kernel, layer_stride in conv_layers(kind, factor):
    field += (kernel - 1) * stride
    stride *= layer_stride
  return field, stride


def fbank_grid(sample_rate: int = 16000, kind: str = "conv2d", factor: int = 4) -> frames.FrameGrid:
  """Where the output frames of subsampling `kind` x `factor` over Kaldi fbank frames sit on the waveform."""
  return frames.compose(frames.kaldi_grid(sample_rate), conv_layers(kind, factor), f"fbank_{kind}_x{factor}")


def conv_layers(kind: str, factor: int) -> tuple[tuple[int, int], ...]:
  """(kernel, stride) of each time-axis conv layer of subsampling `kind` with `factor`."""
  table = {"conv2d": CONV2D_LAYERS, "conv1d": CONV1D_LAYERS}
  if kind not in table:
    raise ValueError(f"unknown subsampling {kind!r}; choose from {KINDS}")
  if factor not in table[kind]:
    raise ValueError(f"{kind} subsampling supports factors {sorted(table[kind])}, got {factor}")
  return table[kind][factor]


class Conv2dSubsampling(nn.Module):
  """features [batch, time, mel] -> 2-D convs over (time, mel) with ReLU -> proj -> [batch, time', d_model].

  Parameters: conv_{i}/kernel [k, k, in, channels] and bias [channels] (in = 1 for conv_0); proj/kernel
  [channels * mel', d_model] with rows channel-major (row c * mel' + f), as PyTorch's
  `x.transpose(1, 2).view(b, t, c * f)` lays them out, and proj/bias [d_model].

  Attributes:
    d_model: output dimension.
    factor: 4 (two 3x3 stride-2 convs), 6 (3x3 stride 2, then 5x5 stride 3) or 8 (three 3x3 stride 2).
    channels: conv channels; d_model when None (WeNet, icefall).
  """

  d_model: int
  factor: int = 4
  channels: int | None = None
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """features: [batch, time, mel], lengths: [batch] -> (x [batch, time', d_model], lengths' [batch])."""
    channels = self.channels or self.d_model
    x = features[..., None]
    for i, (kernel, stride) in enumerate(conv_layers("conv2d", self.factor)):
      x = nn.Conv(
          channels, (kernel, kernel), strides=(stride, stride), padding="VALID", dtype=self.dtype,
          param_dtype=self.param_dtype,
          kernel_init=layers.kernel_init((None, None, None, "conv_channels"), input_axes=3),
          bias_init=layers.bias_init(("conv_channels",)), name=f"conv_{i}",
      )(x)
      x = nn.relu(x)
      lengths = conv_output_length(lengths, kernel, stride)
    batch, time, mel, channels = x.shape
    x = jnp.swapaxes(x, 2, 3).reshape(batch, time, channels * mel)
    x = nn.Dense(
        self.d_model, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=layers.kernel_init((None, "embed")),
        bias_init=layers.bias_init(("embed",)), name="proj",
    )(x)
    return x, lengths


class Conv1dSubsampling(nn.Module):
  """features [batch, time, mel] -> 1-D convs over time (mel as input channels) with ReLU -> proj -> d_model.

  Parameters: conv_{i}/kernel [3, in, channels], bias [channels]; proj/kernel [channels, d_model], bias [d_model].

  Attributes:
    d_model: output dimension.
    factor: 2 (one kernel-3 stride-2 conv) or 4 (two).
    channels: conv channels; d_model when None.
  """

  d_model: int
  factor: int = 4
  channels: int | None = None
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """features: [batch, time, mel], lengths: [batch] -> (x [batch, time', d_model], lengths' [batch])."""
    x = features
    for i, (kernel, stride) in enumerate(conv_layers("conv1d", self.factor)):
      x = nn.Conv(
          self.channels or self.d_model, (kernel,), strides=(stride,), padding="VALID", dtype=self.dtype,
          param_dtype=self.param_dtype, kernel_init=layers.kernel_init((None, None, "conv_channels"), input_axes=2),
          bias_init=layers.bias_init(("conv_channels",)), name=f"conv_{i}",
      )(x)
      x = nn.relu(x)
      lengths = conv_output_length(lengths, kernel, stride)
    x = nn.Dense(
        self.d_model, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=layers.kernel_init(("conv_channels", "embed")), bias_init=layers.bias_init(("embed",)),
        name="proj",
    )(x)
    return x, lengths


def make_subsampling(
    kind: str, factor: int, d_model: int, channels: int | None, dtype: layers.Dtype | None,
    param_dtype: layers.Dtype, name: str = "subsampling",
) -> nn.Module:
  """The subsampling module `kind` ("conv2d" or "conv1d"); an unknown kind or factor raises a ValueError."""
  conv_layers(kind, factor)
  module = Conv2dSubsampling if kind == "conv2d" else Conv1dSubsampling
  return module(d_model, factor, channels, dtype=dtype, param_dtype=param_dtype, name=name)
