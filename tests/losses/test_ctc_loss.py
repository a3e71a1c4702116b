"""CTC loss against optax with paddings, a numpy forward recursion, and finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from losses_testlib import central_differences, ctc_nll
from speechfuse.losses import ctc_loss
from speechfuse.losses.ctc import INFEASIBLE_LOSS

FRAMES, VOCAB, MAX_LABELS = 12, 6, 4

_ctc_loss = jax.jit(ctc_loss, static_argnames="blank_id")  # eager dispatch of optax's scan is slow


def _batch(seed: int = 0):
  rng = np.random.default_rng(seed)
  logits = rng.standard_normal((4, FRAMES, VOCAB)).astype(np.float32)
  labels = rng.integers(1, VOCAB, (4, MAX_LABELS))
  labels[1, :3] = [2, 2, 3]  # a repeat: needs a blank in between
  logit_lengths = np.array([12, 9, 5, 7])
  label_lengths = np.array([4, 3, 0, 2])
  return logits, logit_lengths, labels, label_lengths


def test_matches_numpy_forward_recursion_with_varied_lengths():
  logits, logit_lengths, labels, label_lengths = _batch()
  loss = _ctc_loss(logits, logit_lengths, labels, label_lengths)
  expected = [ctc_nll(logits[b, :logit_lengths[b]], labels[b, :label_lengths[b]]) for b in range(4)]
  assert loss.dtype == jnp.float32 and loss.shape == (4,)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_matches_optax_given_paddings_and_other_blank_id():
  logits, logit_lengths, labels, label_lengths = _batch(1)
  labels = np.where(labels == 3, 0, labels)  # blank 3 is not a label; 0 is
  logit_paddings = (np.arange(FRAMES)[None] >= logit_lengths[:, None]).astype(np.float32)
  label_paddings = (np.arange(MAX_LABELS)[None] >= label_lengths[:, None]).astype(np.float32)
  expected = optax.ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=3)
  np.testing.assert_allclose(_ctc_loss(logits, logit_lengths, labels, label_lengths, blank_id=3), expected, rtol=1e-6)
  reference = [ctc_nll(logits[b, :logit_lengths[b]], labels[b, :label_lengths[b]], blank_id=3) for b in range(4)]
  np.testing.assert_allclose(expected, reference, rtol=1e-5)


def test_padding_contents_do_not_matter():
  logits, logit_lengths, labels, label_lengths = _batch(2)
  loss = _ctc_loss(logits, logit_lengths, labels, label_lengths)
  rng = np.random.default_rng(3)
  padded_labels = np.where(np.arange(MAX_LABELS)[None] >= label_lengths[:, None], -1, labels)
  padded_labels[1, 3] = padded_labels[1, 2]  # padding equal to the last label must not count as a repeat
  padded_logits = np.where(np.arange(FRAMES)[None, :, None] >= logit_lengths[:, None, None],
                           100 * rng.standard_normal(logits.shape), logits).astype(np.float32)
  np.testing.assert_allclose(_ctc_loss(padded_logits, logit_lengths, padded_labels, label_lengths), loss, rtol=1e-6)
  padded_labels[2, :] = 10_000  # out-of-vocabulary ids in padding
  np.testing.assert_allclose(_ctc_loss(padded_logits, logit_lengths, padded_labels, label_lengths), loss, rtol=1e-6)


def test_infeasible_alignment_gives_large_finite_loss_and_finite_gradient():
  rng = np.random.default_rng(4)
  logits = rng.standard_normal((3, 4, VOCAB)).astype(np.float32)
  labels = np.array([[2, 2, 0], [1, 2, 3], [1, 2, 3]])
  # "2 2" needs 3 frames; "1 2 3" needs 3 frames.
  logit_lengths, label_lengths = np.array([2, 2, 3]), np.array([2, 3, 3])
  loss = _ctc_loss(logits, logit_lengths, labels, label_lengths)
  grad = jax.jit(jax.grad(lambda x: ctc_loss(x, logit_lengths, labels, label_lengths).sum()))(logits)
  assert np.all(loss[:2] >= INFEASIBLE_LOSS) and np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
  assert loss[2] < 50
  assert np.all(_ctc_loss(logits, np.array([3, 3, 3]), labels, label_lengths) < 50)  # one more frame suffices


def test_bfloat16_logits_give_float32_loss():
  logits, logit_lengths, labels, label_lengths = _batch(5)
  loss_bf16 = _ctc_loss(jnp.asarray(logits, jnp.bfloat16), logit_lengths, labels, label_lengths)
  loss_f32 = _ctc_loss(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), logit_lengths, labels, label_lengths)
  assert loss_bf16.dtype == jnp.float32
  np.testing.assert_allclose(loss_bf16, loss_f32, rtol=1e-6)


def test_gradient_matches_finite_differences_float64():
  rng = np.random.default_rng(6)
  logits = rng.standard_normal((2, 5, 4))
  labels = np.array([[1, 1], [3, 2]])
  logit_lengths, label_lengths = np.array([5, 4]), np.array([2, 1])

  def reference(x):
    return sum(ctc_nll(x[b, :logit_lengths[b]], labels[b, :label_lengths[b]]) for b in range(2))

  with jax.enable_x64(True):
    grad = np.asarray(jax.jit(jax.grad(lambda x: ctc_loss(x, logit_lengths, labels, label_lengths).sum()))(
        jnp.asarray(logits)))
  np.testing.assert_allclose(grad, central_differences(reference, logits), atol=1e-7)
  assert np.all(grad[1, 4:] == 0)  # padded frames get no gradient


def test_jit_matches_eager():
  logits, logit_lengths, labels, label_lengths = _batch(7)
  np.testing.assert_allclose(_ctc_loss(logits, logit_lengths, labels, label_lengths),
                             ctc_loss(logits, logit_lengths, labels, label_lengths), rtol=1e-6)
