"""Encoder-feature ensemble (the OTF paper's EBF baseline, after Arunkumar et al.): frozen encoders + a new CTC head.

    waveform -> fbank + CMVN -> SpecAugment (training) -> encoder_0 ... encoder_{N-1} (frozen, eval mode)
             -> concatenate [batch, frames, N * d_model] -> new CTC head -> log-probs

Parameter tree: encoder_0/..., encoder_1/..., each laid out exactly like models.ctc.CTCModel's encoder/... (so a
member CTC model's exported encoder loads into it: task.init_members, see speechfuse.tasks.asr), and
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
from speechfuse.models import acoustic, ctc, encoders
from speechfuse.nn import attention

NAME = "ctc_ensemble"
_MEMBER = re.compile(r"encoder_\d+")


def member_name(index: int) -> str:
  """The parameter subtree of member `index`: "encoder_<index>"."""
  return f"encoder_{index}"


def is_member(path: tuple[Any, ...]) -> bool:
  """Whether a parameter path (jax.tree_util key entries, collection excluded) lies in a member encoder."""
  return bool(path) and _MEMBER.fullmatch(str(getattr(path[0], "key", ""))) is not None


class EnsembleCTCModel(acoustic.AcousticModel):
  """Frozen member encoders, their outputs concatenated, a CTC output layer.

  Attributes:
    frontend, spec_augment: as acoustic.AcousticModel; SpecAugment applies once, before all members.
    encoder: the members' encoder (models.encoders.make_encoder); member i is a copy named member_name(i).
    num_members: N.
    vocab_size: output tokens, blank (id 0) included.
    dtype: compute dtype of the head; log-probs are float32.
  """
  num_members: int = 2
  vocab_size: int = 0
  dtype: Any = jnp.float32

  def setup(self):
    for i in range(self.num_members):
      setattr(self, member_name(i), self.encoder.clone(parent=None))
    self.ctc_head = ctc.ctc_head(self.vocab_size, self.dtype)

  def _members(self) -> list[nn.Module]:
    return [getattr(self, member_name(i)) for i in range(self.num_members)]

  def __call__(self, audio: jax.Array, audio_lengths: jax.Array, *, train: bool = False,
               chunk_size: attention.IntLike | None = None, num_left_chunks: attention.IntLike = -1,
               step: jax.Array | int | None = None) -> tuple[jax.Array, jax.Array]:
    """audio: int16 [batch, samples], audio_lengths: [batch] -> (log_probs [batch, T, vocab] float32, lengths [batch]).

    As models.ctc.CTCModel; with train=True the members still run in eval mode (only the head and SpecAugment
    see `train`), so dynamic chunk training does not apply to them, and nor does `step` (frozen members).
    """
    del step
    x, lengths = self.encode(audio, audio_lengths, train=train, chunk_size=chunk_size, num_left_chunks=num_left_chunks)
    return self.log_probs(x), lengths

  def encode(self, audio: jax.Array, audio_lengths: jax.Array, *, train: bool = False,
             chunk_size: attention.IntLike | None = None,
             num_left_chunks: attention.IntLike = -1) -> tuple[jax.Array, jax.Array]:
    """The members' outputs on the same features, concatenated: [batch, T, N * embed], lengths [batch]."""
    features, frame_lengths = self.features(audio, audio_lengths, train=train)
    outputs = [member(features, frame_lengths, train=False, chunk_size=chunk_size, num_left_chunks=num_left_chunks)
               for member in self._members()]
    return jnp.concatenate([x for x, _ in outputs], axis=-1), outputs[0][1]

  def log_probs(self, x: jax.Array) -> jax.Array:
    """The members' outputs concatenated [batch, T, N * embed] -> log_probs [batch, T, vocab] float32."""
    x = nn.with_logical_constraint(jax.lax.stop_gradient(x), ("batch", "time", "embed"))
    return ctc.log_softmax(self.ctc_head(x))

  def init_stream(self, batch_size: int, chunk_size: int, num_left_chunks: int, max_frames: int) -> Any:
    state = self.encoder.init_state(batch_size, chunk_size, num_left_chunks, max_frames)
    return (state,) * self.num_members

  def stream_step(self, features: jax.Array, lengths: jax.Array, state: Any) -> tuple[jax.Array, jax.Array, Any]:
    """Every member's step on the chunk; their outputs concatenated [batch, chunk, N * embed]."""
    steps = [member.step(features, lengths, member_state) for member, member_state in zip(self._members(), state)]
    return (jnp.concatenate([x for x, _, _ in steps], axis=-1), steps[0][1],
            tuple(member_state for _, _, member_state in steps))


def from_config(config: ml_collections.ConfigDict, dtype: Any, *, vocab_size: int,
                cmvn: audio_lib.CMVNStats | None) -> EnsembleCTCModel:
  """EnsembleCTCModel of config.model (a CTC recipe's model with name "ctc_ensemble" and num_members)."""
  if config.num_members < 1:
    raise ValueError(f"config.model.num_members={config.num_members} must be >= 1")
  return EnsembleCTCModel(frontend=acoustic.make_frontend(config, cmvn),
                          spec_augment=acoustic.make_spec_augment(config),
                          encoder=encoders.make_encoder(config.encoder, dtype), num_members=config.num_members,
                          vocab_size=vocab_size, dtype=dtype)
