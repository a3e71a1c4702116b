"""Transducer (RNN-T) with pruned-loss training, in icefall's pruned_transducer_stateless layout.

  encoder_out [B, T, E] = encoder(SpecAugment(front end(audio)))                 (as models/ctc.py)
  predictor_out [B, U+1, P] = predictor([blank] + labels)                         (stateless or LSTM)
  simple loss: am = simple_am_proj(encoder_out) [B, T, V], lm = simple_lm_proj(predictor_out) [B, U+1, V]
  joiner: output(tanh(joiner/encoder_proj(enc) + joiner/decoder_proj(pred)))      (additive, on pruned cells)
  optional auxiliary CTC: ctc_head(encoder_out) [B, T, V]

The stateless predictor (Ghodsi et al. 2020; icefall's Decoder) embeds the last `context_size` tokens and mixes
them with a grouped 1-D convolution (4 channels per group, no bias) and a ReLU; the LSTM predictor runs an LSTM
over the embedded history. Both expose `step(state, tokens) -> (out, state)` for decoding.

Parameter tree: encoder/...; predictor/embedding/embedding [vocab, P], predictor/conv/kernel [context, 4, P]
(stateless) or predictor/lstm/... (LSTM); joiner/{encoder_proj [E, J], decoder_proj [P, J], output [J, V]};
simple_am_proj [E, V], simple_lm_proj [P, V]; ctc_head [E, V] when enabled.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from speechfuse import audio as audio_lib
from speechfuse.losses import ctc_loss, pruned_rnnt_loss
from speechfuse.models import acoustic, ctc, encoders
from speechfuse.nn import layers

PREDICTORS = ("stateless", "lstm")


def default_config(architecture: str = "conformer", size: str = "tiny") -> ml_collections.ConfigDict:
  """config.model for name="transducer"; the vocabulary size comes from the task's tokenizer."""
  return ml_collections.ConfigDict({
      "name": "transducer",
      "frontend": acoustic.default_frontend_config(),
      "spec_augment": acoustic.default_spec_augment_config(),
      "encoder": encoders.default_config(architecture, size),
      "predictor": "stateless",  # "stateless" (icefall) or "lstm"
      "predictor_dim": 256,  # P: embedding and predictor output width
      "context_size": 2,  # stateless: tokens of history (2 = bigram, icefall's default)
      "joiner_dim": 256,  # J: the joiner's hidden width
      "prune_range": 5,  # s_range: lattice rows kept per frame (icefall: 5)
      "lm_scale": 0.25,  # LM-only smoothing of the simple loss (icefall: 0.25)
      "am_scale": 0.0,  # AM-only smoothing of the simple loss (icefall: 0.0)
      "ctc_head": False,  # auxiliary CTC head on the encoder output
  })


def _dense(features: int, axes: tuple[str | None, str | None], dtype: Any, name: str, use_bias: bool = True):
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=layers.kernel_init(axes),
                  bias_init=layers.bias_init(axes[1:]), name=name)


