"""Pruned RNN-T: simple loss, occupations and pruned recursion against numpy; equality with the full loss."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from losses_testlib import lattice_forward_backward, log_softmax, move_occupancies
from speechfuse.losses import pruned_rnnt_loss, rnnt_loss
from speechfuse.losses import pruned_transducer as pt

BATCH, FRAMES, MAX_LABELS, VOCAB, HIDDEN = 3, 8, 5, 7, 6
LOGIT_LENGTHS = np.array([8, 6, 4])  # s_range 2 needs U_b <= T_b
LABEL_LENGTHS = np.array([5, 2, 4])

# Jitted once per shape: eager dispatch of the scans would dominate the test time.
_smoothed = jax.jit(pt.rnnt_loss_smoothed, static_argnames=("lm_scale", "am_scale"))
_prune_ranges = jax.jit(pt.get_rnnt_prune_ranges, static_argnums=4)
_rnnt_loss = jax.jit(rnnt_loss)


def _inputs(seed: int = 0):
  rng = np.random.default_rng(seed)
  am = rng.standard_normal((BATCH, FRAMES, VOCAB)).astype(np.float32)
  lm = rng.standard_normal((BATCH, MAX_LABELS + 1, VOCAB)).astype(np.float32)
  labels = rng.integers(1, VOCAB, (BATCH, MAX_LABELS))
  return am, lm, labels


def _joiner(params, enc, pred):
  """A small non-additive joiner: [..., HIDDEN] x 2 -> [..., VOCAB]."""
  return jnp.tanh(enc + pred) @ params


def _joiner_setup(seed: int = 1):
  rng = np.random.default_rng(seed)
  enc = rng.standard_normal((BATCH, FRAMES, HIDDEN)).astype(np.float32)
  pred = rng.standard_normal((BATCH, MAX_LABELS + 1, HIDDEN)).astype(np.float32)
  params = (2 * rng.standard_normal((HIDDEN, VOCAB))).astype(np.float32)
  return enc, pred, params


def _smoothed_reference(am, lm, labels, lm_scale, am_scale, blank_id=0):
  """Per-utterance losses and move occupations of the smoothed simple loss, each cell normalised directly."""
  valid_rows = [log_softmax(lm[b, :LABEL_LENGTHS[b] + 1]) for b in range(BATCH)]
  unigram = np.exp(np.concatenate(valid_rows)).mean(axis=0)
  losses, occupancies = [], []
  for b in range(BATCH):
    frames, num_labels = LOGIT_LENGTHS[b], LABEL_LENGTHS[b]
    a, l = am[b, :frames].astype(np.float64), lm[b, :num_labels + 1].astype(np.float64)
    log_probs = ((1 - lm_scale - am_scale) * log_softmax(a[:, None] + l[None])
                 + lm_scale * log_softmax(l)[None] + am_scale * log_softmax(a + np.log(unigram))[:, None])
    blank = log_probs[..., blank_id]
    emit = np.full(blank.shape, -np.inf)
    for u in range(num_labels):
      emit[:, u] = log_probs[:, u, labels[b, u]]
    losses.append(-lattice_forward_backward(blank, emit)[2])
    occupancies.append(move_occupancies(blank, emit))
  return np.array(losses), occupancies


def test_simple_loss_without_smoothing_is_rnnt_of_additive_joiner():
  am, lm, labels = _inputs()
  simple, _ = _smoothed(am, lm, LOGIT_LENGTHS, labels, LABEL_LENGTHS, lm_scale=0.0, am_scale=0.0)
  full = _rnnt_loss(am[:, :, None] + lm[:, None], LOGIT_LENGTHS, labels, LABEL_LENGTHS)
  assert simple.dtype == jnp.float32
  np.testing.assert_allclose(simple, full, rtol=1e-5)


def test_smoothed_loss_and_occupations_match_numpy():
  am, lm, labels = _inputs(2)
  labels[1, 2:] = -1  # padding may hold anything
  simple, (emit_occ, blank_occ) = _smoothed(
      am, lm, LOGIT_LENGTHS, labels, LABEL_LENGTHS, lm_scale=0.25, am_scale=0.1)
  expected, occupancies = _smoothed_reference(am, lm, labels, 0.25, 0.1)
  np.testing.assert_allclose(simple, expected, rtol=1e-5)
  for b, (expected_blank, expected_emit) in enumerate(occupancies):
    frames, nodes = expected_blank.shape
    np.testing.assert_allclose(blank_occ[b, :frames, :nodes], expected_blank, atol=1e-5)
    np.testing.assert_allclose(emit_occ[b, :frames, :nodes], np.nan_to_num(expected_emit), atol=1e-5)
    # No path leaves the utterance's lattice; each frame emits exactly one blank; U_b labels in all.
    for occ in (blank_occ[b], emit_occ[b]):
      assert np.all(occ[frames:] == 0) and np.all(occ[:, nodes:] == 0)
    np.testing.assert_allclose(blank_occ[b].sum(axis=1), (np.arange(FRAMES) < frames).astype(float), atol=1e-5)
    np.testing.assert_allclose(emit_occ[b].sum(), nodes - 1, rtol=1e-5)


def _prune_ranges_reference(emit_occupancy, blank_occupancy, frames, num_labels, s_range):
  """k2's get_rnnt_prune_ranges for one utterance, written out from its definition (Kuang et al. 2022, Sec. 3.2):
  at frame t the window start s maximises the blank (frame-advancing) mass of rows s..s+R-1 minus the emission
  into row s from row s-1 at t; from the last frame on it ends at the last row; then the closed-form fix-up
  (monotone, steps < R, start 0) of k2's _adjust_pruning_lower_bound."""
  total_frames, nodes = emit_occupancy.shape
  s_begin = np.empty(total_frames, int)
  for t in range(total_frames):
    if t < frames - 1:
      scores = [blank_occupancy[t, k:k + s_range].sum() - (emit_occupancy[t, k - 1] if k else 0.0)
                for k in range(nodes - s_range + 1)]
      s_begin[t] = np.argmax(scores)
    else:
      s_begin[t] = max(num_labels - s_range + 1, 0)
  s_begin = np.array([s_begin[t:].min() for t in range(total_frames)])
  s_begin = np.array([min(max(s_begin[j] - (s_range - 1) * (j - t) for j in range(t, total_frames)),
                          (s_range - 1) * t) for t in range(total_frames)])
  return s_begin[:, None] + np.arange(s_range)


