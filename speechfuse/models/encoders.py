"""Encoders by name: config.model.encoder.architecture -> a speechfuse.nn encoder, what it reads, where its frames sit.

Every model of speechfuse.models (CTC, transducer, SSL, ensembles) builds its encoder here, so any of them hosts
any registered encoder: `make_encoder(config.model.encoder, dtype)`. An entry says

  module          the flax encoder class; the config's other keys are its attributes (checked by name)
  inputs          the front end it reads (models.acoustic.FRONTENDS): "fbank" (log-mel frames) or "waveform"
  default_config  size -> its attributes for that size ("smoke", "tiny", "base", "large")
  grid            (encoder config, sample rate) -> where its output frames sit on the waveform (frame labels)

An encoder module is called as `encoder(inputs, lengths, *, train, chunk_size, num_left_chunks)` -> (x [batch,
frames', d_model], lengths' [batch], ...). Encoders whose class has `step` / `init_state` stream
(speechfuse.nn.streaming); `streams` says whether a config's encoder does. Masked-prediction pre-training
(models.ssl) of an fbank encoder also passes `frame_mask` [batch, frames'] and `mask_embedding` [d_model] and reads
its `subsampling` / `subsampling_factor` to draw the mask. The Zipformer's call also takes the training step
(`step`: icefall's schedules, Balancer and Whiten); "zipformer_waveform" is k2SSL's variant on wav2vec 2.0's
extractor, called as the wav2vec2 encoder is. New architectures (Emformer, a video ViT) add themselves with
`register`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import ml_collections

from speechfuse import nn as sf_nn
from speechfuse.audio import frames
from speechfuse.nn import subsampling, wav2vec2, zipformer, zipformer_waveform

# Module fields that are not encoder attributes a config sets.
_NOT_CONFIG = ("parent", "name", "dtype", "param_dtype")


@dataclasses.dataclass(frozen=True)
class EncoderType:
  """How to build one encoder architecture (module docstring)."""
  module: type[nn.Module]
  inputs: str
  default_config: Callable[[str], ml_collections.ConfigDict]
  grid: Callable[[ml_collections.ConfigDict, int], frames.FrameGrid]

  def keys(self) -> tuple[str, ...]:
    """The attributes a config may set: the module's dataclass fields."""
    return tuple(f.name for f in dataclasses.fields(self.module) if f.name not in _NOT_CONFIG)

  def takes(self, argument: str) -> bool:
    """Whether the encoder's call takes `argument` (e.g. "frame_mask": masked-prediction pre-training)."""
    return call_takes(self.module, argument)


def call_takes(module: type[nn.Module], argument: str) -> bool:
  """Whether calling an encoder of class `module` takes the keyword `argument`."""
  return argument in inspect.signature(module.__call__).parameters


