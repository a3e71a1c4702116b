"""Transducer speech recognition ("asr_transducer"): models.transducer trained with the pruned RNN-T loss.

Loss = simple_scale * simple + pruned_scale * pruned (+ ctc_weight * ctc), with icefall's warm-up: simple_scale
goes 1 -> task.simple_loss_scale and pruned_scale 0.1 -> 1 linearly over task.warm_step updates (then stay),
read from the trainer's step. Each term counts only where it is feasible: an utterance too short for its labels
under CTC (which needs a frame per label and a blank between repeats) still trains the transducer terms, which
it can always satisfy; an utterance the transducer terms cannot score is left out and counted.

Decoding in evaluation (task.decoding): "greedy" (up to task.max_symbols_per_frame symbols per frame), "beam"
(modified beam search) or "ctc_greedy" (the auxiliary CTC head's best path, model.ctc_head), without confidences
(the fusion baselines that read them fuse CTC models). The encoder runs once per batch for the loss and the search.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from speechfuse import decoding
from speechfuse.losses import ctc as ctc_lib
from speechfuse.tasks import asr


class TransducerTask(asr.ASRTask):
  """Pruned RNN-T training (config.model.name == "transducer")."""

  DECODINGS = ("greedy", "beam", "ctc_greedy")

  def _check_decoding(self) -> None:
    super()._check_decoding()
    task, model = self.config.task, self.config.model
    needs_head = task.ctc_weight or task.decoding == "ctc_greedy"
    if needs_head and not model.ctc_head:
      raise ValueError(f"config.task.ctc_weight={task.ctc_weight} / decoding={task.decoding!r} needs the auxiliary "
                       "CTC head: set config.model.ctc_head=True")

  def init(self, rng, batch):
    return self._init_from(dict(self.model.init(rng, batch["audio"], batch["audio_lengths"], batch["labels"],
                                                batch["label_lengths"])))

  def blend(self, losses: Mapping[str, jax.Array], step: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Per-utterance blended loss [B] and whether each utterance counts [B] bool: icefall's warm-up schedule at
    `step` (updates so far), its end point when step is None (evaluation). A term over INFEASIBLE_LOSS
    contributes nothing; the utterance counts while its transducer terms are feasible."""
    task = self.config.task
    progress = 1.0 if step is None else jnp.minimum(jnp.asarray(step, jnp.float32) / max(task.warm_step, 1), 1.0)
    feasible = {name: value < ctc_lib.INFEASIBLE_LOSS for name, value in losses.items()}
    term = lambda name: jnp.where(feasible[name], losses[name], 0.0)
    blended = (1.0 - progress * (1.0 - task.simple_loss_scale)) * term("simple") + (0.1 + 0.9 * progress) * term(
        "pruned")
    if task.ctc_weight:
      blended = blended + task.ctc_weight * term("ctc")
    return blended, feasible["simple"] & feasible["pruned"]

  def loss(self, params, extra, batch, rng, *, step, train):
    (losses, _), updates = self._apply({"params": params, **extra}, batch["audio"], batch["audio_lengths"],
                                       batch["labels"], batch["label_lengths"], train=train, rng=rng,
                                       step=step if train else None)
    blended, counted = self.blend(losses, step if train else None)
    loss, metrics = self._average(blended, batch, counted)
    for name, value in losses.items():
      metrics[f"{name}_loss"], term_metrics = self._average(value, batch)
      if name == "ctc":
        metrics["ctc_infeasible_fraction"] = term_metrics["infeasible_fraction"]
    return loss, (metrics, updates if train else extra)

  def decode_step(self, variables, batch, *, mode: str = "offline", method: str | None = None):
    """Decodes with `method` (None: config.task.decoding) in `mode` ("offline" or "online"): "greedy"
    (decoding.transducer_greedy; tokens int32 [B, T * max_symbols_per_frame]), "beam" (the best of
    decoding.modified_beam_search; tokens [B, T]) or "ctc_greedy" (decoding.ctc_greedy on the CTC head; tokens
    [B, T]), with token_lengths [B] and loss [B] (the blended loss after warm-up)."""
    method = self._method(method)
    encoder_out, lengths = self._encode(variables, batch, mode=mode)
    apply = lambda name, *args: self.model.apply(variables, *args, method=name)
    losses = apply("losses", encoder_out, lengths, batch["labels"], batch["label_lengths"])
    blended, counted = self.blend(losses, None)
    out = {"loss": jnp.where(counted, blended, ctc_lib.INFEASIBLE_LOSS)}
    if method == "ctc_greedy":
      tokens, token_lengths = decoding.ctc_greedy(apply("ctc_log_probs", encoder_out), lengths,
                                                  self.tokenizer.blank_id)
      return {**out, "tokens": tokens, "token_lengths": token_lengths}
    searched = (apply("project_encoder", encoder_out), lengths, lambda n: apply("predictor_initial_state", n),
                lambda state, tokens: apply("predictor_step", state, tokens),
                lambda enc, pred: apply("join", enc, pred))
    if method == "greedy":
      tokens, token_lengths = decoding.transducer_greedy(
          *searched, max_symbols_per_frame=self.config.task.max_symbols_per_frame, blank_id=self.tokenizer.blank_id)
    else:
      best = decoding.modified_beam_search(*searched, beam=self.config.task.beam, blank_id=self.tokenizer.blank_id)
      tokens, token_lengths = best.tokens[:, 0], best.lengths[:, 0]
    return {**out, "tokens": tokens, "token_lengths": token_lengths}
