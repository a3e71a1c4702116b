"""Encoder + CTC head: waveform -> front end -> SpecAugment (training) -> any registered encoder -> log-probs.

Parameter tree: encoder/... (the tree of the models.encoders encoder of config.model.encoder) and
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
from speechfuse.models import acoustic, encoders
from speechfuse.nn import attention, layers


def default_config(architecture: str = "conformer", size: str = "tiny") -> ml_collections.ConfigDict:
  """config.model for name="ctc"; the vocabulary size comes from the task's tokenizer."""
  return ml_collections.ConfigDict({
      "name": "ctc",
      "frontend": acoustic.default_frontend_config(),
      "spec_augment": acoustic.default_spec_augment_config(),
      "encoder": encoders.default_config(architecture, size),
  })


def ctc_head(vocab_size: int, dtype: Any, name: str | None = None) -> nn.Dense:
  """Dense embed -> vocab: kernel [embed, vocab], bias [vocab] (logical axes "embed", "vocab")."""
  return nn.Dense(vocab_size, dtype=dtype, kernel_init=layers.kernel_init(("embed", "vocab")),
                  bias_init=layers.bias_init(("vocab",)), name=name)


def log_softmax(logits: jax.Array) -> jax.Array:
  """[batch, T, vocab] logits -> float32 log-probabilities (sharded along the vocabulary)."""
  logits = nn.with_logical_constraint(logits, ("batch", "time", "vocab"))
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


class CTCModel(acoustic.AcousticModel):
  """Acoustic encoder with a CTC output layer.

  Attributes:
    frontend, spec_augment, encoder: as acoustic.AcousticModel.
    vocab_size: output tokens, blank (id 0) included.
    dtype: compute dtype of the head; log-probs are float32.
  """
  vocab_size: int = 0
  dtype: Any = jnp.float32

  def setup(self):
    self.ctc_head = ctc_head(self.vocab_size, self.dtype)

  def __call__(self, audio: jax.Array, audio_lengths: jax.Array, *, train: bool = False,
               chunk_size: attention.IntLike | None = None, num_left_chunks: attention.IntLike = -1,
               step: jax.Array | int | None = None) -> tuple[jax.Array, jax.Array]:
    """audio: int16 [batch, samples], audio_lengths: [batch] -> (log_probs [batch, T, vocab] float32, lengths [batch]).

    chunk_size / num_left_chunks restrict attention to chunks of encoder frames (the chunk mask); with
    train=True apply with rngs for acoustic.RNG_STREAMS and mutable=["batch_stats"] if the encoder has BatchNorm;
    step: the training step (AcousticModel.encode).
    """
    x, lengths = self.encode(audio, audio_lengths, train=train, chunk_size=chunk_size,
                             num_left_chunks=num_left_chunks, step=step)
    return self.log_probs(x), lengths

  def log_probs(self, x: jax.Array) -> jax.Array:
    """Encoder output [batch, T, embed] -> log_probs [batch, T, vocab] float32."""
    return log_softmax(self.ctc_head(x))


def from_config(config: ml_collections.ConfigDict, dtype: Any, *, vocab_size: int,
                cmvn: audio_lib.CMVNStats | None) -> CTCModel:
  """CTCModel of config.model (default_config()), for a tokenizer of `vocab_size` ids and features `cmvn` (None
  for waveform encoders)."""
  return CTCModel(frontend=acoustic.make_frontend(config, cmvn), spec_augment=acoustic.make_spec_augment(config),
                  encoder=encoders.make_encoder(config.encoder, dtype), vocab_size=vocab_size, dtype=dtype)
