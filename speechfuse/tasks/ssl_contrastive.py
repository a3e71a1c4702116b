"""wav2vec 2.0 pre-training ("ssl_wav2vec2"): contrastive prediction of quantized features (Baevski et al.,
"wav2vec 2.0: A Framework for Self-Supervised Learning of Speech Representations", NeurIPS 2020).

Model: speechfuse.models.ssl with head "wav2vec2" over the waveform encoder (nn.wav2vec2): span-masked
Transformer context c [B, T, final_dim] and quantized targets q [B, T, final_dim] of the unmasked features, the
quantizer's Gumbel-softmax temperature annealed with the step, max(start x decay^step, end) (2, 0.999995, 0.5).
Loss, over the masked valid frames of the batch (no labels: the batches are the SSL task's, without targets):
  contrastive   -log softmax over [cos(c_t, q_t), cos(c_t, q_k) for K distractors] / temperature, the
                distractors drawn from the other masked frames of the same utterance (losses.contrastive)
  + diversity_weight x (G V - perplexity) / (G V)   codebook use; collapse shows as perplexity falling to ~2
  + feature_penalty_weight x mean squared conv features
Each is a mean (fairseq's sums over its sample size, the same gradient direction); codebook_perplexity and the
diversity term are logged with the contrastive accuracy, so collapse is visible in the curves.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from speechfuse import train as train_lib
from speechfuse.losses import contrastive, masked_prediction
from speechfuse.nn import attention, quantizer
from speechfuse.tasks import ssl

_EVAL_NEGATIVES = 1  # the distractors' key in evaluation: fixed, so dev metrics compare across evaluations


def default_config() -> ml_collections.ConfigDict:
  """config.task for "ssl_wav2vec2"."""
  config = ml_collections.ConfigDict()
  config.name = "ssl_wav2vec2"
  config.loss = "wav2vec2"
  config.num_negatives = 100  # distractors per masked frame
  config.temperature = 0.1  # cosine logits / temperature
  config.diversity_weight = 0.1
  config.feature_penalty_weight = 10.0
  # Gumbel-softmax temperature max(start * decay^step, end).
  config.gumbel_start = 2.0
  config.gumbel_end = 0.5
  config.gumbel_decay = 0.999995
  config.mix_prob = 0.0  # WavLM-style utterance mixing (tasks.ssl); 0 in wav2vec 2.0
  return config


class ContrastiveTask(ssl.SSLTask):
  """wav2vec 2.0's objective over config.model (models.ssl, head "wav2vec2")."""

  LOSSES = ("wav2vec2",)
  _SUMS = ("contrastive_loss", "contrastive_accuracy", "codebook_perplexity", "diversity_loss", "feature_penalty")

  def _check_targets(self) -> None:
    """No targets: the quantizer makes them."""

  def _with_targets(self, iterator, split):
    return iterator

  def _temperature(self, step) -> jax.Array:
    task = self.config.task
    return quantizer.gumbel_temperature(step, task.gumbel_start, task.gumbel_end, task.gumbel_decay)

  def _objective(self, out, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    task, model = self.config.task, self.config.model
    valid = attention.padding_mask(out.lengths, out.head.shape[1])
    negatives, scored = contrastive.sample_negatives(rng, out.frame_mask & valid, task.num_negatives)
    logits = contrastive.contrastive_logits(out.head, out.quantized, negatives, task.temperature)
    loss, metrics = contrastive.contrastive_loss(logits, scored)
    diversity = contrastive.diversity_loss(out.perplexity, model.quantizer.num_groups * model.quantizer.num_vars)
    penalty = masked_prediction.feature_penalty(out.features, valid)
    metrics.update(contrastive_loss=loss, codebook_perplexity=out.perplexity, diversity_loss=diversity,
                   feature_penalty=penalty)
    return loss + task.diversity_weight * diversity + task.feature_penalty_weight * penalty, metrics

  def loss(self, params, extra, batch, rng, *, step, train):
    temperature = self._temperature(step)
    if train:
      rng, negatives_rng = jax.random.split(rng)
    else:
      negatives_rng = jax.random.PRNGKey(_EVAL_NEGATIVES)
    out, updates = self._apply({"params": params, **extra}, batch, rng, train=train, step=step,
                               temperature=temperature)
    loss, metrics = self._objective(out, negatives_rng)
    frames = metrics.pop("contrastive_frames")
    means = {name: train_lib.Mean(value * frames, frames) for name, value in metrics.items()}
    means["gumbel_temperature"] = train_lib.Mean(temperature, 1.0)
    return train_lib.Mean(loss * frames, frames), (means, updates if train else extra)

  def eval_step(self, variables, batch):
    out, _ = self._apply(variables, batch, None, train=False)
    _, metrics = self._objective(out, jax.random.PRNGKey(_EVAL_NEGATIVES))
    return metrics

  def evaluate(self, eval_step, batches) -> dict[str, Any]:
    """Means over the dev batches weighted by their scored frames: the contrastive loss ("loss") and accuracy,
    the codebook perplexity (of each batch's masked frames), the diversity term and the feature penalty."""
    sums, frames = dict.fromkeys(self._SUMS, 0.0), 0.0
    for batch in batches:
      out = eval_step(batch)
      weight = float(out["contrastive_frames"])
      for name in self._SUMS:
        sums[name] += float(out[name]) * weight
      frames += weight
    means = {name: value / max(frames, 1.0) for name, value in sums.items()}
    return {"loss": means.pop("contrastive_loss"), **means, "contrastive_frames": frames}
