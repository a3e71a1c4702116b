"""What every model on audio shares: waveform -> front end (+ SpecAugment in training) -> encoder, offline or streaming.

The front end runs inside the model, so feature extraction is jitted on the device with the step. The encoder
(models.encoders, by name) says which front end it reads (FRONTENDS):
  "fbank"     Kaldi log-mel + the training data's global CMVN (speechfuse.data.inputs.feature_stats, saved with the
              run; module constants, not parameters, so fusion and averaging never touch them), then SpecAugment
  "waveform"  the int16 waveform scaled to [-1, 1] (wav2vec 2.0 / HuBERT; SpecAugment does not apply)

`AcousticModel` is the base of the ASR models: `encode` (offline, or chunk-masked for training and tests) and the
streaming API (speechfuse.nn.streaming) that `online_encode` drives chunk by chunk (speechfuse.decoding's
stream_encode), with `latency_ms` saying how long a chunk's outputs wait for audio.

Config sections read here (each recipe writes them in full, see `default_frontend_config` and friends):
  model.frontend:     num_mel_bins, dither (fbank encoders)
  model.spec_augment: enabled and the keyword arguments of speechfuse.audio.spec_augment
  model.encoder:      architecture (models.encoders.ENCODERS) and that encoder's attributes
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from speechfuse import audio as audio_lib
from speechfuse.audio import frames
from speechfuse.decoding import streaming as streaming_decoding
from speechfuse.models import encoders
from speechfuse.nn import attention, streaming

SPEC_AUGMENT_KEYS = ("num_freq_masks", "max_freq_width", "num_time_masks", "time_mask_multiplicity_ratio",
                     "max_time_width_ratio")
# RNG streams a training apply needs: "dropout" (dropout and dynamic chunk sizes), "spec_augment", "dither".
RNG_STREAMS = ("dropout", "spec_augment", "dither")
FRAME_LENGTH_MS, FRAME_SHIFT_MS = frames.KALDI_FRAME_LENGTH_MS, frames.KALDI_FRAME_SHIFT_MS  # fbank's frames


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


def needs_cmvn(config: ml_collections.ConfigDict) -> bool:
  """Whether the model of config (model) reads normalised fbank features, i.e. needs the run's CMVN statistics."""
  return encoders.inputs(config.encoder) == "fbank"


class WaveformFrontend(nn.Module):
  """int16-scale waveforms -> floats in [-1, 1], the waveform encoders' input; no parameters."""

  def __call__(self, audio: jax.Array, lengths: jax.Array, *, deterministic: bool = True):
    """audio [batch, samples], lengths [batch] -> (waveform [batch, samples] float32, lengths)."""
    del deterministic
    return audio.astype(jnp.float32) / 32768.0, lengths


def _fbank_frontend(config: ml_collections.ConfigDict, cmvn: audio_lib.CMVNStats | None) -> nn.Module:
  """Kaldi fbank of config (model.frontend) normalised with the training data's global statistics `cmvn`."""
  frontend = config.frontend
  if cmvn is None:
    raise ValueError(f"the {config.encoder.architecture} encoder reads fbank features, which need CMVN statistics")
  if cmvn.dim != frontend.num_mel_bins:
    raise ValueError(f"the CMVN statistics have {cmvn.dim} dims but config.model.frontend.num_mel_bins="
                     f"{frontend.num_mel_bins}")
  return audio_lib.LogMelFrontend(kind="fbank", num_mel_bins=frontend.num_mel_bins, dither=frontend.dither,
                                  frame_length_ms=FRAME_LENGTH_MS, frame_shift_ms=FRAME_SHIFT_MS,
                                  normalization="global", mean=tuple(float(x) for x in cmvn.mean()),
                                  std=tuple(float(x) for x in cmvn.std()))


# Front ends by name (what an encoder type's `inputs` names): (config.model, CMVN statistics) -> flax module.
FRONTENDS: dict[str, Callable[[ml_collections.ConfigDict, audio_lib.CMVNStats | None], nn.Module]] = {
    "fbank": _fbank_frontend,
    "waveform": lambda config, cmvn: WaveformFrontend(),
}


def make_frontend(config: ml_collections.ConfigDict, cmvn: audio_lib.CMVNStats | None) -> nn.Module:
  """The front end the encoder of config (model) reads (FRONTENDS[encoders.inputs(config.encoder)])."""
  return FRONTENDS[encoders.inputs(config.encoder)](config, cmvn)


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
  """SpecAugment of config (model.spec_augment) for the model's encoder; only fbank encoders take it."""
  augment = config.spec_augment
  if augment.enabled and encoders.inputs(config.encoder) != "fbank":
    raise ValueError(f"config.model.spec_augment.enabled=True: SpecAugment masks fbank frames, and the "
                     f"{config.encoder.architecture} encoder reads the waveform; set it to False")
  return SpecAugment(enabled=augment.enabled, **{key: augment[key] for key in SPEC_AUGMENT_KEYS})


