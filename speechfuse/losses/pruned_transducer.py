"""Pruned RNN-T (Kuang et al. 2022, k2's rnnt_loss.py): the full joiner only on s_range lattice rows per frame.

Four steps, split as in k2 so that a model can run its own joiner between them:
1. `rnnt_loss_smoothed`: the "simple" loss of a trivial joiner, logits(t, u) = am[t] + lm[u], whose
   normaliser logsumexp_v(am[t, v] + lm[u, v]) is one [T, V] x [V, U+1] matmul of exponentials, so no
   [B, T, U+1, V] tensor exists. It also returns the occupation probability of every lattice move.
2. `get_rnnt_prune_ranges`: per frame, the s_range consecutive rows u through which the most paths cross that
   frame (k2's criterion), made monotone and connected so that at least one complete path survives.
3. `do_rnnt_pruning`: gathers the joiner inputs at those rows, [B, T, s_range, D]; the caller's joiner
   turns them into logits [B, T, s_range, V].
4. `rnnt_loss_pruned`: the RNN-T recursion of `transducer.py` on the full [B, T, U+1] lattice, with the
   cells outside each frame's range set to log(0).
`pruned_rnnt_loss` chains the four. Lattice tables use the node layout [B, T, U+1] of `transducer.py`
(k2's px [B, S, T+1] / py [B, S+1, T] transposed).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from speechfuse.losses.transducer import (
    LOG_ZERO, blank_and_label_log_probs, loss_dtype, next_label_ids, transducer_log_likelihood)


def _gather_rows(x: jax.Array, rows: jax.Array) -> jax.Array:
  """x[b, rows[b, ...]] for x: [B, N, ...] and integer rows: [B, ...]."""
  return jax.vmap(lambda x_b, rows_b: x_b[rows_b])(x, rows)


def rnnt_loss_smoothed(
    am: jax.Array,
    lm: jax.Array,
    logit_lengths: jax.Array,
    labels: jax.Array,
    label_lengths: jax.Array,
    *,
    lm_scale: float = 0.25,
    am_scale: float = 0.0,
    blank_id: int = 0,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """The simple (additive-joiner) RNN-T loss with LM-only / AM-only smoothing, and lattice occupations.

  Every move's log-prob is the interpolation (k2's `get_rnnt_logprobs_smoothed`)

    (1 - lm_scale - am_scale) * log softmax(am[t] + lm[u])
      + lm_scale * log softmax(lm[u]) + am_scale * log(softmax(am[t]) reweighted by a unigram LM),

  the unigram being lm's softmax averaged over the batch's valid rows (k2 averages over padding rows too).
  The LM-only term keeps the prediction network a usable LM early in training (icefall: lm_scale 0.25).

  Args:
    am: [B, T, V] acoustic projection (encoder side).
    lm: [B, U+1, V] label-context projection (prediction-network side).
    logit_lengths: [B] valid frames T_b >= 1.
    labels: [B, U] integer labels; padding may hold any value.
    label_lengths: [B] valid labels U_b.
    lm_scale: weight of the LM-only term.
    am_scale: weight of the AM-only term.
    blank_id: the blank index.

  Returns:
    (simple_loss [B], (emit_occupancy [B, T, U+1], blank_occupancy [B, T, U+1])): the loss is float32 and
    differentiable; the occupations (k2's px_grad / py_grad) are the posterior probabilities that a path
    takes the emit / blank move out of node (t, u), i.e. d log p / d move log-prob, with no gradient.
  """
  dtype = loss_dtype(am.dtype)
  am, lm = am.astype(dtype), lm.astype(dtype)
  label_ids = next_label_ids(labels, label_lengths, blank_id)  # [B, U+1]
  am_max = jax.lax.stop_gradient(am.max(axis=-1, keepdims=True))  # [B, T, 1]
  lm_max = jax.lax.stop_gradient(lm.max(axis=-1, keepdims=True))  # [B, U+1, 1]
  am_probs, lm_probs = jnp.exp(am - am_max), jnp.exp(lm - lm_max)
  tiny = jnp.finfo(dtype).tiny  # keeps log finite where all exponentials underflow
  # logsumexp_v(am[t, v] + lm[u, v]) = log sum_v exp(am - am_max) exp(lm - lm_max) + am_max + lm_max.
  log_norm = (jnp.log(jnp.einsum("btv,buv->btu", am_probs, lm_probs, precision=jax.lax.Precision.HIGHEST)
                      + tiny) + am_max + jnp.swapaxes(lm_max, 1, 2))  # [B, T, U+1]

  am_label = jnp.take_along_axis(am, jnp.broadcast_to(label_ids[:, None, :], log_norm.shape), axis=2)
  lm_label = jnp.take_along_axis(lm, label_ids[..., None], axis=2)[..., 0]  # [B, U+1]
  am_blank, lm_blank = am[..., blank_id, None], lm[:, None, :, blank_id]  # [B, T, 1], [B, 1, U+1]
  emit = am_label + lm_label[:, None, :] - log_norm
  blank = am_blank + lm_blank - log_norm

  lm_log_norm = jnp.log(lm_probs.sum(axis=-1)) + lm_max[..., 0]  # [B, U+1]
  emit_lm_only = (lm_label - lm_log_norm)[:, None, :]
  blank_lm_only = (lm[..., blank_id] - lm_log_norm)[:, None, :]

  valid_rows = (jnp.arange(lm.shape[1])[None, :] <= label_lengths[:, None]).astype(dtype)  # [B, U+1]
  lm_softmax = lm_probs / lm_probs.sum(axis=-1, keepdims=True)
  unigram = jnp.einsum("bu,buv->v", valid_rows, lm_softmax) / valid_rows.sum() + tiny  # [V]
  am_log_norm = jnp.log(am_probs @ unigram)[..., None] + am_max  # [B, T, 1]
  log_unigram = jnp.log(unigram)
  emit_am_only = am_label + log_unigram[label_ids][:, None, :] - am_log_norm
  blank_am_only = am_blank + log_unigram[blank_id] - am_log_norm

  joint_scale = 1.0 - lm_scale - am_scale
  emit = joint_scale * emit + lm_scale * emit_lm_only + am_scale * emit_am_only
  blank = joint_scale * blank + lm_scale * blank_lm_only + am_scale * blank_am_only

  def log_likelihood(blank, emit):
    return transducer_log_likelihood(blank, emit, logit_lengths, label_lengths)

  simple_loss = -log_likelihood(blank, emit)
  # The occupations come from a separate, gradient-free pass: they only steer the (integer) pruning.
  blank_occupancy, emit_occupancy = jax.grad(lambda b, e: log_likelihood(b, e).sum(), argnums=(0, 1))(
      jax.lax.stop_gradient(blank), jax.lax.stop_gradient(emit))
  return simple_loss, (emit_occupancy, blank_occupancy)


def get_rnnt_prune_ranges(
    emit_occupancy: jax.Array,
    blank_occupancy: jax.Array,
    logit_lengths: jax.Array,
    label_lengths: jax.Array,
    s_range: int,
) -> jax.Array:
  """The lattice rows kept for each frame: s_range consecutive rows starting at s_begin[b, t].

  k2's criterion (get_rnnt_prune_ranges; Kuang et al. 2022, Sec. 3.2): s_begin maximises, over windows of s_range
  rows at frame t, the occupation of the blank moves out of the window's rows (every path leaves frame t by
  exactly one blank move) minus the occupation of the emission into its first row from the row below at frame t
  (a path entering that way spent part of frame t outside the window). Then (k2's `_adjust_pruning_lower_bound`)
  it is made non-decreasing in t with steps of at most s_range - 1 and s_begin[0] = 0, so that the kept cells
  contain a connected path; from the last valid frame on, the window ends at row U_b so that the path can finish.
  That needs U_b <= (s_range - 1) * T_b.

  Args:
    emit_occupancy: [B, T, U+1] from `rnnt_loss_smoothed`.
    blank_occupancy: [B, T, U+1] from `rnnt_loss_smoothed`.
    logit_lengths: [B] valid frames T_b.
    label_lengths: [B] valid labels U_b.
    s_range: rows kept per frame (static); values above U+1 are clipped to U+1, which keeps the whole
      lattice (k2 clips to U, which can drop paths).

  Returns:
    [B, T, min(s_range, U+1)] int32 row indices in [0, U], consecutive along the last axis.
  """
  frames, nodes = emit_occupancy.shape[1:]
  s_range = min(s_range, nodes)
  cumulative = jnp.cumsum(jnp.pad(blank_occupancy, ((0, 0), (0, 0), (1, 0))), axis=-1)
  blank_mass = cumulative[..., s_range:] - cumulative[..., :-s_range]  # [B, T, U+2-s_range]: rows s..s+R-1
  entering = jnp.pad(emit_occupancy, ((0, 0), (0, 0), (1, 0)))[..., :nodes - s_range + 1]  # row s-1 -> s
  s_begin = jnp.argmax(blank_mass - entering, axis=-1).astype(jnp.int32)

  t = jnp.arange(frames, dtype=jnp.int32)[None, :]
  final_begin = jnp.maximum(label_lengths - s_range + 1, 0).astype(jnp.int32)[:, None]
  s_begin = jnp.where(t < logit_lengths[:, None] - 1, s_begin, final_begin)
  # Non-decreasing: each frame takes the smallest start of any later frame.
  s_begin = jax.lax.cummin(s_begin, axis=1, reverse=True)
  # Steps of at most s_range - 1 and a start at row 0: the same suffix minimum applied to
  # (s_range - 1) * t - s_begin, clipped at 0 (k2's transformation; proof in its docstring).
  slack = jnp.maximum(jax.lax.cummin((s_range - 1) * t - s_begin, axis=1, reverse=True), 0)
  s_begin = (s_range - 1) * t - slack
  return s_begin[..., None] + jnp.arange(s_range, dtype=jnp.int32)


def do_rnnt_pruning(am: jax.Array, lm: jax.Array, ranges: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The joiner inputs at the kept cells.

  Args:
    am: [B, T, D] encoder-side joiner input.
    lm: [B, U+1, D'] prediction-side joiner input.
    ranges: [B, T, R] kept rows from `get_rnnt_prune_ranges`.

  Returns:
    (am_pruned [B, T, R, D] (a broadcast), lm_pruned [B, T, R, D'] with lm_pruned[b, t, r] = lm[b, ranges[b, t, r]]).
  """
  am_pruned = jnp.broadcast_to(am[:, :, None, :], (*ranges.shape, am.shape[-1]))
  return am_pruned, _gather_rows(lm, ranges)


def rnnt_loss_pruned(
    logits: jax.Array,
    logit_lengths: jax.Array,
    labels: jax.Array,
    label_lengths: jax.Array,
    ranges: jax.Array,
    blank_id: int = 0,
) -> jax.Array:
  """RNN-T negative log-likelihood over the paths that stay inside the kept cells.

  Args:
    logits: [B, T, R, V] joiner outputs at the kept cells: logits[b, t, r] belongs to node (t, ranges[b, t, r]).
    logit_lengths: [B] valid frames T_b.
    labels: [B, U] integer labels; padding may hold any value.
    label_lengths: [B] valid labels U_b.
    ranges: [B, T, R] from `get_rnnt_prune_ranges` (consecutive rows per frame).
    blank_id: the blank index.

  Returns:
    [B] float32 losses, >= the full `rnnt_loss` on the same joiner (fewer paths), equal when R = U+1.
    An utterance whose labels cannot fit, U_b > (R - 1) * T_b, has no path left: its loss is about
    -LOG_ZERO = 1e30, with a finite gradient that carries no information.
  """
  nodes = labels.shape[1] + 1
  window = ranges.shape[-1]
  cell_label_ids = _gather_rows(next_label_ids(labels, label_lengths, blank_id), ranges)  # [B, T, R]
  blank_cells, emit_cells = blank_and_label_log_probs(logits, cell_label_ids, blank_id)
  # Scatter [B, T, R] back onto the lattice rows [B, T, U+1]; rows outside the window are log(0).
  offset = jnp.arange(nodes)[None, None, :] - ranges[..., :1]  # [B, T, U+1]
  inside = (offset >= 0) & (offset < window)
  offset = jnp.clip(offset, 0, window - 1)
  blank = jnp.where(inside, jnp.take_along_axis(blank_cells, offset, axis=-1), LOG_ZERO)
  emit = jnp.where(inside, jnp.take_along_axis(emit_cells, offset, axis=-1), LOG_ZERO)
  return -transducer_log_likelihood(blank, emit, logit_lengths, label_lengths)


def pruned_rnnt_loss(
    am: jax.Array,
    lm: jax.Array,
    joiner_fn: Callable[[jax.Array, jax.Array], jax.Array],
    logit_lengths: jax.Array,
    labels: jax.Array,
    label_lengths: jax.Array,
    *,
    joiner_inputs: tuple[jax.Array, jax.Array] | None = None,
    s_range: int = 5,
    lm_scale: float = 0.25,
    am_scale: float = 0.0,
    blank_id: int = 0,
) -> tuple[jax.Array, jax.Array]:
  """Pruned RNN-T: the simple loss picks s_range rows per frame, the full joiner runs only there.

  Args:
    am: [B, T, V] acoustic projection for the simple loss.
    lm: [B, U+1, V] label-context projection for the simple loss.
    joiner_fn: (enc [B, T, R, D], pred [B, T, R, D']) -> logits [B, T, R, V].
    logit_lengths: [B] valid frames T_b.
    labels: [B, U] integer labels; padding may hold any value.
    label_lengths: [B] valid labels U_b.
    joiner_inputs: (enc [B, T, D], pred [B, U+1, D']) fed to the joiner after pruning; (am, lm) if None.
      icefall uses separate projections for the simple loss and the joiner.
    s_range: rows kept per frame (static; icefall uses 5). Needs U_b <= (s_range - 1) * T_b, see
      `rnnt_loss_pruned`.
    lm_scale: LM-only smoothing of the simple loss.
    am_scale: AM-only smoothing of the simple loss.
    blank_id: the blank index.

  Returns:
    (pruned_loss [B], simple_loss [B]), float32; icefall blends them, e.g. 0.5 * simple + pruned after
    warm-up.
  """
  simple_loss, (emit_occupancy, blank_occupancy) = rnnt_loss_smoothed(
      am, lm, logit_lengths, labels, label_lengths, lm_scale=lm_scale, am_scale=am_scale, blank_id=blank_id)
  ranges = get_rnnt_prune_ranges(emit_occupancy, blank_occupancy, logit_lengths, label_lengths, s_range)
  encoder_out, predictor_out = (am, lm) if joiner_inputs is None else joiner_inputs
  logits = joiner_fn(*do_rnnt_pruning(encoder_out, predictor_out, ranges))
  pruned_loss = rnnt_loss_pruned(logits, logit_lengths, labels, label_lengths, ranges, blank_id)
  return pruned_loss, simple_loss
