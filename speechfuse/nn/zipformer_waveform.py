"""k2SSL's waveform Zipformer: wav2vec 2.0's convolutional feature extractor, then the Zipformer's stacks at 50 Hz.

k2SSL (Yang et al., "k2SSL: A Faster and Better Framework for Self-Supervised Speech Representation Learning",
section III) keeps HuBERT's 7-conv extractor on 16 kHz audio (one float32 GroupNorm, on the first conv) and replaces
the Transformer above it by a Zipformer whose first stack runs at the extractor's 50 Hz. Data flow, waveform
[batch, samples] in [-1, 1]:
  feature_extractor   nn.wav2vec2.ConvFeatureExtractor: [batch, frames, extractor_channels], frames =
                      nn.wav2vec2.frame_lengths(samples); padding frames zeroed.
  feature_projection  LayerNorm -> Dense to dims[0] (-> dropout): the frames the span mask replaces
                      (mask_embedding, [dims[0]]), as HuBERT masks its projected features.
  stacks_{i}          nn.zipformer.ZipformerStacks.encode_stacks on those frames (50 / 25 / 12.5 / 6.25 / 12.5 / 25 Hz
                      for icefall's factors), output max(dims) wide at 50 / output_factor Hz (output_factor 1: k2SSL's
                      50 Hz label rate; 2: the ASR Zipformer's 25 Hz, with output_downsample).
It returns nn.wav2vec2.Wav2Vec2Output, so models.ssl (masked prediction, the feature penalty on the extractor's output,
the wav2vec 2.0 quantizer on the normalised features) and the CTC / transducer models host it as they host
Wav2Vec2Encoder. There is no chunked mode: the first conv's GroupNorm spans the utterance.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from speechfuse.audio import frames
from speechfuse.nn import attention, masking, wav2vec2, zipformer
from speechfuse.nn import zipformer_scaling as scaling

# Extractor channels by size: the published 512 at base / large, narrower where tests and the CPU run it.
_EXTRACTOR_CHANNELS = {"smoke": 32, "tiny": 128, "base": 512, "large": 512}


def zipformer_waveform_size(size: str) -> dict[str, Any]:
  """Keyword arguments of ZipformerWaveformEncoder at `size`: nn.zipformer's stacks of that size (without the fbank
  encoder_embed's channels) and the extractor's channels."""
  sizes = zipformer.zipformer_size(size)
  del sizes["embed_channels"]
  return {**sizes, "extractor_channels": _EXTRACTOR_CHANNELS[size]}


def output_lengths(samples: jax.Array | int, output_factor: int) -> jax.Array | int:
  """Output frames for `samples` waveform samples: ceil(frame_lengths(samples) / output_factor)."""
  return zipformer.downsampled_lengths(wav2vec2.frame_lengths(samples), output_factor)


def zipformer_waveform_grid(sample_rate: int = 16000, output_factor: int = 1) -> frames.FrameGrid:
  """Where the output frames sit on the waveform: the extractor's 50 Hz frames (output_factor 1), or the averages of
  frames 2t and 2t + 1 (output_factor 2), ceil(frames / 2) of them."""
  grid = wav2vec2.wav2vec2_grid(sample_rate)
  if output_factor == 1:
    return grid
  grid = frames.compose(grid, ((output_factor, output_factor),), f"wav2vec2_cnn_x{output_factor}")
  return dataclasses.replace(grid, frame_count=lambda num_samples: output_lengths(num_samples, output_factor))


class ZipformerWaveformEncoder(zipformer.ZipformerStacks):
  """Waveform [batch, samples] -> Wav2Vec2Output with x [batch, ceil(frames / output_factor), max(dims)].

  Attributes: ZipformerStacks' (the stacks), and
    extractor_channels, extractor_mode, conv_bias: the ConvFeatureExtractor (k2SSL: 512, "group_norm", no bias).
    input_dropout_rate: after the feature projection (fairseq's dropout_input).
    feature_grad_mult: gradient scale into the extractor (fairseq HuBERT base 0.1).
    output_factor: 1 (50 Hz output, k2SSL's pre-training) or 2 (25 Hz, output_downsample).
  """
  extractor_channels: int = 512
  extractor_mode: str = "group_norm"
  conv_bias: bool = False
  input_dropout_rate: float = 0.0
  feature_grad_mult: float = 1.0
  output_factor: int = 1

  @nn.compact
  def __call__(
      self, waveform: jax.Array, lengths: jax.Array, *, mask: jax.Array | None = None, train: bool = False,
      chunk_size: attention.IntLike | None = None, num_left_chunks: attention.IntLike = -1,
      step: scaling.Step = None,
  ) -> wav2vec2.Wav2Vec2Output:
    """waveform: [batch, samples] floats in [-1, 1], lengths: [batch] valid samples.

    mask: [batch, frames] bool (frames = wav2vec2.frame_lengths(samples)), frames replaced by the mask embedding
    after the feature projection; None masks nothing. step: as ZipformerEncoder's (icefall's schedules, Balancer and
    Whiten). chunk_size must be None (module docstring).

    Returns:
      Wav2Vec2Output: x and lengths (module docstring), hidden = each stack's output [batch, frames, dims[i]] at
      50 Hz (padding zeroed), features = the extractor's output, normed_features = its LayerNorm (unmasked).
    """
    del num_left_chunks
    if chunk_size is not None:
      raise ValueError("the waveform Zipformer has no chunked (streaming) mode: its extractor's GroupNorm spans the "
                       "utterance")
    if self.output_factor not in (1, 2):
      raise ValueError(f"output_factor={self.output_factor} must be 1 (50 Hz) or 2 (25 Hz)")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    features, lengths = wav2vec2.ConvFeatureExtractor(
        self.extractor_channels, self.extractor_mode, self.conv_bias, name="feature_extractor", **kw,
    )(waveform.astype(self.dtype or jnp.float32), lengths)
    if self.feature_grad_mult != 1.0:
      frozen = jax.lax.stop_gradient(features)  # fairseq's GradMultiply: the value unchanged, the gradient scaled
      features = frozen + self.feature_grad_mult * (features - frozen)
    valid = attention.padding_mask(lengths, features.shape[1])[..., None]
    features = jnp.where(valid, features, 0.0)
    x, normed_features = wav2vec2.FeatureProjection(self.dims[0], self.input_dropout_rate,
                                                    name="feature_projection", **kw)(features, train=train)
    x = masking.MaskEmbedding(self.param_dtype, name="mask_embedding")(x, mask)
    x = jnp.where(valid, x, 0.0)
    x, out_lengths, stack_outputs, _ = self.encode_stacks(x, lengths, None, -1, train=train, step=step,
                                                          output_factor=self.output_factor)
    keep = lambda h: jnp.where(valid, h, 0.0)
    return wav2vec2.Wav2Vec2Output(x, out_lengths, tuple(keep(h) for h in stack_outputs), features,
                                   keep(normed_features))
