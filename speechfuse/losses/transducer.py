"""RNN-T (transducer) loss: a log-space forward recursion over the anti-diagonals of the lattice.

The lattice of an utterance with T frames and U labels has nodes (t, u), t < T, u <= U (Graves 2012). From
node (t, u) a path either emits blank and moves to (t+1, u), or emits the next label `labels[u]` and moves to
(t, u+1); every path ends by emitting blank at (T-1, U). With `blank(t, u)` and `emit(t, u)` the log-probs of
those two moves,

  alpha(0, 0) = 0
  alpha(t, u) = logaddexp(alpha(t-1, u) + blank(t-1, u), alpha(t, u-1) + emit(t, u-1))
  log p(labels | x) = alpha(T-1, U) + blank(T-1, U).

All nodes of the anti-diagonal n = t + u depend only on diagonal n-1, so one `lax.scan` step per diagonal
updates a whole diagonal at once: T+U-1 sequential steps of [B, U+1] vector work instead of T*U scalar ones.

Memory. The recursion reads only the two [B, T, U+1] tables `blank` and `emit`, gathered from the
[B, T, U+1, V] logits once by `blank_and_label_log_probs`. That gather has a custom VJP: its backward pass
recomputes the softmax from the logits instead of keeping it, so loss + gradient hold no [B, T, U+1, V]
array besides the logits and their gradient. The recursion itself is differentiated by plain autodiff
through the scan: its residuals (one alpha diagonal per step) are [B, T+U, U+1], V times smaller than the
logits, so a hand-written alpha/beta backward pass would not save anything that matters.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# log(0) kept finite: with -inf, logaddexp(-inf, -inf) has a NaN gradient, and unreachable lattice nodes
# would poison the backward pass. -1e30 stays far below any real log-probability, and even summed over
# many thousands of steps stays far above float32's -3.4e38.
LOG_ZERO = -1e30


def loss_dtype(dtype: jnp.dtype) -> jnp.dtype:
  """The dtype losses are computed in: float32 for any narrower input, float64 for float64 inputs."""
  return jnp.promote_types(dtype, jnp.float32)


def next_label_ids(labels: jax.Array, label_lengths: jax.Array, blank_id: int) -> jax.Array:
  """The label emitted from each lattice row: `labels[:, u]` for u < U_b, `blank_id` elsewhere.

  Args:
    labels: [B, U] integer labels; positions at or past `label_lengths` may hold any value.
    label_lengths: [B] number of valid labels U_b.
    blank_id: the blank index, used as a harmless in-range placeholder.

  Returns:
    [B, U+1] int32 ids. Padding (which may be out of range, e.g. -1) becomes `blank_id`, so every gather
    stays in range; the lattice never uses the emit move from rows u >= U_b.
  """
  batch, max_labels = labels.shape
  valid = jnp.arange(max_labels)[None, :] < label_lengths[:, None]
  ids = jnp.where(valid, labels, blank_id).astype(jnp.int32)
  return jnp.concatenate([ids, jnp.full((batch, 1), blank_id, jnp.int32)], axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def blank_and_label_log_probs(
    logits: jax.Array, label_ids: jax.Array, blank_id: int) -> tuple[jax.Array, jax.Array]:
  """Log-softmax of the logits read at the blank and at one label per cell.

  Args:
    logits: [..., V] unnormalised scores, e.g. [B, T, U+1, V].
    label_ids: [...] integer ids in [0, V), one per cell.
    blank_id: the blank index.

  Returns:
    (blank [...], label [...]) log-probs in the loss dtype. The backward pass recomputes the softmax from
    `logits`, so no [..., V] residual is kept.
  """
  return _blank_and_label_log_probs_fwd(logits, label_ids, blank_id)[0]


def _blank_and_label_log_probs_fwd(logits, label_ids, blank_id):
  dtype = loss_dtype(logits.dtype)
  # Fusing backends read bfloat16 logits straight into the float32 reduction; XLA:CPU materialises the cast.
  log_norm = jax.nn.logsumexp(logits.astype(dtype), axis=-1)
  blank = logits[..., blank_id].astype(dtype) - log_norm
  label = jnp.take_along_axis(logits, label_ids[..., None], axis=-1)[..., 0].astype(dtype) - log_norm
  return (blank, label), (logits, label_ids, log_norm)


def _blank_and_label_log_probs_bwd(blank_id, residuals, cotangents):
  logits, label_ids, log_norm = residuals
  blank_cotangent, label_cotangent = cotangents
  dtype = log_norm.dtype
  vocab = jnp.arange(logits.shape[-1])
  # d log_softmax(x)_k / dx_j = [j == k] - softmax(x)_j: one elementwise pass over the logits.
  softmax = jnp.exp(logits.astype(dtype) - log_norm[..., None])
  grad = (jnp.where(vocab == blank_id, blank_cotangent[..., None], 0)
          + jnp.where(vocab == label_ids[..., None], label_cotangent[..., None], 0)
          - softmax * (blank_cotangent + label_cotangent)[..., None])
  return grad.astype(logits.dtype), None


blank_and_label_log_probs.defvjp(_blank_and_label_log_probs_fwd, _blank_and_label_log_probs_bwd)


def _skew(x: jax.Array, num_diagonals: int) -> jax.Array:
  """[B, T, U+1] -> [num_diagonals, B, U+1] with out[n, b, u] = x[b, n-u, u], LOG_ZERO where n-u is no frame."""
  frames, nodes = x.shape[1:]
  u = jnp.arange(nodes)[None, :]
  t = jnp.arange(num_diagonals)[:, None] - u  # [N, U+1]
  gathered = x[:, jnp.clip(t, 0, frames - 1), u]  # [B, N, U+1]
  return jnp.where((t >= 0) & (t < frames), gathered, LOG_ZERO).transpose(1, 0, 2)


def _at(x: jax.Array, index: jax.Array) -> jax.Array:
  """x[b, index[b]] for x: [B, N], index: [B]."""
  return jnp.take_along_axis(x, index[:, None], axis=1)[:, 0]


def transducer_log_likelihood(
    blank_logp: jax.Array,
    emit_logp: jax.Array,
    logit_lengths: jax.Array,
    label_lengths: jax.Array,
) -> jax.Array:
  """log p(labels | x) summed over all lattice paths, by the anti-diagonal forward recursion.

  Args:
    blank_logp: [B, T, U+1] log-prob of blank at node (t, u).
    emit_logp: [B, T, U+1] log-prob of the next label `labels[u]` at node (t, u); row U is never read.
      Cells outside a (pruned) lattice hold LOG_ZERO.
    logit_lengths: [B] valid frames T_b, 1 <= T_b <= T.
    label_lengths: [B] valid labels U_b, 0 <= U_b <= U.

  Returns:
    [B] log-likelihoods, alpha(T_b-1, U_b) + blank(T_b-1, U_b), in the inputs' dtype. Nodes past an
    utterance's lengths are computed but never reach its final node, so they need no mask.
  """
  batch, frames, nodes = blank_logp.shape
  num_steps = frames + nodes - 2  # diagonals 0 .. T+U-2 feed diagonals 1 .. T+U-1
  logit_lengths = jnp.asarray(logit_lengths, jnp.int32)
  label_lengths = jnp.asarray(label_lengths, jnp.int32)
  final_diagonal = logit_lengths - 1 + label_lengths  # [B], the diagonal of node (T_b-1, U_b)

  def step(carry, inputs):
    alpha, final_alpha = carry  # [B, U+1] on diagonal n, [B]
    n, blank_n, emit_n = inputs  # moves out of the nodes of diagonal n
    from_blank = alpha + blank_n
    from_emit = jnp.pad((alpha + emit_n)[:, :-1], ((0, 0), (1, 0)), constant_values=LOG_ZERO)
    alpha = jnp.logaddexp(from_blank, from_emit)  # diagonal n+1
    final_alpha = jnp.where(final_diagonal == n + 1, _at(alpha, label_lengths), final_alpha)
    return (alpha, final_alpha), None

  alpha = jnp.full((batch, nodes), LOG_ZERO, blank_logp.dtype).at[:, 0].set(0)
  final_alpha = jnp.where(final_diagonal == 0, _at(alpha, label_lengths), LOG_ZERO)
  inputs = (jnp.arange(num_steps), _skew(blank_logp, num_steps), _skew(emit_logp, num_steps))
  (_, final_alpha), _ = jax.lax.scan(step, (alpha, final_alpha), inputs)
  last_frame = jnp.take_along_axis(blank_logp, (logit_lengths - 1)[:, None, None], axis=1)[:, 0]  # [B, U+1]
  return final_alpha + _at(last_frame, label_lengths)


def rnnt_loss(
    logits: jax.Array,
    logit_lengths: jax.Array,
    labels: jax.Array,
    label_lengths: jax.Array,
    blank_id: int = 0,
) -> jax.Array:
  """RNN-T negative log-likelihood per utterance.

  Args:
    logits: [B, T, U+1, V] joiner outputs (unnormalised; any float dtype, bfloat16 included).
    logit_lengths: [B] valid frames T_b, 1 <= T_b <= T.
    labels: [B, U] integer labels, none equal to `blank_id`; padding may hold any value.
    label_lengths: [B] valid labels U_b, 0 <= U_b <= U.
    blank_id: the blank index in the vocabulary.

  Returns:
    [B] -log p(labels | x), float32 (float64 for float64 logits). Differentiable w.r.t. `logits`;
    the gradient has the logits' dtype and is zero at padded frames and rows.
  """
  label_ids = jnp.broadcast_to(next_label_ids(labels, label_lengths, blank_id)[:, None, :], logits.shape[:3])
  blank_logp, emit_logp = blank_and_label_log_probs(logits, label_ids, blank_id)
  return -transducer_log_likelihood(blank_logp, emit_logp, logit_lengths, label_lengths)