class AcousticModel(nn.Module):
  """Front end -> SpecAugment (training) -> encoder, the base of the ASR models; subclasses add their heads.

  Attributes:
    frontend: make_frontend's module.
    spec_augment: SpecAugment (the identity outside training).
    encoder: models.encoders.make_encoder's module.
  """
  frontend: nn.Module
  spec_augment: nn.Module
  encoder: nn.Module

  def features(self, audio: jax.Array, audio_lengths: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """audio: int16 [batch, samples], audio_lengths: [batch] -> (the encoder's input [batch, frames, ...], lengths).

    Fbank frames are computed frame by frame (snip_edges, no utterance-level normalisation), so computing them
    for a whole utterance gives the frames a stream computes as its audio arrives.
    """
    features, frame_lengths = self.frontend(audio, audio_lengths, deterministic=not train)
    return self.spec_augment(features, frame_lengths, train=train), frame_lengths

  def encode(self, audio: jax.Array, audio_lengths: jax.Array, *, train: bool = False,
             chunk_size: attention.IntLike | None = None, num_left_chunks: attention.IntLike = -1,
             step: jax.Array | int | None = None) -> tuple[jax.Array, jax.Array]:
    """audio int16 [batch, samples], audio_lengths [batch] -> (x [batch, frames', d_model] with padding zeroed,
    lengths' [batch]).

    train: SpecAugment, dither, dropout, BatchNorm batch statistics, dynamic chunks. chunk_size / num_left_chunks:
    the chunk attention mask (None: full context) for training and tests; streaming evaluation goes through
    `online_encode`, which feeds the encoder chunk by chunk. step: the training step, for encoders whose call
    takes one (the Zipformer's scheduled Balancer / Whiten); None at evaluation.
    """
    features, frame_lengths = self.features(audio, audio_lengths, train=train)
    scheduled = {"step": step} if step is not None and encoders.call_takes(type(self.encoder), "step") else {}
    return self.encoder(features, frame_lengths, train=train, chunk_size=chunk_size,
                        num_left_chunks=num_left_chunks, **scheduled)[:2]

  # The streaming API (speechfuse.nn.streaming), on the encoder's step.

  def chunk_window(self, chunk_size: int) -> streaming.ChunkWindow:
    return self.encoder.chunk_window(chunk_size)

  def init_stream(self, batch_size: int, chunk_size: int, num_left_chunks: int, max_frames: int) -> Any:
    return self.encoder.init_state(batch_size, chunk_size, num_left_chunks, max_frames)

  def stream_step(self, features: jax.Array, lengths: jax.Array, state: Any) -> tuple[jax.Array, jax.Array, Any]:
    """One chunk's window of features [batch, window, ...] with `lengths` valid frames -> (x [batch, chunk, D],
    valid frames [batch], state)."""
    return self.encoder.step(features, lengths, state)


def online_encode(model: AcousticModel, variables: Any, audio: jax.Array, audio_lengths: jax.Array, *,
                  chunk_size: int, num_left_chunks: int) -> tuple[jax.Array, jax.Array]:
  """The model's encoder output as a deployed streaming model computes it: front end, then one encoder step per
  chunk of `chunk_size` encoder frames with `num_left_chunks` chunks of left context (-1: all); jit-able.

  Returns:
    (x [batch, frames', D], lengths' [batch]), equal to model.encode with the same chunk mask.

  Raises:
    ValueError: the encoder does not stream (a symmetric convolution, a waveform encoder).
  """
  features, lengths = model.apply(variables, audio, audio_lengths, method="features")
  window = model.chunk_window(chunk_size)
  frames, _ = streaming_decoding.chunk_count(features.shape[1], window, chunk_size)
  state = model.init_stream(features.shape[0], chunk_size, num_left_chunks, max(frames, 1))
  step = lambda chunk, chunk_lengths, state: model.apply(variables, chunk, chunk_lengths, state,
                                                         method="stream_step")
  return streaming_decoding.stream_encode(step, state, features, lengths, window, chunk_size)


def latency_ms(config: ml_collections.ConfigDict, chunk_size: int) -> tuple[float, float]:
  """(chunk, look-ahead) in ms of the streaming model of config (model): a chunk of `chunk_size` encoder frames
  spans chunk ms of audio, and its last output also reads the look-ahead past it (the subsampling's right context
  and the last fbank window's overhang)."""
  encoder = config.encoder
  if not encoders.streams(encoder):
    raise ValueError(f"the {encoder.architecture} encoder does not stream"
                     + (f" (config.model.encoder.conv_context={encoder.conv_context!r})" if "conv_context" in encoder
                        else ""))
  window = encoders.make_encoder(encoder, None).chunk_window(chunk_size)
  return window.stride * FRAME_SHIFT_MS, window.lookahead * FRAME_SHIFT_MS + FRAME_LENGTH_MS - FRAME_SHIFT_MS
