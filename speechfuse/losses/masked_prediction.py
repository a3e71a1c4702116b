"""Masked-prediction losses of self-supervised pre-training: HuBERT's, k2SSL's plain cross-entropy, feature penalty.

Both losses are a cross-entropy over C classes (k-means clusters) at each frame, reduced as fairseq's
hubert criterion does: loss = (masked_weight * sum of CE over masked frames + unmasked_weight * sum over
unmasked frames) / N, with N the number of masked frames if masked_weight > 0 plus the number of unmasked
frames if unmasked_weight > 0 (fairseq's `sample_size`, by which the gradient is normalised). Only valid
(non-padding) frames count. They differ in the logits:
  hubert_loss: cosine similarity between the projected encoder output (final_proj, a Dense in the model) and
    each class's label embedding, divided by the temperature (0.1). fairseq scores the positive and the
    C - 1 other classes with the duplicate set to -inf: the same as a softmax over all C classes.
  ce_loss: logits from a linear layer to the classes, divided by the temperature inside this function
    (k2SSL: Linear -> classes, / 0.1), so the model's head stays a plain Dense.
The feature penalty, mean(f^2) of the convolutional features, is weighted (10 in HuBERT and k2SSL) by the task.
Everything is computed in float32 whatever the input dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# torch.cosine_similarity's eps: a norm below it is clamped, so an all-zero vector scores 0, not NaN.
_COSINE_EPSILON = 1e-8


def _normalize(x: jax.Array) -> jax.Array:
  """x / max(||x||, eps) over the last axis, with a finite gradient at x = 0."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _COSINE_EPSILON**2))


def _masked_cross_entropy(
    logits: jax.Array, labels: jax.Array, mask: jax.Array, valid: jax.Array, masked_weight: float,
    unmasked_weight: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy of float32 logits [B, T, C] against labels [B, T], reduced as the module docstring says."""
  safe_labels = jnp.where(valid, labels, 0)  # padding labels may hold anything, -1 included
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, safe_labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  correct = jnp.argmax(logits, axis=-1) == safe_labels
  masked, unmasked = mask & valid, ~mask & valid
  num_masked = masked.sum().astype(jnp.float32)
  num_unmasked = unmasked.sum().astype(jnp.float32)
  sum_masked = jnp.sum(jnp.where(masked, nll, 0.0))
  sum_unmasked = jnp.sum(jnp.where(unmasked, nll, 0.0))
  normaliser = (num_masked if masked_weight > 0 else 0.0) + (num_unmasked if unmasked_weight > 0 else 0.0)
  loss = (masked_weight * sum_masked + unmasked_weight * sum_unmasked) / jnp.maximum(normaliser, 1.0)
  metrics = {
      "masked_loss": sum_masked / jnp.maximum(num_masked, 1.0),
      "unmasked_loss": sum_unmasked / jnp.maximum(num_unmasked, 1.0),
      "masked_accuracy": jnp.sum(masked & correct) / jnp.maximum(num_masked, 1.0),
      "unmasked_accuracy": jnp.sum(unmasked & correct) / jnp.maximum(num_unmasked, 1.0),
      "masked_frames": num_masked,
      "unmasked_frames": num_unmasked,
  }
  return loss, metrics


def hubert_loss(
    projected: jax.Array, label_embeddings: jax.Array, labels: jax.Array, mask: jax.Array, valid: jax.Array, *,
    temperature: float = 0.1, masked_weight: float = 1.0, unmasked_weight: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """HuBERT's masked prediction loss (Hsu et al., 2021; fairseq hubert.py and hubert_criterion.py).

  Args:
    projected: [B, T, E] final_proj(encoder output), any float dtype.
    label_embeddings: [C, E] one embedding per class (fairseq's label_embs_concat).
    labels: [B, T] int class of each frame; values at invalid frames are ignored.
    mask: [B, T] bool, True on frames that were masked at the encoder input.
    valid: [B, T] bool, True on non-padding frames.
    temperature: logits are cos / temperature (fairseq's logit_temp).
    masked_weight, unmasked_weight: fairseq's pred_masked_weight and pred_nomask_weight (Python floats).

  Returns:
    (loss, metrics): the float32 scalar loss and float32 scalars masked_loss, unmasked_loss (mean CE),
    masked_accuracy, unmasked_accuracy and the frame counts masked_frames, unmasked_frames.
  """
  x = _normalize(projected.astype(jnp.float32))
  embeddings = _normalize(label_embeddings.astype(jnp.float32))
  logits = jnp.einsum("bte,ce->btc", x, embeddings) / temperature
  return _masked_cross_entropy(logits, labels, mask, valid, masked_weight, unmasked_weight)


def ce_loss(
    logits: jax.Array, labels: jax.Array, mask: jax.Array, valid: jax.Array, *, temperature: float = 0.1,
    masked_weight: float = 1.0, unmasked_weight: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """k2SSL's masked prediction loss: cross-entropy of linear logits / temperature, masked frames by default.

  Args:
    logits: [B, T, C] output of the model's Dense to the classes (any float dtype), *not* yet divided by the
      temperature: this function divides.
    labels, mask, valid, masked_weight, unmasked_weight: as in hubert_loss.
    temperature: k2SSL's 0.1.

  Returns:
    (loss, metrics) as hubert_loss.
  """
  return _masked_cross_entropy(logits.astype(jnp.float32) / temperature, labels, mask, valid, masked_weight,
                               unmasked_weight)


def feature_penalty(features: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """mean(f^2) over the valid frames of the convolutional features [B, T, C] (valid: [B, T] bool or None).

  fairseq averages over every frame of its unpadded batches; averaging over valid frames gives the same
  value for padded ones. Returns a float32 scalar.
  """
  squares = jnp.square(features.astype(jnp.float32))
  if valid is None:
    return jnp.mean(squares)
  total = jnp.sum(jnp.where(valid[..., None], squares, 0.0))
  return total / jnp.maximum(valid.sum() * features.shape[-1], 1).astype(jnp.float32)
