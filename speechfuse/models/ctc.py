"""Encoder + CTC head: waveform -> fbank + CMVN -> SpecAugment (training) -> Conformer / Transformer -> log-probs.

Parameter tree: encoder/... (speechfuse.nn's ConformerEncoder or TransformerEncoder tree) and
ctc_head/{kernel [embed, vocab], bias [vocab]}; the front end and SpecAugment have none. With a Conformer
using BatchNorm, batch_stats hold encoder/blocks_{i}/conv/norm/{mean, var}.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from speechfuse import audio as audio_lib
from speechfuse.models import acoustic
from speechfuse.nn import attention, layers


def default_config(architecture: str = "conformer", size: str = "tiny") -> ml_collections.ConfigDict:
  """config.model for name="ctc"; the vocabulary size comes from the task's tokenizer."""
  return ml_collections.ConfigDict({
      "name": "ctc",
      "frontend": acoustic.default_frontend_config(),
      "spec_augment": acoustic.default_spec_augment_config(),
      "encoder": acoustic.default_encoder_config(architecture, size),
  })


def ctc_head(vocab_size: int, dtype: Any, name: str = "ctc_head") -> nn.Dense:
  """Dense embed -> vocab: kernel [embed, vocab], bias [vocab] (logical axes "embed", "vocab")."""
  return nn.Dense(vocab_size, dtype=dtype, kernel_init=layers.kernel_init(("embed", "vocab")),
                  bias_init=layers.bias_init(("vocab",)), name=name)


class CTCModel(nn.Module):
  """Acoustic encoder with a CTC output layer.

  Attributes:
    frontend: speechfuse.audio.LogMelFrontend with global CMVN (acoustic.make_frontend).
    spec_augment: acoustic.SpecAugment.
    encoder: a speechfuse.nn encoder (acoustic.make_encoder).
    vocab_size: output tokens, blank (id 0) included.
    dtype: compute dtype of the head; log-probs are float32.
  """
  frontend: nn.Module
  spec_augment: nn.Module
  encoder: nn.Module
  vocab_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, audio: jax.Array, audio_lengths: jax.Array, *, train: bool = False,
               chunk_size: attention.IntLike | None = None,
               num_left_chunks: attention.IntLike = -1) -> tuple[jax.Array, jax.Array]:
    """audio: int16 [batch, samples], audio_lengths: [batch] -> (log_probs [batch, T, vocab] float32, lengths [batch]).

    chunk_size / num_left_chunks restrict attention to chunks of encoder frames (the online mode); with
    train=True apply with rngs for acoustic.RNG_STREAMS and mutable=["batch_stats"] if the encoder has BatchNorm.
    """
    x, lengths = acoustic.encode(self, audio, audio_lengths, train=train, chunk_size=chunk_size,
                                 num_left_chunks=num_left_chunks)
    logits = ctc_head(self.vocab_size, self.dtype)(x)
    logits = nn.with_logical_constraint(logits, ("batch", "time", "vocab"))
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), lengths


def from_config(config: ml_collections.ConfigDict, dtype: Any, *, vocab_size: int,
                cmvn: audio_lib.CMVNStats) -> CTCModel:
  """CTCModel of config.model (default_config()), for a tokenizer of `vocab_size` ids and features `cmvn`."""
  return CTCModel(frontend=acoustic.make_frontend(config.frontend, cmvn),
                  spec_augment=acoustic.make_spec_augment(config.spec_augment),
                  encoder=acoustic.make_encoder(config.encoder, dtype), vocab_size=vocab_size, dtype=dtype)