def test_prune_ranges_follow_k2s_criterion_on_values_written_by_hand():
  """One utterance, 4 frames, 3 labels (4 rows), s_range 2. Window scores (k2: blank mass in the window minus the
  emission into its first row from below):
    frame 0  blank .9 .1 0 0,   emit .1 0 0 0:     s=0: .9+.1 = 1.0   s=1: .1+0-.1 = 0    s=2: 0-0 = 0      -> 0
    frame 1  blank .1 .3 .2 0,  emit .3 .4 .5 0:   s=0: .1+.3 = .4    s=1: .3+.2-.3 = .2  s=2: .2+0-.4 = -.2 -> 0
    frame 2  blank 0 .5 .2 .1,  emit 0 .1 .3 0:    s=0: 0+.5 = .5     s=1: .5+.2-0 = .7   s=2: .2+.1-.1 = .2 -> 1
    frame 3  the last frame: the window ends at row 3                                                      -> 2
  Starts 0, 0, 1, 2 already satisfy the fix-up. The summed node occupancy (emit + blank) would pick s=1 at frame 1
  (rows 1-2 hold .7 + .7 against rows 0-1's .4 + .7): starts 0, 1, 1, 2."""
  blank = np.array([[.9, .1, 0, 0], [.1, .3, .2, 0], [0, .5, .2, .1], [0, 0, 0, 1]], np.float32)[None]
  emit = np.array([[.1, 0, 0, 0], [.3, .4, .5, 0], [0, .1, .3, 0], [0, 0, 0, 0]], np.float32)[None]
  ranges = np.asarray(_prune_ranges(emit, blank, np.array([4]), np.array([3]), 2))
  np.testing.assert_array_equal(ranges[0, :, 0], [0, 0, 1, 2])
  np.testing.assert_array_equal(ranges[0], np.array([0, 0, 1, 2])[:, None] + np.arange(2))