def _fbank_encoder_config(architecture: str) -> Callable[[str], ml_collections.ConfigDict]:
  """Every attribute of the Conformer / Transformer encoder of a size (speechfuse.nn.encoder_size)."""

  def default(size: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(sf_nn.encoder_size(size, architecture))
    config.subsampling = "conv2d"  # "conv2d" (x4/6/8) or "conv1d" (x2/4)
    config.subsampling_factor = 4  # 40 ms output frames, as WeNet / ESPnet Conformer-CTC
    config.subsampling_channels = ml_collections.config_dict.placeholder(int)  # None: d_model
    config.dropout_rate = 0.1
    config.attention_dropout_rate = 0.0
    # Dynamic chunk training (WeNet / UFO2): one model for offline and streaming decoding.
    config.dynamic_chunk_training = False
    config.full_context_prob = 0.5  # share of batches trained with full context
    config.max_chunk_size = 25  # chunks drawn from [1, 25] encoder frames otherwise
    config.dynamic_left_chunks = False  # also draw a limited left context
    config.remat = False  # rematerialise blocks in the backward pass (less memory)
    if architecture == "conformer":
      config.conv_norm = "batch_norm"  # conv module norm: "batch_norm" or "layer_norm"
      # The depthwise conv's view of time: "symmetric" (offline only: looks (kernel - 1) / 2 frames ahead in every
      # block), "causal" or "chunk" (symmetric but never past its chunk under a chunk mask): those two stream.
      config.conv_context = "symmetric"
    else:
      config.pre_norm = True
      config.positions = "absolute"  # "absolute" or "relative"
      config.ffn_activation = "relu"
    return config

  return default


def _wav2vec2_config(size: str) -> ml_collections.ConfigDict:
  """Wav2Vec2Encoder attributes by size: smoke for tests, tiny / base from nn.wav2vec2, large as HuBERT large."""
  if size == "smoke":
    sizes = dict(num_blocks=2, d_model=64, num_heads=2, ffn_dim=256, extractor_channels=32, pos_conv_kernel=16)
  elif size == "large":
    sizes = dict(num_blocks=24, d_model=1024, num_heads=16, ffn_dim=4096, extractor_channels=512,
                 extractor_mode="layer_norm", pre_norm=True)
  else:
    sizes = wav2vec2.wav2vec2_size(size)
  return ml_collections.ConfigDict(sizes)


def _zipformer_config(size: str) -> ml_collections.ConfigDict:
  """Every attribute of ZipformerEncoder at `size` (speechfuse.nn.zipformer's table: smoke, tiny, base, large)."""
  config = ml_collections.ConfigDict(zipformer.zipformer_size(size))
  config.causal = False  # chunk-causal convolutions: needed for chunk_size (streaming-style training and decoding)
  config.chunk_sizes = (16, 32, 64, -1)  # with causal, training draws a chunk (50 Hz frames; -1 = full) per batch
  config.left_context_frames = (64, 128, 256, -1)  # ... and a left context, as icefall's recipe
  config.warmup_steps = 4000.0  # icefall's warmup_batches: the stacks' layer skipping decays over these steps
  return config


def _zipformer_waveform_config(size: str) -> ml_collections.ConfigDict:
  """Every attribute of the waveform Zipformer at `size` (nn.zipformer_waveform: the stacks of nn.zipformer's size,
  wav2vec 2.0's extractor)."""
  config = ml_collections.ConfigDict(zipformer_waveform.zipformer_waveform_size(size))
  config.output_factor = 1  # 50 Hz output: k2SSL's label rate
  config.warmup_steps = 4000.0
  return config


def _fbank_grid(config: ml_collections.ConfigDict, sample_rate: int) -> frames.FrameGrid:
  return subsampling.fbank_grid(sample_rate, config.subsampling, config.subsampling_factor)


ENCODERS: dict[str, EncoderType] = {
    "conformer": EncoderType(sf_nn.ConformerEncoder, "fbank", _fbank_encoder_config("conformer"), _fbank_grid),
    "transformer": EncoderType(sf_nn.TransformerEncoder, "fbank", _fbank_encoder_config("transformer"),
                               _fbank_grid),
    "wav2vec2": EncoderType(sf_nn.Wav2Vec2Encoder, "waveform", _wav2vec2_config,
                            lambda config, sample_rate: wav2vec2.wav2vec2_grid(sample_rate)),
    "zipformer": EncoderType(sf_nn.ZipformerEncoder, "fbank", _zipformer_config,
                             lambda config, sample_rate: zipformer.zipformer_grid(sample_rate)),
    "zipformer_waveform": EncoderType(
        zipformer_waveform.ZipformerWaveformEncoder, "waveform", _zipformer_waveform_config,
        lambda config, sample_rate: zipformer_waveform.zipformer_waveform_grid(sample_rate, config.output_factor)),
}


def register(name: str, encoder_type: EncoderType) -> None:
  """Adds an encoder architecture under `name` (refuses to replace one)."""
  if name in ENCODERS:
    raise ValueError(f"an encoder named {name!r} is registered already")
  ENCODERS[name] = encoder_type


def encoder_type(architecture: str) -> EncoderType:
  if architecture not in ENCODERS:
    raise ValueError(f"config.model.encoder.architecture={architecture!r} is unknown; choose from {sorted(ENCODERS)}")
  return ENCODERS[architecture]


def default_config(architecture: str = "conformer", size: str = "tiny") -> ml_collections.ConfigDict:
  """config.model.encoder: the architecture and every attribute of its encoder at `size`."""
  config = encoder_type(architecture).default_config(size)
  config.architecture = architecture
  return config


def make_encoder(config: ml_collections.ConfigDict, dtype: Any) -> nn.Module:
  """The encoder of config (model.encoder); an unknown architecture or key raises a ValueError naming it."""
  entry = encoder_type(config.architecture)
  kwargs = {key: value for key, value in config.items() if key != "architecture"}
  unknown = sorted(set(kwargs) - set(entry.keys()))
  if unknown:
    raise ValueError(f"config.model.encoder has keys {unknown} that a {config.architecture} encoder does not take")
  return entry.module(**kwargs, dtype=dtype)


def frame_grid(config: ml_collections.ConfigDict, sample_rate: int) -> frames.FrameGrid:
  """Where the output frames of the encoder of config (model.encoder) sit on the waveform."""
  return encoder_type(config.architecture).grid(config, sample_rate)


def inputs(config: ml_collections.ConfigDict) -> str:
  """The front end the encoder of config (model.encoder) reads: "fbank" or "waveform"."""
  return encoder_type(config.architecture).inputs


def streams(config: ml_collections.ConfigDict) -> bool:
  """Whether the encoder of config (model.encoder) has a streaming step (a Conformer only if its conv does not look
  past the chunk, a Zipformer only if causal)."""
  module = encoder_type(config.architecture).module
  if not hasattr(module, "step"):
    return False
  return config.conv_context != "symmetric" if "conv_context" in config else config.get("causal", True)
