"""Tests for speechfuse.losses.contrastive against numpy ports of fairseq's wav2vec 2.0 sampling, logits and loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from speechfuse.losses import contrastive


def _random_masks(rng, batch, time):
  """[batch, time] masks inside random lengths; row 0 has exactly 2 masked frames, row 1 one, row 2 none."""
  lengths = rng.integers(time // 2, time + 1, size=batch)
  mask = (rng.uniform(size=(batch, time)) < rng.uniform(0.2, 0.8, size=(batch, 1))) & (
      np.arange(time)[None, :] < lengths[:, None])
  mask[:3] = False
  mask[0, rng.choice(lengths[0], 2, replace=False)] = True
  mask[1, rng.integers(lengths[1])] = True
  return mask


def test_negatives_come_from_the_other_masked_frames_of_the_same_utterance():
  rng = np.random.default_rng(0)
  sample = jax.jit(contrastive.sample_negatives, static_argnums=2)
  for seed in range(20):
    mask = _random_masks(rng, 6, 30)
    indices, valid = (np.asarray(a) for a in sample(jax.random.key(seed), mask, 16))
    assert indices.shape == (6, 30, 16) and indices.dtype == np.int32
    np.testing.assert_array_equal(valid, mask & (mask.sum(1, keepdims=True) >= 2))
    for b, t in zip(*np.nonzero(valid)):
      assert (indices[b, t] != t).all()
      assert mask[b, indices[b, t]].all()  # masked, hence inside the utterance's valid frames
    pair = np.nonzero(mask[0])[0]  # two masked frames: each one's only distractor is the other
    np.testing.assert_array_equal(indices[0, pair[0]], pair[1])
    np.testing.assert_array_equal(indices[0, pair[1]], pair[0])
    np.testing.assert_array_equal(indices[~valid], 0)


def test_negatives_are_uniform():
  time, negatives = 24, 3000
  mask = np.zeros((2, time), bool)
  mask[0, [1, 4, 5, 9, 10, 11, 17, 23]] = True
  mask[1, [0, 2, 3]] = True  # rows with different counts in one batch
  indices, _ = contrastive.sample_negatives(jax.random.key(1), mask, negatives)
  indices = np.asarray(indices)
  for b in range(2):
    frames = np.nonzero(mask[b])[0]
    expected = negatives / (len(frames) - 1)
    sigma = np.sqrt(expected * (1 - 1 / (len(frames) - 1)))
    for t in frames:
      counts = np.array([(indices[b, t] == s).sum() for s in frames if s != t])
      np.testing.assert_array_less(np.abs(counts - expected), 5 * sigma)


def _numpy_logits(context, quantized, negatives, temperature=0.1):
  """fairseq compute_preds per frame: cos / temperature of [positive, distractors], a duplicate of it -inf."""
  out = np.empty(negatives.shape[:2] + (1 + negatives.shape[2],))
  for b, t in np.ndindex(*negatives.shape[:2]):
    targets = np.concatenate([quantized[b, t][None], quantized[b, negatives[b, t]]]).astype(np.float64)
    x = context[b, t].astype(np.float64)
    cos = targets @ x / (np.maximum(np.linalg.norm(targets, axis=-1), 1e-8) * max(np.linalg.norm(x), 1e-8))
    out[b, t] = cos / temperature
    out[b, t, 1:][(quantized[b, negatives[b, t]] == quantized[b, t]).all(-1)] = -np.inf
  return out


def _inputs(seed=0, batch=2, time=9, dim=5, k=4):
  """Random context / quantized [batch, time, dim], numpy-drawn distractors [batch, time, k] and valid frames."""
  rng = np.random.default_rng(seed)
  context = rng.normal(size=(batch, time, dim)).astype(np.float32)
  quantized = rng.normal(size=(batch, time, dim)).astype(np.float32)
  quantized[0, 5] = quantized[0, 2]  # frames 2 and 5 share their codes
  valid = np.zeros((batch, time), bool)
  valid[0, [0, 2, 3, 5]] = True
  valid[1, [1, 4, 6, 7, 8]] = True
  negatives = np.zeros((batch, time, k), np.int32)
  for b, t in zip(*np.nonzero(valid)):
    negatives[b, t] = rng.choice(np.setdiff1d(np.nonzero(valid[b])[0], [t]), k)
  negatives[0, 2, 0] = 5  # a distractor identical to the positive
  return context, quantized, negatives, valid


def test_logits_match_numpy():
  context, quantized, negatives, _ = _inputs()
  logits_fn = jax.jit(contrastive.contrastive_logits)
  for temperature in (0.1, 0.5):
    logits = logits_fn(context, quantized, negatives, temperature)
    expected = _numpy_logits(context, quantized, negatives, temperature)
    assert logits.dtype == jnp.float32 and logits.shape == (2, 9, 5)
    assert np.isneginf(logits[0, 2, 1]) and np.isneginf(expected[0, 2, 1])
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_loss_and_accuracy_match_numpy_with_finite_gradients():
  context, quantized, negatives, valid = _inputs()
  context[1, 4] = 10 * quantized[1, 4]  # a frame the model gets right
  context[1, 6] = 0.0  # all logits equal: argmax = argmin = 0 is not counted as correct (fairseq)
  quantized[1, 6] = 1.0

  def loss_fn(c, q):
    return contrastive.contrastive_loss(contrastive.contrastive_logits(c, q, negatives), valid)

  (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))(context, quantized)
  logits = _numpy_logits(context, quantized, negatives)[valid]
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  np.testing.assert_allclose(loss, -log_probs[:, 0].sum() / valid.sum(), rtol=1e-5)
  correct = (logits.argmax(-1) == 0) & (logits.argmin(-1) != 0)
  assert correct.any() and not correct.all()
  np.testing.assert_allclose(metrics["contrastive_accuracy"], correct.mean(), rtol=1e-6)
  assert metrics["contrastive_frames"] == valid.sum()
  for grad in grads:
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0
  np.testing.assert_array_equal(np.asarray(grads[0])[~valid], 0.0)  # frames not scored get no gradient


def test_diversity_loss():
  np.testing.assert_allclose(contrastive.diversity_loss(640.0, 640), 0.0)
  np.testing.assert_allclose(contrastive.diversity_loss(2.0, 640), 638 / 640, rtol=1e-6)
