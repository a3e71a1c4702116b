"""ScaledAdam, Zipformer's optimizer, as an optax GradientTransformation.

After icefall, egs/librispeech/ASR/zipformer/optim.py (Yao et al., Zipformer, ICLR 2024): Adam whose step is
proportional to each tensor's RMS, plus a learned scale per tensor and clipping relative to the recent median
gradient norm. icefall stacks same-shaped tensors to batch the work; only its math is reproduced here.

Notation: t = 0, 1, ... the update count (icefall's `step`), lr_t the learning rate at t, P = size_update_period,
Q = clipping_update_period, c = clipping_scale, rms(x) = sqrt(mean(x^2)) over a whole tensor, "scalar" = a
tensor of one element. r is a tensor's stored RMS: r = rms(p) at init, refreshed to rms(p) (p before the
update) at every t with t mod P = P - 1.

Clipping (first, over the whole tree; c = None disables it):
  n_t = sqrt(sum_tensors sum((g * w)^2)),  w = r (scalars: w = scalar_lr_scale)
  for t >= 1, n_t goes to slot t mod Q of a buffer of Q norms (zeros at first); at t = 0 nothing is recorded.
  threshold, at t in {10, 20, 40} with t < Q: 2 c x the (2 floor(t / 4))-th smallest of the t norms so far;
             at t > 0 with t mod Q = 0:       c x the min(Q - 1, 2 floor(Q / 4))-th smallest of the buffer
             (0-based ranks; between refreshes it stays).
  g <- g * min(1, threshold / (n_t + 1e-20)) once a threshold exists (from t = 10, or t = Q when Q <= 10);
  a factor of exactly 0 (an infinite norm) zeroes g.
Adam with the second moment only (no first-moment bias correction; momentum comes last):
  v_t = b2 v_{t-1} + (1 - b2) g^2,  v^_t = v_t / k_t if k_t = 1 - b2^(t+1) < 0.99, else v_t
  s_t = -lr_t g / (sqrt(v^_t) + eps)             (scalars: lr_t * scalar_lr_scale)
Tensors (not scalars):
  a[t mod P] = sum(p * g)                        (the gradient w.r.t. a log-scale of p)
  s_t <- s_t * max(r, param_min_rms)             (r refreshed first when t mod P = P - 1)
  when t mod P = P - 1 and t > 0, with j = (t + 1) / P and b2P = b2^P, a step in the scale of p:
    u_j = b2P u_{j-1} + (1 - b2P) mean_i(a_i^2)
    d = -lr_t scalar_lr_scale sqrt(1 - b2P^j) sum_i(a_i) / (sqrt(u_j) + eps)
    d <- 0 where r < param_min_rms; d <- clip(d, -0.1, 0.1); d <- min(d, (param_max_rms - r) / r)
    s_t <- s_t + d p
Momentum and the update:
  m_t = b1 m_{t-1} + (1 - b1) s_t,  p <- p + m_t;  scalars: p <- clip(p + m_t, -scalar_max, scalar_max)

Not reproduced: icefall's per-module learning-rate factors (get_parameter_groups_with_lrs) and its logging; where
icefall raises on a non-finite median, the threshold here becomes NaN and clipping stops (as icefall's min(1.0, nan)
= 1.0 would), leaving non-finite steps to the trainer's guard.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

# icefall's early threshold estimates (each doubled) before the first full buffer of Q norms.
_EARLY_ESTIMATES = (10, 20, 40)


class ScaledAdamState(NamedTuple):
  """Arrays only (orbax checkpoints it). The per-tensor fields are trees like the params."""
  count: jax.Array  # int32 [], updates so far
  norms: jax.Array  # [clipping_update_period], the recent clipping norms n_t (a ring buffer)
  threshold: jax.Array  # [], the clipping threshold, in use once a first estimate exists
  exp_avg_sq: optax.Updates  # like each param: v, the second moment of its gradient
  momentum: optax.Updates  # like each param: m, the momentum of its steps
  param_rms: optax.Updates  # [] per param: r; scalar_lr_scale for scalars (their weight in the norm)
  scale_grads: optax.Updates  # [size_update_period] per param: a, this period's sum(p * g) (zeros for scalars)
  scale_exp_avg_sq: optax.Updates  # [] per param: u, the moving mean of mean_i(a_i^2) (zero for scalars)


def _dtype(x) -> jnp.dtype:
  # State and arithmetic in float32 at least (float64 stays float64).
  return jnp.promote_types(x.dtype, jnp.float32)


def _rms(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.mean(jnp.square(x.astype(_dtype(x)))))


def _unboxed(tree):
  # Init may get logically boxed (nn.Partitioned) params: the per-tensor summaries are plain, replicated arrays.
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def scaled_adam(learning_rate: float | optax.Schedule, *, b1: float = 0.9, b2: float = 0.98, eps: float = 1e-8,
                scalar_lr_scale: float = 0.1, param_min_rms: float = 1e-5, param_max_rms: float = 3.0,
                scalar_max: float = 10.0, size_update_period: int = 4, clipping_scale: float | None = 2.0,
                clipping_update_period: int = 100) -> optax.GradientTransformation:
  """icefall's ScaledAdam (the update rules in the module docstring), defaults as icefall's.

  Args:
    learning_rate: lr_t, a float or a schedule of the update count (icefall: Eden, base 0.045).
    b1, b2, eps: momentum, second-moment decay, and the denominators' epsilon.
    scalar_lr_scale: the learning-rate factor of scalar params and of every tensor's scale step.
    param_min_rms, param_max_rms: bounds on the RMS that the steps are scaled with and the scale is learnt within.
    scalar_max: scalar params are clipped to [-scalar_max, scalar_max].
    size_update_period: P, the updates between refreshes of each tensor's RMS and scale steps.
    clipping_scale: c, clip the gradient's norm to c x the median recent norm; None disables clipping.
    clipping_update_period: Q, the norms the median is taken over, and the updates between its refreshes.

  Returns:
    The transformation; its update needs the params (tx.update(grads, state, params)).
  """
  if size_update_period < 1 or clipping_update_period < 1:
    raise ValueError(f"size_update_period={size_update_period} and clipping_update_period={clipping_update_period} "
                     "must be >= 1")
  period, window = size_update_period, clipping_update_period
  early = [t for t in _EARLY_ESTIMATES if t < window]
  first_estimate = early[0] if early else window

  def init(params):
    plain = _unboxed(params)
    dtype = functools.reduce(jnp.promote_types, [x.dtype for x in jax.tree.leaves(plain)], jnp.float32)
    zeros_like = lambda x: jnp.zeros(x.shape, _dtype(x))  # mapped over boxed params, keeps their logical axes
    return ScaledAdamState(
        count=jnp.zeros((), jnp.int32),
        norms=jnp.zeros((window,), dtype),
        threshold=jnp.zeros((), dtype),
        exp_avg_sq=jax.tree.map(zeros_like, params),
        momentum=jax.tree.map(zeros_like, params),
        param_rms=jax.tree.map(lambda x: jnp.asarray(scalar_lr_scale, _dtype(x)) if x.size == 1 else _rms(x), plain),
        scale_grads=jax.tree.map(lambda x: jnp.zeros((period,), _dtype(x)), plain),
        scale_exp_avg_sq=jax.tree.map(lambda x: jnp.zeros((), _dtype(x)), plain))

  def clip(grads: list[jax.Array], param_rms: list[jax.Array], state: ScaledAdamState):
    """-> (grads scaled by the clipping factor, the norms buffer, the threshold)."""
    t = state.count
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(r.dtype) * r)) for g, r in zip(grads, param_rms)))
    norms = jnp.where(t >= 1, state.norms.at[t % window].set(norm.astype(state.norms.dtype)), state.norms)
    is_early = jnp.any(t == jnp.asarray(early, jnp.int32))
    n = jnp.where(is_early, t, window)  # how many of the most recent norms the estimate ranks
    median = jnp.sort(norms)[window - n + jnp.minimum(n - 1, n // 4 * 2)]
    estimate = clipping_scale * median * jnp.where(is_early, 2.0, 1.0)
    refresh = is_early | ((t > 0) & (t % window == 0))
    threshold = jnp.where(refresh, estimate, state.threshold)
    ratio = threshold / (norm + 1e-20)
    factor = jnp.where((t >= first_estimate) & (ratio < 1.0), ratio, 1.0)
    grads = [jnp.where(factor == 0.0, 0.0, g * factor.astype(g.dtype)).astype(g.dtype) for g in grads]
    return grads, norms, threshold

  def tensor_update(t, lr, g, p, v, m, r, a, u):
    """One tensor's (update, v, m, r, a, u); g the clipped gradient, p the param before the update."""
    dtype = v.dtype
    g, p = g.astype(dtype), p.astype(dtype)
    v = b2 * v + (1.0 - b2) * jnp.square(g)
    correction = 1.0 - b2 ** (t + 1).astype(dtype)
    v_hat = jnp.where(correction < 0.99, v / correction, v)
    if p.size == 1:
      m = b1 * m + (1.0 - b1) * (-lr * scalar_lr_scale * g / (jnp.sqrt(v_hat) + eps))
      # p + this = clip(p + m, -scalar_max, scalar_max); exactly m when unclipped (no cancellation in p + m - p).
      return jnp.clip(m, -scalar_max - p, scalar_max - p), v, m, r, a, u
    step = -lr * g / (jnp.sqrt(v_hat) + eps)
    a = a.at[t % period].set(jnp.sum(p * g))
    period_end = t % period == period - 1
    r = jnp.where(period_end, _rms(p), r)
    step = step * jnp.maximum(r, param_min_rms)
    resize = period_end & (t > 0)
    decay = b2 ** period
    u = jnp.where(resize, decay * u + (1.0 - decay) * jnp.mean(jnp.square(a)), u)
    j = ((t + 1) // period).astype(dtype)
    d = -lr * scalar_lr_scale * jnp.sqrt(1.0 - decay ** j) * jnp.sum(a) / (jnp.sqrt(u) + eps)
    d = jnp.where(r < param_min_rms, 0.0, d)
    d = jnp.minimum(jnp.clip(d, -0.1, 0.1), (param_max_rms - r) / r)
    step = step + p * jnp.where(resize, d, 0.0)
    m = b1 * m + (1.0 - b1) * step
    return m, v, m, r, a, u

  def update(updates, state: ScaledAdamState, params=None):
    if params is None:
      raise ValueError("scaled_adam needs the params: tx.update(grads, state, params)")
    treedef = jax.tree.structure(params)
    leaves = lambda tree: treedef.flatten_up_to(tree)
    grads, param_rms = leaves(updates), leaves(state.param_rms)
    norms, threshold = state.norms, state.threshold
    if clipping_scale is not None:
      grads, norms, threshold = clip(grads, param_rms, state)
    t = state.count
    lr = learning_rate(t) if callable(learning_rate) else learning_rate
    per_tensor = [tensor_update(t, lr, *tensor) for tensor in zip(
        grads, leaves(params), leaves(state.exp_avg_sq), leaves(state.momentum), param_rms, leaves(state.scale_grads),
        leaves(state.scale_exp_avg_sq))]
    new_updates, v, m, r, a, u = (treedef.unflatten(field) for field in zip(*per_tensor))
    new_updates = jax.tree.map(lambda x, g: x.astype(g.dtype), new_updates, updates)
    return new_updates, ScaledAdamState(t + 1, norms, threshold, v, m, r, a, u)

  return optax.GradientTransformation(init, update)
