"""Tests for speechfuse.losses.masked_prediction against numpy ports of fairseq's HuBERT model and criterion."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse.losses import masked_prediction

B, T, E, C = 2, 9, 6, 5


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  projected = rng.normal(size=(B, T, E)).astype(np.float32)
  embeddings = rng.uniform(size=(C, E)).astype(np.float32)
  labels = rng.integers(0, C, size=(B, T))
  valid = np.arange(T)[None, :] < np.array([[T], [6]])
  labels[~valid] = -1  # padding labels are ignored, whatever they hold
  mask = rng.uniform(size=(B, T)) < 0.5
  mask[:, 0], mask[:, 1] = True, False
  return projected, embeddings, labels, mask, valid


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - x.max() - np.log(np.exp(x - x.max()).sum())


def _fairseq_hubert(projected, embeddings, labels, frames, temperature=0.1):
  """fairseq compute_nce for the selected frames: [positive, all C classes], the copy of the positive -inf."""
  total, correct = 0.0, 0
  for b, t in zip(*np.nonzero(frames)):
    x = projected[b, t].astype(np.float64)
    targets = np.concatenate([embeddings[labels[b, t]][None], embeddings]).astype(np.float64)
    cos = targets @ x / np.maximum(np.linalg.norm(targets, axis=-1) * np.linalg.norm(x), 1e-8)
    logits = cos / temperature
    logits[1:][(embeddings == embeddings[labels[b, t]]).all(-1)] = -np.inf
    total -= _log_softmax(logits)[0]
    correct += int(np.argmax(logits) == 0)
  return total, correct


@pytest.mark.parametrize("masked_weight,unmasked_weight", [(1.0, 0.0), (1.0, 0.5), (0.0, 1.0)])
def test_hubert_loss_matches_fairseq(masked_weight, unmasked_weight):
  projected, embeddings, labels, mask, valid = _inputs()
  loss, metrics = jax.jit(lambda *a: masked_prediction.hubert_loss(
      *a, masked_weight=masked_weight, unmasked_weight=unmasked_weight))(projected, embeddings, labels, mask, valid)
  sum_m, correct_m = _fairseq_hubert(projected, embeddings, labels, mask & valid)
  sum_u, correct_u = _fairseq_hubert(projected, embeddings, labels, ~mask & valid)
  n_m, n_u = (mask & valid).sum(), (~mask & valid).sum()
  # fairseq's hubert criterion: weighted sums over sample_size, which counts each part with a positive weight.
  sample_size = (n_m if masked_weight > 0 else 0) + (n_u if unmasked_weight > 0 else 0)
  expected = (masked_weight * sum_m + unmasked_weight * sum_u) / sample_size
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["masked_loss"], sum_m / n_m, rtol=1e-5)
  np.testing.assert_allclose(metrics["unmasked_loss"], sum_u / n_u, rtol=1e-5)
  np.testing.assert_allclose(metrics["masked_accuracy"], correct_m / n_m, rtol=1e-6)
  np.testing.assert_allclose(metrics["unmasked_accuracy"], correct_u / n_u, rtol=1e-6)
  assert metrics["masked_frames"] == n_m and metrics["unmasked_frames"] == n_u


def test_ce_loss_matches_numpy_and_divides_by_temperature():
  projected, _, labels, mask, valid = _inputs(1)
  logits = projected[..., :C]
  loss, metrics = masked_prediction.ce_loss(logits, labels, mask, valid)
  frames = list(zip(*np.nonzero(mask & valid)))
  nll = [-_log_softmax(logits[b, t] / 0.1)[labels[b, t]] for b, t in frames]
  np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-5)
  accuracy = np.mean([np.argmax(logits[b, t]) == labels[b, t] for b, t in frames])
  np.testing.assert_allclose(metrics["masked_accuracy"], accuracy, rtol=1e-6)
  # Equal logits: every class is equally likely, the loss is log C whatever the temperature.
  flat, _ = masked_prediction.ce_loss(np.zeros_like(logits), labels, mask, valid)
  np.testing.assert_allclose(flat, np.log(C), rtol=1e-6)


def test_gradients_finite_and_bfloat16_inputs():
  projected, embeddings, labels, mask, valid = _inputs(2)
  projected[0, 0] = 0.0  # a zero vector: the cosine must stay finite, and so must its gradient
  grads = jax.grad(lambda p, e: masked_prediction.hubert_loss(p, e, labels, mask, valid)[0], argnums=(0, 1))(
      projected, embeddings)
  assert all(np.isfinite(g).all() for g in grads) and np.abs(grads[0][mask & valid]).sum() > 0
  assert not np.asarray(grads[0])[~valid].any()  # padding frames get no gradient
  ce_grad = jax.grad(lambda x: masked_prediction.ce_loss(x, labels, mask, valid)[0])(projected)
  assert np.isfinite(ce_grad).all() and not np.asarray(ce_grad)[~(mask & valid)].any()

  full, _ = masked_prediction.hubert_loss(projected, embeddings, labels, mask, valid)
  half, metrics = masked_prediction.hubert_loss(
      jnp.asarray(projected, jnp.bfloat16), jnp.asarray(embeddings, jnp.bfloat16), labels, mask, valid)
  assert half.dtype == jnp.float32 and all(m.dtype == jnp.float32 for m in metrics.values())
  np.testing.assert_allclose(half, full, rtol=0.05)
  ce_half, _ = masked_prediction.ce_loss(jnp.asarray(projected, jnp.bfloat16), labels, mask, valid)
  assert ce_half.dtype == jnp.float32 and np.isfinite(ce_half)


def test_feature_penalty():
  features = np.random.default_rng(3).normal(size=(2, 5, 3)).astype(np.float32)
  np.testing.assert_allclose(masked_prediction.feature_penalty(features), np.mean(features**2), rtol=1e-6)
  valid = np.array([[True] * 5, [True, True, False, False, False]])
  expected = np.mean(np.concatenate([features[0], features[1, :2]]) ** 2)
  np.testing.assert_allclose(masked_prediction.feature_penalty(features, valid), expected, rtol=1e-6)
  bf16 = masked_prediction.feature_penalty(jnp.asarray(features, jnp.bfloat16), valid)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, expected, rtol=0.02)
