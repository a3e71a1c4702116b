"""Encoder-feature ensemble (the OTF paper's EBF baseline, after Arunkumar et al.): frozen encoders + a new CTC head.

    waveform -> fbank + CMVN -> SpecAugment (training) -> encoder_0 ... encoder_{N-1} (frozen, eval mode)
             -> concatenate [batch, frames, N * d_model] -> new CTC head -> log-probs

Parameter tree: encoder_0/..., encoder_1/..., each laid out exactly like models.ctc.CTCModel's encoder/... (so a
member CTC model's exported encoder loads into it: task.init_members, see speechfuse.train.tasks.asr), and
ctc_head/{kernel [N * d_model, vocab], bias [vocab]}. All members share one encoder config, hence one frame rate,
so their outputs line up frame by frame.

The members stay frozen for the whole run: their outputs pass through stop_gradient (no backward pass through
them), the task's optimizer gives them zero updates (optim.freeze with `is_member`: no weight decay either, no
moments), and they always run in eval mode (no dropout, no dynamic chunks, BatchNorm on its running statistics,
which therefore never change). Only the head trains, on SpecAugment-ed features in training. The front end
normalises with the EBF run's own CMVN statistics; on the members' training data they equal the members' (or copy
a member's cmvn.json into the EBF workdir before the first run).
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from speechfuse import audio as audio_lib
from speechfuse.models import acoustic, ctc
from speechfuse.nn import attention

NAME = "ctc_ensemble"
_MEMBER = re.compile(r"encoder_\d+")


def member_name(index: int) -> str:
  """The parameter subtree of member `index`: "encoder_<index>"."""
  return f"encoder_{index}"


def is_member(path: tuple[Any, ...]) -> bool:
  """Whether a parameter path (jax.tree_util key entries, collection excluded) lies in a member encoder."""
  return bool(path) and _MEMBER.fullmatch(str(getattr(path[0], "key", ""))) is not None


def ebf_config(member_config: ml_collections.ConfigDict, num_members: int = 2,
               init_members: tuple[str, ...] | None = None) -> ml_collections.ConfigDict:
  """The EBF recipe from a CTC recipe's config (e.g. configs/asr_conformer_ctc.py): same data, tokenizer, encoder
  config and trainer; model.name "ctc_ensemble" with `num_members` members loaded from `init_members` (exported
  variables paths, one per member; they may also be set later as config.task.init_members).

  The caller sets the schedule (total_steps, learning rate; only the head trains, so a short run suffices) and
  the data (the member recipe's: a fine-tuning recipe's labeled subset stays a subset).
  """
  if member_config.model.name != "ctc":
    raise ValueError(f"ebf_config needs a CTC recipe (config.model.name='ctc'), got {member_config.model.name!r}")
  config = member_config.copy_and_resolve_references()
  with config.unlocked():
    config.model.name = NAME
    config.model.num_members = num_members  # frozen encoders whose outputs are concatenated
    config.task.init_from = None  # the members come from init_members, and nothing else is pre-trained
    config.task.freeze_encoder_steps = 0
    config.task.init_members = tuple(init_members) if init_members else ()
  return config


class EnsembleCTCModel(nn.Module):
  """Frozen member encoders, their outputs concatenated, a CTC output layer.

  Attributes:
    frontend: speechfuse.audio.LogMelFrontend with global CMVN (acoustic.make_frontend).
    spec_augment: acoustic.SpecAugment, applied once, before all members.
    encoder: the members' encoder (acoustic.make_encoder); member i is a copy named member_name(i).
    num_members: N.
    vocab_size: output tokens, blank (id 0) included.
    dtype: compute dtype of the head; log-probs are float32.
  """
  frontend: nn.Module
  spec_augment: nn.Module
  encoder: nn.Module
  num_members: int
  vocab_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, audio: jax.Array, audio_lengths: jax.Array, *, train: bool = False,
               chunk_size: attention.IntLike | None = None,
               num_left_chunks: attention.IntLike = -1) -> tuple[jax.Array, jax.Array]:
    """audio: int16 [batch, samples], audio_lengths: [batch] -> (log_probs [batch, T, vocab] float32, lengths [batch]).

    As models.ctc.CTCModel; with train=True the members still run in eval mode (only the head and SpecAugment
    see `train`), so dynamic chunk training does not apply to them.
    """
    features, frame_lengths = self.frontend(audio, audio_lengths, deterministic=not train)
    features = self.spec_augment(features, frame_lengths, train=train)
    outputs, lengths = [], None
    for i in range(self.num_members):
      member = self.encoder.clone(name=member_name(i), parent=self)
      x, lengths = member(features, frame_lengths, train=False, chunk_size=chunk_size,
                          num_left_chunks=num_left_chunks)
      outputs.append(jax.lax.stop_gradient(x))
    x = nn.with_logical_constraint(jnp.concatenate(outputs, axis=-1), ("batch", "time", "embed"))
    logits = ctc.ctc_head(self.vocab_size, self.dtype)(x)
    logits = nn.with_logical_constraint(logits, ("batch", "time", "vocab"))
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), lengths


def from_config(config: ml_collections.ConfigDict, dtype: Any, *, vocab_size: int,
                cmvn: audio_lib.CMVNStats) -> EnsembleCTCModel:
  """EnsembleCTCModel of config.model (ebf_config(...).model)."""
  if config.num_members < 1:
    raise ValueError(f"config.model.num_members={config.num_members} must be >= 1")
  return EnsembleCTCModel(frontend=acoustic.make_frontend(config.frontend, cmvn),
                          spec_augment=acoustic.make_spec_augment(config.spec_augment),
                          encoder=acoustic.make_encoder(config.encoder, dtype), num_members=config.num_members,
                          vocab_size=vocab_size, dtype=dtype)
