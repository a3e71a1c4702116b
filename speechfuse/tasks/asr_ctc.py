"""CTC speech recognition ("asr_ctc"): models.ctc (or the models.ensemble EBF model) trained with the CTC loss.

Decoding in evaluation (task.decoding): "greedy" (best path), "beam" (prefix beam search, jitted on the device
like greedy), "beam_lm" (prefix beam search with the word n-gram LM task.lm_path, k2SSL's Eq. 3): the jitted
`decode_step` stops at the log-probabilities and `utterances` runs the search on the host
(speechfuse.decoding.ctc_lm; a dictionary walk over words with no static-shape form), then the jitted forced
alignment. CTC confidences (speechfuse.eval.confidence) read the frame posteriors along the hypothesis's best
alignment (speechfuse.decoding.align), which for greedy is the best path itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from speechfuse import decoding
from speechfuse.decoding import align
from speechfuse.eval import confidence as confidence_lib
from speechfuse.losses import ctc as ctc_lib
from speechfuse.tasks import asr


def _aligned(log_probs: jax.Array, lengths: jax.Array, tokens: jax.Array, token_lengths: jax.Array,
             blank_id: int) -> dict[str, jax.Array]:
  """tokens [B, L], token_lengths [B], and best_ids / best_probs [B, T]: each frame's label on the hypothesis's best
  alignment (decoding.align) and its posterior, what CTC confidences read."""
  labels, label_log_probs, _ = align.ctc_forced_align(log_probs, lengths, tokens, token_lengths, blank_id)
  return {"tokens": tokens, "token_lengths": token_lengths, "best_ids": labels, "best_probs": jnp.exp(label_log_probs)}


class CTCTask(asr.ASRTask):
  """CTC training (config.model.name == "ctc" or "ctc_ensemble")."""

  DECODINGS = ("greedy", "beam", "beam_lm")

  def __init__(self, config, workdir=None):
    super().__init__(config, workdir)
    self._lm = None  # (decoding.NgramLM, token pieces, lexicon) of config.task.lm_path, read on first use

  def init(self, rng, batch):
    return self._init_from(dict(self.model.init(rng, batch["audio"], batch["audio_lengths"])))

  def loss(self, params, extra, batch, rng, *, step, train):
    # The step reaches encoders with scheduled training-only parts (the Zipformer's); evaluation passes none.
    (log_probs, lengths), updates = self._apply({"params": params, **extra}, batch["audio"], batch["audio_lengths"],
                                                train=train, rng=rng, step=step if train else None)
    per_utterance = ctc_lib.ctc_loss(log_probs, lengths, batch["labels"], batch["label_lengths"],
                                     self.tokenizer.blank_id)
    loss, metrics = self._average(per_utterance, batch)
    return loss, (metrics, updates if train else extra)

  def decode_step(self, variables, batch, *, mode: str = "offline", method: str | None = None):
    """Decodes with `method` (None: config.task.decoding) in `mode` ("offline" or "online"): jit-able.

    Returns:
      lengths [B] encoder frames, loss [B], and for "greedy" (decoding.ctc_greedy) and "beam" (the best of
      decoding.ctc_prefix_beam_search): tokens int32 [B, T], token_lengths [B], best_ids int32 [B, T] and
      best_probs float32 [B, T] (each frame's label on the hypothesis's best alignment and its posterior: the
      argmax for greedy). "beam_lm" returns log_probs float32 [B, T, V] instead of the four: `utterances` runs
      the LM search on the host.
    """
    method = self._method(method)
    blank_id = self.tokenizer.blank_id
    x, lengths = self._encode(variables, batch, mode=mode)
    log_probs = self.model.apply(variables, x, method="log_probs")
    out = {"lengths": lengths,
           "loss": ctc_lib.ctc_loss(log_probs, lengths, batch["labels"], batch["label_lengths"], blank_id)}
    if method == "greedy":
      tokens, token_lengths = decoding.ctc_greedy(log_probs, lengths, blank_id)
      return {**out, "tokens": tokens, "token_lengths": token_lengths,
              "best_ids": log_probs.argmax(-1).astype(jnp.int32), "best_probs": jnp.exp(log_probs.max(-1))}
    if method == "beam":
      best = decoding.ctc_prefix_beam_search(log_probs, lengths, beam=self.config.task.beam, blank_id=blank_id)
      return {**out, **_aligned(log_probs, lengths, best.tokens[:, 0], best.lengths[:, 0], blank_id)}
    return {**out, "log_probs": log_probs.astype(jnp.float32)}

  def _host_search(self, out, real):
    """The "beam_lm" search over the real rows (ctc_lm.prefix_beam_search), then the jitted forced alignment."""
    if "tokens" in out:
      return out
    task = self.config.task
    if self._lm is None:
      lm = decoding.NgramLM.from_arpa(task.lm_path)
      self._lm = (lm, decoding.token_pieces(self.tokenizer), lm.words() if task.lexicon else None)
    lm, pieces, lexicon = self._lm
    lengths = np.where(real, out["lengths"], 0)  # padding rows: nothing to search
    best = decoding.ctc_prefix_beam_search(
        out["log_probs"], lengths, beam=task.beam, blank_id=self.tokenizer.blank_id, lm=lm, lm_weight=task.lm_weight,
        word_insertion=task.word_insertion, pieces=pieces, lexicon=lexicon)
    aligned = _aligned(out["log_probs"], lengths, best.tokens[:, 0], best.lengths[:, 0], self.tokenizer.blank_id)
    return {**out, **jax.device_get(aligned)}

  def _confidence(self, out, i):
    length = int(out["lengths"][i])
    tokens, token_conf = confidence_lib.ctc_best_path(out["best_ids"][i], out["best_probs"][i], length,
                                                      self.tokenizer.blank_id)
    return confidence_lib.utterance_confidence(tokens, token_conf, self.tokenizer, out["best_probs"][i], length)