def test_prune_ranges_match_reference_and_admit_a_path():
  am, lm, labels = _inputs(3)
  _, (emit_occ, blank_occ) = _smoothed(am, lm, LOGIT_LENGTHS, labels, LABEL_LENGTHS)
  rng = np.random.default_rng(4)
  random_emit, random_blank = (rng.random(emit_occ.shape).astype(np.float32) for _ in range(2))  # fix-ups do work
  for emit, blank in [(emit_occ, blank_occ), (random_emit, random_blank)]:
    for s_range in (2, 3, 5):
      ranges = np.asarray(_prune_ranges(emit, blank, LOGIT_LENGTHS, LABEL_LENGTHS, s_range))
      assert ranges.shape == (BATCH, FRAMES, s_range) and ranges.dtype == np.int32
      for b in range(BATCH):
        np.testing.assert_array_equal(
            ranges[b], _prune_ranges_reference(np.asarray(emit)[b], np.asarray(blank)[b], LOGIT_LENGTHS[b],
                                               LABEL_LENGTHS[b], s_range))
        s_begin = ranges[b, :, 0]
        assert s_begin[0] == 0 and ranges.min() >= 0 and ranges.max() <= MAX_LABELS
        assert np.all(np.diff(s_begin) >= 0) and np.all(np.diff(s_begin) <= s_range - 1)
        assert LABEL_LENGTHS[b] in ranges[b, LOGIT_LENGTHS[b] - 1]


def test_prune_ranges_cover_everything_when_s_range_exceeds_labels():
  am, lm, labels = _inputs(5)
  _, (emit_occ, blank_occ) = _smoothed(am, lm, LOGIT_LENGTHS, labels, LABEL_LENGTHS)
  ranges = _prune_ranges(emit_occ, blank_occ, LOGIT_LENGTHS, LABEL_LENGTHS, MAX_LABELS + 4)
  np.testing.assert_array_equal(ranges, np.broadcast_to(np.arange(MAX_LABELS + 1), (BATCH, FRAMES, MAX_LABELS + 1)))


def test_pruned_recursion_and_gradient_match_numpy_on_masked_lattice():
  am, lm, labels = _inputs(6)
  enc, pred, params = _joiner_setup(7)
  _, (emit_occ, blank_occ) = _smoothed(am, lm, LOGIT_LENGTHS, labels, LABEL_LENGTHS)
  ranges = _prune_ranges(emit_occ, blank_occ, LOGIT_LENGTHS, LABEL_LENGTHS, 3)
  logits = _joiner(params, *pt.do_rnnt_pruning(enc, pred, ranges))  # [B, T, 3, V]
  loss = jax.jit(pt.rnnt_loss_pruned)(logits, LOGIT_LENGTHS, labels, LABEL_LENGTHS, ranges)
  grad = jax.jit(jax.grad(lambda x: pt.rnnt_loss_pruned(x, LOGIT_LENGTHS, labels, LABEL_LENGTHS, ranges).sum()))(
      logits)
  full_logits = np.asarray(_joiner(params, enc[:, :, None], pred[:, None]), np.float64)  # [B, T, U+1, V]
  ranges, grad = np.asarray(ranges), np.asarray(grad)
  for b in range(BATCH):
    frames, nodes = LOGIT_LENGTHS[b], LABEL_LENGTHS[b] + 1
    log_probs = log_softmax(full_logits[b, :frames, :nodes])
    kept = np.zeros((frames, nodes), bool)
    for t in range(frames):
      kept[t, ranges[b, t][ranges[b, t] < nodes]] = True
    blank = np.where(kept, log_probs[..., 0], -np.inf)
    emit = np.full((frames, nodes), -np.inf)
    for u in range(nodes - 1):
      emit[:, u] = np.where(kept[:, u], log_probs[:, u, labels[b, u]], -np.inf)
    np.testing.assert_allclose(loss[b], -lattice_forward_backward(blank, emit)[2], rtol=1e-5)
    blank_occ_ref, emit_occ_ref = move_occupancies(blank, emit)
    expected = (blank_occ_ref + emit_occ_ref)[..., None] * np.exp(log_probs)
    expected[..., 0] -= blank_occ_ref
    for u in range(nodes - 1):
      expected[:, u, labels[b, u]] -= emit_occ_ref[:, u]
    for t in range(FRAMES):
      for r, u in enumerate(ranges[b, t]):
        cell = expected[t, u] if t < frames and u < nodes else np.zeros(VOCAB)
        np.testing.assert_allclose(grad[b, t, r], cell, atol=1e-5)


