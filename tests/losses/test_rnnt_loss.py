"""Full RNN-T loss against a numpy forward-backward reference, finite differences and XLA's memory analysis."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from losses_testlib import central_differences, log_softmax, rnnt_nll_and_grad
from speechfuse.losses import rnnt_loss

FRAMES, MAX_LABELS, VOCAB = 7, 4, 6


def _batch(seed: int = 0):
  rng = np.random.default_rng(seed)
  logits = rng.standard_normal((4, FRAMES, MAX_LABELS + 1, VOCAB)).astype(np.float32)
  labels = rng.integers(1, VOCAB, (4, MAX_LABELS))
  logit_lengths = np.array([7, 4, 1, 6])
  label_lengths = np.array([4, 2, 3, 0])
  return logits, logit_lengths, labels, label_lengths


def _reference(logits, logit_lengths, labels, label_lengths, blank_id=0):
  """Losses [B] and gradient [B, T, U+1, V] (zero outside each utterance's lattice) from numpy."""
  losses, grad = [], np.zeros(logits.shape)
  for b, (frames, num_labels) in enumerate(zip(logit_lengths, label_lengths)):
    loss, grad[b, :frames, :num_labels + 1] = rnnt_nll_and_grad(
        logits[b, :frames, :num_labels + 1], labels[b, :num_labels], blank_id)
    losses.append(loss)
  return np.array(losses), grad


_loss_and_grad = jax.jit(jax.value_and_grad(lambda x, t, y, u, blank_id: rnnt_loss(x, t, y, u, blank_id).sum()),
                         static_argnums=4)
_losses = jax.jit(rnnt_loss, static_argnums=4)


def test_loss_and_gradient_match_numpy_forward_backward():
  logits, logit_lengths, labels, label_lengths = _batch()
  expected_loss, expected_grad = _reference(logits, logit_lengths, labels, label_lengths)
  loss = _losses(logits, logit_lengths, labels, label_lengths, 0)
  assert loss.dtype == jnp.float32 and loss.shape == (4,)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  _, grad = _loss_and_grad(logits, logit_lengths, labels, label_lengths, 0)
  np.testing.assert_allclose(grad, expected_grad, atol=1e-5)


def test_other_blank_id_and_padding_contents():
  logits, logit_lengths, labels, label_lengths = _batch(1)
  labels = np.where(labels == 2, 0, labels)  # blank is 2, 0 is an ordinary label
  expected_loss, _ = _reference(logits, logit_lengths, labels, label_lengths, blank_id=2)
  padded = np.where(np.arange(MAX_LABELS)[None] >= label_lengths[:, None], -7, labels)
  np.testing.assert_allclose(_losses(logits, logit_lengths, padded, label_lengths, 2), expected_loss, rtol=1e-5)


def test_no_labels_is_sum_of_blank_log_probs():
  logits, _, labels, _ = _batch(2)
  loss = _losses(logits, np.full(4, FRAMES), labels, np.zeros(4, int), 0)
  np.testing.assert_allclose(loss, -log_softmax(logits)[:, :, 0, 0].sum(axis=1), rtol=1e-5)


def test_gradient_matches_finite_differences_float64():
  rng = np.random.default_rng(3)
  logits = rng.standard_normal((2, 3, 3, 4))
  labels = np.array([[1, 3], [2, 2]])
  logit_lengths, label_lengths = np.array([3, 2]), np.array([2, 1])

  def reference(x):
    return _reference(x, logit_lengths, labels, label_lengths)[0].sum()

  with jax.enable_x64(True):
    loss, grad = jax.jit(jax.value_and_grad(lambda x: rnnt_loss(x, logit_lengths, labels, label_lengths).sum()))(
        jnp.asarray(logits))
    assert loss.dtype == jnp.float64
    loss, grad = np.asarray(loss), np.asarray(grad)
  np.testing.assert_allclose(loss, reference(logits), rtol=1e-12)
  np.testing.assert_allclose(grad, central_differences(reference, logits), atol=1e-8)


def test_bfloat16_logits_give_float32_loss_and_bfloat16_gradient():
  logits, logit_lengths, labels, label_lengths = _batch(4)
  logits_bf16 = jnp.asarray(logits, jnp.bfloat16)
  loss = _losses(logits_bf16, logit_lengths, labels, label_lengths, 0)
  expected_loss, expected_grad = _reference(np.asarray(logits_bf16.astype(jnp.float32)), logit_lengths, labels,
                                            label_lengths)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  _, grad = _loss_and_grad(logits_bf16, logit_lengths, labels, label_lengths, 0)
  assert grad.dtype == jnp.bfloat16
  np.testing.assert_allclose(grad.astype(np.float32), expected_grad, atol=1e-2)


def test_loss_and_gradient_need_no_temporary_as_large_as_the_logits():
  batch, frames, max_labels, vocab = 4, 100, 30, 200
  args = (jax.ShapeDtypeStruct((batch, frames, max_labels + 1, vocab), jnp.float32),
          jax.ShapeDtypeStruct((batch,), jnp.int32), jax.ShapeDtypeStruct((batch, max_labels), jnp.int32),
          jax.ShapeDtypeStruct((batch,), jnp.int32))
  compiled = jax.jit(jax.value_and_grad(lambda x, *rest: rnnt_loss(x, *rest).sum())).lower(*args).compile()
  logits_bytes = batch * frames * (max_labels + 1) * vocab * 4
  # Only [B, T+U, U+1]-sized tables and scan residuals: a few percent of the logits.
  assert compiled.memory_analysis().temp_size_in_bytes < 0.25 * logits_bytes