class StatelessPredictor(nn.Module):
  """Embedding of the last `context_size` tokens -> grouped Conv1d over them -> ReLU (icefall's Decoder).

  Attributes:
    vocab_size: token ids (blank 0 included; blank embeds as a learned vector like any token).
    dim: embedding and output width P (a multiple of 4: the conv has P / 4 groups of 4 channels).
    context_size: tokens of history; 1 means embedding only.
  """
  vocab_size: int
  dim: int
  context_size: int = 2
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = nn.Embed(self.vocab_size, self.dim, dtype=self.dtype,
                              embedding_init=layers.logical(nn.initializers.normal(1.0), ("vocab", "embed")))
    if self.context_size > 1:
      self.conv = nn.Conv(self.dim, (self.context_size,), padding="VALID", feature_group_count=self.dim // 4,
                          use_bias=False, dtype=self.dtype,
                          kernel_init=layers.kernel_init((None, None, "embed"), input_axes=2))

  def __call__(self, tokens: jax.Array, *, pad: bool = True) -> jax.Array:
    """tokens: int [B, N] -> [B, N, P]; output n sees tokens n - context_size + 1 .. n.

    pad=True left-pads with context_size - 1 zero embeddings (training on [blank] + labels); pad=False takes
    exactly the last context_size tokens and returns [B, N - context_size + 1, P] (decoding). Negative ids stand
    for "before the utterance" and embed as zeros, as the padding does (icefall's convention).
    """
    x = self.embedding(jnp.maximum(tokens, 0)) * (tokens >= 0)[..., None]
    if self.context_size == 1:
      return x
    if pad:
      x = jnp.pad(x, ((0, 0), (self.context_size - 1, 0), (0, 0)))
    return nn.relu(self.conv(x))

  def initial_state(self, batch: int) -> jax.Array:
    """The history before any token, int32 [B, context_size] of -1 (zero embeddings, as the training padding)."""
    return jnp.full((batch, self.context_size), -1, jnp.int32)

  def step(self, state: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Appends tokens [B] to the history state [B, context_size]: (output [B, P], new state)."""
    state = jnp.concatenate([state[:, 1:], tokens[:, None].astype(state.dtype)], axis=1)
    return self(state, pad=False)[:, -1], state


class LSTMPredictor(nn.Module):
  """Embedding -> one LSTM layer of width P over the token history.

  Attributes:
    vocab_size: token ids (blank 0 included).
    dim: embedding and LSTM width P.
  """
  vocab_size: int
  dim: int
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = nn.Embed(self.vocab_size, self.dim, dtype=self.dtype,
                              embedding_init=layers.logical(nn.initializers.normal(1.0), ("vocab", "embed")))
    self.lstm = nn.OptimizedLSTMCell(self.dim, dtype=self.dtype)

  def __call__(self, tokens: jax.Array, *, pad: bool = True) -> jax.Array:
    """tokens: int [B, N] -> [B, N, P], output n after reading tokens 0..n (pad is unused: no window)."""
    del pad
    x = self.embedding(tokens)
    carry = self.initial_state(tokens.shape[0])
    scan = nn.scan(lambda cell, c, xs: cell(c, xs), variable_broadcast="params", split_rngs={"params": False},
                   in_axes=1, out_axes=1)
    _, out = scan(self.lstm, carry, x)
    return out

  def initial_state(self, batch: int) -> tuple[jax.Array, jax.Array]:
    """Zero (cell, hidden) states [B, P] each."""
    zeros = jnp.zeros((batch, self.dim), self.dtype or jnp.float32)
    return zeros, zeros

  def step(self, state: tuple[jax.Array, jax.Array], tokens: jax.Array) -> tuple[jax.Array, Any]:
    """Reads tokens [B]: (output [B, P], new state)."""
    state, out = self.lstm(state, self.embedding(tokens))
    return out, state


class Joiner(nn.Module):
  """Additive joiner: output(tanh(encoder_proj(enc) + decoder_proj(pred))).

  Attributes:
    dim: hidden width J.
    vocab_size: output tokens.
  """
  dim: int
  vocab_size: int
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder_proj = _dense(self.dim, ("embed", "mlp"), self.dtype, "encoder_proj")
    self.decoder_proj = _dense(self.dim, ("embed", "mlp"), self.dtype, "decoder_proj")
    self.output = _dense(self.vocab_size, ("mlp", "vocab"), self.dtype, "output")

  def __call__(self, encoder_proj: jax.Array, decoder_proj: jax.Array) -> jax.Array:
    """Projected inputs [..., J] each (broadcastable) -> logits [..., V] float32."""
    return self.output(jnp.tanh(encoder_proj + decoder_proj)).astype(jnp.float32)


class TransducerModel(acoustic.AcousticModel):
  """Encoder + predictor + additive joiner, trained with the pruned RNN-T loss (and optionally CTC).

  Attributes:
    frontend, spec_augment, encoder: as acoustic.AcousticModel.
    vocab_size: output tokens, blank (id 0) included.
    predictor: "stateless" or "lstm"; predictor_dim, context_size, joiner_dim: see default_config.
    prune_range, lm_scale, am_scale: pruned_rnnt_loss's s_range and simple-loss smoothing.
    use_ctc_head: add the auxiliary CTC head.
  """
  vocab_size: int = 0
  predictor: str = "stateless"
  predictor_dim: int = 256
  context_size: int = 2
  joiner_dim: int = 256
  prune_range: int = 5
  lm_scale: float = 0.25
  am_scale: float = 0.0
  use_ctc_head: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    if self.predictor == "stateless":
      self.predictor_net = StatelessPredictor(self.vocab_size, self.predictor_dim, self.context_size, self.dtype,
                                              name="predictor")
    elif self.predictor == "lstm":
      self.predictor_net = LSTMPredictor(self.vocab_size, self.predictor_dim, self.dtype, name="predictor")
    else:
      raise ValueError(f"config.model.predictor={self.predictor!r} is unknown; choose from {PREDICTORS}")
    self.joiner = Joiner(self.joiner_dim, self.vocab_size, self.dtype)
    self.simple_am_proj = _dense(self.vocab_size, ("embed", "vocab"), self.dtype, "simple_am_proj")
    self.simple_lm_proj = _dense(self.vocab_size, ("embed", "vocab"), self.dtype, "simple_lm_proj")
    if self.use_ctc_head:
      self.ctc_head = ctc.ctc_head(self.vocab_size, self.dtype)

  def ctc_log_probs(self, encoder_out: jax.Array) -> jax.Array:
    """encoder_out [B, T, E] -> auxiliary CTC log-probs [B, T, V] float32 (use_ctc_head only)."""
    return ctc.log_softmax(self.ctc_head(encoder_out))

  def project_encoder(self, encoder_out: jax.Array) -> jax.Array:
    """[..., E] -> [..., J], the joiner's encoder side (computed once per utterance when decoding)."""
    return self.joiner.encoder_proj(encoder_out)

  def predictor_initial_state(self, batch: int) -> Any:
    return self.predictor_net.initial_state(batch)

  def predictor_step(self, state: Any, tokens: jax.Array) -> tuple[jax.Array, Any]:
    """tokens [B] -> (the joiner's predictor side [B, J], new predictor state)."""
    out, state = self.predictor_net.step(state, tokens)
    return self.joiner.decoder_proj(out), state

  def join(self, encoder_proj: jax.Array, decoder_proj: jax.Array) -> jax.Array:
    """Projected encoder [..., J] and predictor [..., J] sides -> logits [..., V] float32."""
    return self.joiner(encoder_proj, decoder_proj)

  def __call__(self, audio: jax.Array, audio_lengths: jax.Array, labels: jax.Array, label_lengths: jax.Array, *,
               train: bool = False, step: jax.Array | int | None = None) -> tuple[dict[str, jax.Array], jax.Array]:
    """Per-utterance losses.

    Args:
      audio: int16 [B, S]; audio_lengths: [B].
      labels: int [B, U] (padded with blank 0); label_lengths: [B].
      train: as CTCModel (rngs for acoustic.RNG_STREAMS, mutable batch_stats).
      step: the training step (AcousticModel.encode).

    Returns:
      ({"simple": [B], "pruned": [B], and "ctc": [B] with the CTC head} float32 negative log-likelihoods,
      encoder lengths [B]).
    """
    encoder_out, lengths = self.encode(audio, audio_lengths, train=train, step=step)
    return self.losses(encoder_out, lengths, labels, label_lengths), lengths

  def losses(self, encoder_out: jax.Array, lengths: jax.Array, labels: jax.Array,
             label_lengths: jax.Array) -> dict[str, jax.Array]:
    """Per-utterance losses of an encoder output [B, T, E] with `lengths` [B] (offline or streamed): {"simple",
    "pruned", and "ctc" with the CTC head} float32 [B]."""
    history = jnp.pad(labels, ((0, 0), (1, 0)))  # [B, U+1]: blank, then the labels
    predictor_out = self.predictor_net(history)
    pruned, simple = pruned_rnnt_loss(
        self.simple_am_proj(encoder_out), self.simple_lm_proj(predictor_out), self.joiner, lengths, labels,
        label_lengths, joiner_inputs=(self.joiner.encoder_proj(encoder_out), self.joiner.decoder_proj(predictor_out)),
        s_range=self.prune_range, lm_scale=self.lm_scale, am_scale=self.am_scale)
    losses = {"simple": simple, "pruned": pruned}
    if self.use_ctc_head:
      losses["ctc"] = ctc_loss(self.ctc_log_probs(encoder_out), lengths, labels, label_lengths)
    return losses


def from_config(config: ml_collections.ConfigDict, dtype: Any, *, vocab_size: int,
                cmvn: audio_lib.CMVNStats | None) -> TransducerModel:
  """TransducerModel of config.model (default_config()), for a tokenizer of `vocab_size` ids and features `cmvn`."""
  if config.predictor == "stateless" and config.predictor_dim % 4:
    raise ValueError(f"config.model.predictor_dim={config.predictor_dim} must be a multiple of 4 (grouped conv)")
  return TransducerModel(
      frontend=acoustic.make_frontend(config, cmvn), spec_augment=acoustic.make_spec_augment(config),
      encoder=encoders.make_encoder(config.encoder, dtype), vocab_size=vocab_size, predictor=config.predictor,
      predictor_dim=config.predictor_dim, context_size=config.context_size, joiner_dim=config.joiner_dim,
      prune_range=config.prune_range, lm_scale=config.lm_scale, am_scale=config.am_scale,
      use_ctc_head=config.ctc_head, dtype=dtype)