def test_full_range_equals_full_rnnt_loss_with_gradients():
  am, lm, labels = _inputs(8)
  enc, pred, params = _joiner_setup(9)

  def pruned(enc, pred, params, s_range):
    return pruned_rnnt_loss(am, lm, functools.partial(_joiner, params), LOGIT_LENGTHS, labels, LABEL_LENGTHS,
                            joiner_inputs=(enc, pred), s_range=s_range)[0].sum()

  def full(enc, pred, params):
    logits = _joiner(params, enc[:, :, None], pred[:, None])
    return rnnt_loss(logits, LOGIT_LENGTHS, labels, LABEL_LENGTHS).sum()

  expected, expected_grads = jax.jit(jax.value_and_grad(full, argnums=(0, 1, 2)))(enc, pred, params)
  for s_range in (MAX_LABELS + 1, MAX_LABELS + 3):
    loss, grads = jax.jit(jax.value_and_grad(pruned, argnums=(0, 1, 2)), static_argnums=3)(enc, pred, params, s_range)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
      np.testing.assert_allclose(grad, expected_grad, atol=1e-4)


def test_pruned_loss_bounds_full_loss_and_trains_in_bfloat16():
  am, lm, labels = _inputs(10)
  enc, pred, params = _joiner_setup(11)
  full = _rnnt_loss(_joiner(params, enc[:, :, None], pred[:, None]), LOGIT_LENGTHS, labels, LABEL_LENGTHS)

  @jax.jit
  def losses(am, lm, enc, pred, params):
    return pruned_rnnt_loss(am, lm, functools.partial(_joiner, params), LOGIT_LENGTHS, labels, LABEL_LENGTHS,
                            joiner_inputs=(enc, pred), s_range=3)

  pruned, simple = losses(am, lm, enc, pred, params)
  assert pruned.dtype == simple.dtype == jnp.float32
  assert np.all(np.asarray(pruned) >= np.asarray(full) - 1e-4)  # a subset of the paths
  bf16 = [jnp.asarray(x, jnp.bfloat16) for x in (am, lm, enc, pred, params)]
  pruned_bf16, simple_bf16 = losses(*bf16)
  assert pruned_bf16.dtype == simple_bf16.dtype == jnp.float32
  np.testing.assert_allclose(pruned_bf16, pruned, rtol=0.05)
  grads = jax.jit(jax.grad(lambda *xs: sum(l.sum() for l in losses(*xs)), argnums=(0, 1, 2, 3, 4)))(*bf16)
  for grad, x in zip(grads, bf16):
    assert grad.dtype == jnp.bfloat16 and grad.shape == x.shape and np.all(np.isfinite(np.asarray(grad, np.float32)))
