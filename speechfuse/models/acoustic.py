"""What every ASR model shares: waveform -> log-mel + global CMVN -> SpecAugment (training) -> encoder.

The front end runs inside the model, so feature extraction is jitted on the device with the step. The
CMVN statistics are the training data's (speechfuse.data.inputs.feature_stats), saved with the run; they
are module constants, not parameters, so fusion and averaging never touch them.

Config sections read here (each recipe writes them in full, see `default_frontend_config` and friends):
  model.frontend:     num_mel_bins, dither
  model.spec_augment: enabled and the keyword arguments of speechfuse.audio.spec_augment
  model.encoder:      architecture ("conformer" | "transformer") and that encoder's attributes
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections

from speechfuse import audio as audio_lib, nn as sf_nn
from speechfuse.nn import attention

# Encoder attributes a config may set, by architecture (sizes come from speechfuse.nn.encoder_size).
_COMMON_ENCODER_KEYS = ("num_blocks", "d_model", "num_heads", "ffn_dim", "subsampling", "subsampling_factor",
                        "subsampling_channels", "dropout_rate", "attention_dropout_rate", "dynamic_chunk_training",
                        "full_context_prob", "max_chunk_size", "dynamic_left_chunks", "remat")
ENCODER_KEYS = {
    "conformer": _COMMON_ENCODER_KEYS + ("conv_kernel", "conv_norm", "causal_conv"),
    "transformer": _COMMON_ENCODER_KEYS + ("pre_norm", "positions", "ffn_activation"),
}
SPEC_AUGMENT_KEYS = ("num_freq_masks", "max_freq_width", "num_time_masks", "time_mask_multiplicity_ratio",
                     "max_time_width_ratio")
# RNG streams a training apply needs: "dropout" (dropout and dynamic chunk sizes), "spec_augment", "dither".
RNG_STREAMS = ("dropout", "spec_augment", "dither")


def default_frontend_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "num_mel_bins": 80,  # Kaldi fbank bins (ESPnet / WeNet / icefall use 80)
      "dither": 0.0,  # Kaldi dither in int16 units, training only; 0 keeps features deterministic
  })


def default_spec_augment_config() -> ml_collections.ConfigDict:
  """SpecAugment as in speechfuse.audio.spec_augment (Gulati et al.'s Conformer recipe, adaptive time masks)."""
  return ml_collections.ConfigDict({
      "enabled": True,
      "num_freq_masks": 2,
      "max_freq_width": 27,  # bins, F in Park et al. 2019
      "num_time_masks": 10,  # at most; adaptive: floor(0.04 * frames) per utterance
      "time_mask_multiplicity_ratio": 0.04,
      "max_time_width_ratio": 0.05,  # a time mask covers at most 5% of the utterance
  })


def default_encoder_config(architecture: str = "conformer", size: str = "tiny") -> ml_collections.ConfigDict:
  """Every attribute of the `architecture` encoder, sized by speechfuse.nn.encoder_size(size)."""
  config = ml_collections.ConfigDict({"architecture": architecture, **sf_nn.encoder_size(size, architecture)})
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
    config.causal_conv = False  # causal depthwise conv, for truly streaming chunks
  else:
    config.pre_norm = True
    config.positions = "absolute"  # "absolute" or "relative"
    config.ffn_activation = "relu"
  return config


def make_encoder(config: ml_collections.ConfigDict, dtype: Any) -> nn.Module:
  """The encoder of config (model.encoder); an unknown architecture or key raises a ValueError naming it."""
  architecture = config.architecture
  if architecture not in ENCODER_KEYS:
    raise ValueError(f"config.model.encoder.architecture={architecture!r} is unknown; choose from {sorted(ENCODER_KEYS)}")
  kwargs = {key: value for key, value in config.items() if key != "architecture"}
  unknown = sorted(set(kwargs) - set(ENCODER_KEYS[architecture]))
  if unknown:
    raise ValueError(f"config.model.encoder has keys {unknown} that a {architecture} encoder does not take")
  module = sf_nn.ConformerEncoder if architecture == "conformer" else sf_nn.TransformerEncoder
  return module(**kwargs, dtype=dtype)


def make_frontend(config: ml_collections.ConfigDict, cmvn: audio_lib.CMVNStats) -> nn.Module:
  """Kaldi fbank of config (model.frontend) normalised with the training data's global statistics."""
  if cmvn.dim != config.num_mel_bins:
    raise ValueError(f"the CMVN statistics have {cmvn.dim} dims but config.model.frontend.num_mel_bins="
                     f"{config.num_mel_bins}")
  return audio_lib.LogMelFrontend(kind="fbank", num_mel_bins=config.num_mel_bins, dither=config.dither,
                              normalization="global", mean=tuple(float(x) for x in cmvn.mean()),
                              std=tuple(float(x) for x in cmvn.std()))


class SpecAugment(nn.Module):
  """SpecAugment in training (RNG stream "spec_augment"), identity otherwise; no parameters.

  Attributes: those of speechfuse.audio.spec_augment; enabled=False makes it the identity.
  """
  enabled: bool = True
  num_freq_masks: int = 2
  max_freq_width: int = 27
  num_time_masks: int = 10
  time_mask_multiplicity_ratio: float = 0.04
  max_time_width_ratio: float = 0.05

  def __call__(self, features: jax.Array, lengths: jax.Array, *, train: bool) -> jax.Array:
    """features: [batch, frames, mel] (globally normalised, so 0 is the mean), lengths: [batch] -> same shape."""
    if not (train and self.enabled):
      return features
    return audio_lib.spec_augment(
        self.make_rng("spec_augment"), features, lengths, num_freq_masks=self.num_freq_masks,
        max_freq_width=self.max_freq_width, num_time_masks=self.num_time_masks,
        time_mask_multiplicity_ratio=self.time_mask_multiplicity_ratio,
        max_time_width_ratio=self.max_time_width_ratio)


def make_spec_augment(config: ml_collections.ConfigDict) -> SpecAugment:
  return SpecAugment(enabled=config.enabled, **{key: config[key] for key in SPEC_AUGMENT_KEYS})


def encode(module: nn.Module, audio: jax.Array, audio_lengths: jax.Array, *, train: bool,
           chunk_size: attention.IntLike | None, num_left_chunks: attention.IntLike) -> tuple[jax.Array, jax.Array]:
  """Front end -> SpecAugment -> encoder of a model with submodules `frontend`, `spec_augment`, `encoder`.

  Args:
    audio: int16 (or int16-scaled float) waveforms [batch, samples], zero past audio_lengths.
    audio_lengths: [batch] valid samples.
    train: SpecAugment, dither, dropout, BatchNorm batch statistics, dynamic chunks.
    chunk_size, num_left_chunks: attention chunking for streaming evaluation (None: full context).

  Returns:
    (x [batch, frames', d_model] with padding frames zeroed, lengths' [batch]).
  """
  features, frame_lengths = module.frontend(audio, audio_lengths, deterministic=not train)
  features = module.spec_augment(features, frame_lengths, train=train)
  return module.encoder(features, frame_lengths, train=train, chunk_size=chunk_size, num_left_chunks=num_left_chunks)
