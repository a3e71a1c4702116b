"""SSL pre-training model over a registered encoder (models.encoders): masked prediction of frame targets (HuBERT,
WavLM; k2SSL's CE variant) or wav2vec 2.0's contrastive task against quantized features.

Data flow, audio int16 [B, S] -> encoder frames [B, T, d_model] -> head:
  fbank encoders (the Conformer): fbank + CMVN -> SpecAugment (off in the recipes) -> encoder, whose subsampled
               frames under the span mask are replaced by `mask_embedding` [d_model] (the `frame_mask` hook).
  waveform encoders (wav2vec2): waveform / 32768 -> Wav2Vec2Encoder(mask=...), with its own mask_embedding.
  head "hubert": final_proj Dense d_model -> final_dim, and label_embeddings [C, final_dim] (fairseq's
               label_embs_concat), scored by cosine similarity in losses.masked_prediction.hubert_loss.
  head "ce":     ce_head Dense d_model -> C (k2SSL), scored by losses.masked_prediction.ce_loss.
  head "wav2vec2" (waveform encoders): quantizer (nn.quantizer.GumbelVectorQuantizer) of the unmasked normalised
               conv features -> project_q Dense -> final_dim targets; final_proj Dense d_model -> final_dim of the
               context; scored by losses.contrastive against distractors the task samples.

Parameter tree: encoder/... is exactly the tree of the same encoder inside the ASR models (models.ctc with
the same model.encoder config), so a pre-trained encoder loads into them by name; mask_embedding (fbank
encoders), final_proj / label_embeddings, ce_head or quantizer / project_q / final_proj are the pre-training
head, dropped at fine-tuning.

The span mask (nn.masking.compute_mask) is drawn from an explicit key: training passes a fresh one per step,
evaluation a fixed one, so dev metrics are comparable between evaluations.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from speechfuse import audio as audio_lib
from speechfuse.models import acoustic, encoders
from speechfuse.nn import attention, layers, masking, quantizer, subsampling, wav2vec2

HEADS = ("hubert", "ce", "wav2vec2")


def default_config(backbone: str = "conformer", size: str = "tiny") -> ml_collections.ConfigDict:
  """config.model for name="ssl" over the encoder `backbone` (models.encoders: an fbank encoder whose output
  frames the span mask replaces, or the wav2vec2 waveform encoder with its own mask embedding); the class count
  and the head come from the task (its targets and its loss)."""
  config = ml_collections.ConfigDict({"name": "ssl", "final_dim": 256})
  # The wav2vec2 head's product quantizer (wav2vec 2.0 base: 2 groups x 320 entries, 256 wide).
  config.quantizer = ml_collections.ConfigDict({"num_groups": 2, "num_vars": 320, "codevector_dim": 256})
  config.mask = ml_collections.ConfigDict({
      "mask_prob": 0.8,  # HuBERT (icefall / k2SSL: 0.65)
      "mask_length": 10,  # frames per span
      "min_masks": 2,
  })
  config.encoder = encoders.default_config(backbone, size)
  if encoders.inputs(config.encoder) == "fbank":
    config.frontend = acoustic.default_frontend_config()
    config.spec_augment = acoustic.default_spec_augment_config()
    config.spec_augment.enabled = False  # the span mask is the corruption; HuBERT pre-trains without SpecAugment
  else:
    config.encoder.feature_grad_mult = 0.1  # fairseq HuBERT base
  return config


class SSLOutput(NamedTuple):
  """What SSLModel returns.

  head: float [B, T, final_dim] (hubert, wav2vec2: projected frames) or [B, T, C] (ce: logits before the
    temperature).
  label_embeddings: [C, final_dim] (hubert) or None.
  frame_mask: bool [B, T], True on masked frames.
  lengths: [B] valid encoder frames.
  features: [B, T, channels] the convolutional features (wav2vec2, for the feature penalty) or None.
  quantized: [B, T, final_dim] the projected quantized targets (head wav2vec2) or None.
  perplexity: the quantizer's codebook perplexity over masked frames, a scalar (head wav2vec2) or None.
  """

  head: jax.Array
  label_embeddings: jax.Array | None
  frame_mask: jax.Array
  lengths: jax.Array
  features: jax.Array | None
  quantized: jax.Array | None = None
  perplexity: jax.Array | None = None


class SSLModel(nn.Module):
  """Encoder with span masking at its input and a masked-prediction head.

  Attributes:
    backbone: "fbank" (an fbank encoder: needs frontend and spec_augment; its subsampled frames are masked) or
      "waveform" (the wav2vec2 encoder, which masks its own projected features).
    encoder: the models.encoders encoder.
    num_classes: C, the k-means clusters of the targets.
    head: "hubert", "ce" or "wav2vec2" (waveform encoders only).
    final_dim: the projection width of the hubert and wav2vec2 heads.
    num_groups, num_vars, codevector_dim: the wav2vec2 head's quantizer.
    mask_prob, mask_length, min_masks: nn.masking.compute_mask.
    frontend, spec_augment: the Conformer's front end (as models.ctc).
    dtype: compute dtype of the head.
  """
  backbone: str
  encoder: nn.Module
  num_classes: int
  head: str = "hubert"
  final_dim: int = 256
  num_groups: int = 2
  num_vars: int = 320
  codevector_dim: int = 256
  mask_prob: float = 0.8
  mask_length: int = 10
  min_masks: int = 2
  frontend: nn.Module | None = None
  spec_augment: nn.Module | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, audio: jax.Array, audio_lengths: jax.Array, mask_rng: jax.Array, *,
               train: bool = False, temperature: jax.Array | float = 2.0,
               step: jax.Array | int | None = None) -> SSLOutput:
    """audio: [B, S] int16 (or floats on that scale), audio_lengths: [B], mask_rng: key of the span mask ->
    SSLOutput; temperature: the wav2vec2 head's Gumbel-softmax temperature (nn.quantizer.gumbel_temperature);
    step: the training step, for encoders whose call takes one (the Zipformer's Balancer / Whiten schedules).

    With train=True apply with rngs for acoustic.RNG_STREAMS (and mutable=["batch_stats"] for a BatchNorm Conformer).
    """
    mask = lambda lengths, time: masking.compute_mask(mask_rng, lengths, time, mask_prob=self.mask_prob,
                                                      mask_length=self.mask_length, min_masks=self.min_masks)
    scheduled = {"step": step} if step is not None and encoders.call_takes(type(self.encoder), "step") else {}
    if self.backbone == "fbank":
      features, feature_lengths = self.frontend(audio, audio_lengths, deterministic=not train)
      features = self.spec_augment(features, feature_lengths, train=train)
      kind, factor = self.encoder.subsampling, self.encoder.subsampling_factor
      frame_mask = mask(subsampling.subsampled_length(feature_lengths, kind, factor),
                        subsampling.subsampled_length(features.shape[1], kind, factor))
      embedding = self.param("mask_embedding", layers.logical(nn.initializers.uniform(1.0), ("embed",)),
                             (self.encoder.d_model,), jnp.float32)
      x, lengths = self.encoder(features, feature_lengths, train=train, frame_mask=frame_mask,
                                mask_embedding=embedding, **scheduled)
      conv_features = None
    else:
      frame_mask = mask(wav2vec2.frame_lengths(audio_lengths), wav2vec2.frame_lengths(audio.shape[1]))
      out = self.encoder(audio.astype(jnp.float32) / 32768.0, audio_lengths, mask=frame_mask, train=train,
                         **scheduled)
      x, lengths, conv_features = out.x, out.lengths, out.features
      if x.shape[1] != frame_mask.shape[1]:
        raise ValueError(f"the encoder gives {x.shape[1]} frames for {frame_mask.shape[1]} masked extractor frames: "
                         "masked prediction needs its output at the extractor's 50 Hz (zipformer_waveform: "
                         "output_factor=1)")
    if self.head == "wav2vec2":
      masked = frame_mask & attention.padding_mask(lengths, x.shape[1])
      quantized, perplexity, _ = quantizer.GumbelVectorQuantizer(
          self.num_groups, self.num_vars, self.codevector_dim, dtype=self.dtype, name="quantizer",
      )(out.normed_features, masked, temperature, train=train)
      dense = lambda name, axis: nn.Dense(
          self.final_dim, dtype=self.dtype, kernel_init=layers.kernel_init((axis, None)),
          bias_init=layers.bias_init((None,)), name=name)
      return SSLOutput(dense("final_proj", "embed")(x), None, frame_mask, lengths, conv_features,
                       dense("project_q", None)(quantized), perplexity)
    if self.head == "hubert":
      projected = nn.Dense(self.final_dim, dtype=self.dtype, kernel_init=layers.kernel_init(("embed", None)),
                           bias_init=layers.bias_init((None,)), name="final_proj")(x)
      label_embeddings = self.param("label_embeddings", layers.logical(nn.initializers.uniform(1.0), ("vocab", None)),
                                    (self.num_classes, self.final_dim), jnp.float32)
      return SSLOutput(projected, label_embeddings, frame_mask, lengths, conv_features)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=layers.kernel_init(("embed", "vocab")),
                      bias_init=layers.bias_init(("vocab",)), name="ce_head")(x)
    return SSLOutput(logits, None, frame_mask, lengths, conv_features)


  def hidden(self, audio: jax.Array, audio_lengths: jax.Array) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """Unmasked evaluation-mode layer outputs, for iteration-2 targets (ssl.targets.model_targets).

    audio: int16-scale [B, S], audio_lengths: [B] -> (hidden, lengths [B]); hidden[i] is [B, T, d_model], padding
    zero: the Conformer's block outputs (hidden[i] = block i + 1), the wav2vec2 encoder's HF-style hidden states
    (hidden[0] = the blocks' input, hidden[i] = block i).
    """
    if self.backbone == "fbank":
      features, feature_lengths = self.frontend(audio, audio_lengths)
      x, lengths, blocks = self.encoder(features, feature_lengths, return_hidden=True)
      valid = attention.padding_mask(lengths, x.shape[1])[..., None]
      return tuple(jnp.where(valid, h, 0.0) for h in blocks), lengths
    out = self.encoder(audio.astype(jnp.float32) / 32768.0, audio_lengths)
    return out.hidden, out.lengths


def from_config(config: ml_collections.ConfigDict, dtype: Any, *, num_classes: int, head: str,
                cmvn: audio_lib.CMVNStats | None = None) -> SSLModel:
  """SSLModel of config.model (default_config()) for `num_classes` targets and `head` ("hubert" or "ce"); fbank
  encoders need `cmvn`."""
  if head not in HEADS:
    raise ValueError(f"SSL head {head!r} is unknown; choose from {HEADS}")
  common = dict(num_classes=num_classes, head=head, final_dim=config.final_dim, dtype=dtype,
                **config.mask.to_dict(), **(config.quantizer.to_dict() if "quantizer" in config else {}))
  encoder = encoders.make_encoder(config.encoder, dtype)
  if encoders.inputs(config.encoder) == "waveform":
    return SSLModel("waveform", encoder, **common)
  if head == "wav2vec2":
    raise ValueError(f"the wav2vec2 head quantizes a waveform encoder's conv features; the "
                     f"{config.encoder.architecture} encoder reads fbank")
  if not encoders.encoder_type(config.encoder.architecture).takes("frame_mask"):
    raise ValueError(f"the {config.encoder.architecture} encoder takes no frame mask, so it cannot pre-train by "
                     "masked prediction")
  # Any subsampling: the targets are written on the encoder's own frame grid (models.encoders.frame_grid).
  return SSLModel("fbank", encoder, frontend=acoustic.make_frontend(config, cmvn),
                  spec_augment=acoustic.make_spec_augment(config), **common)
