"""Zipformer's scaling toolbox: schedules in the training step, Swoosh, BiasNorm, gradient-only regularisers.

After icefall, egs/librispeech/ASR/zipformer/scaling.py (Yao et al., "Zipformer: A faster and better encoder for
automatic speech recognition", ICLR 2024). Our own JAX code; only the math is icefall's.

  ScheduledFloat  piecewise linear in the training step (icefall's batch count), constant past its ends; `default`
                  when no step is given (icefall's value when batch_count is unset).
  swoosh_r(x) = softplus(x - 1) - 0.08 x - 0.313261687,  swoosh_l(x) = softplus(x - 4) - 0.08 x - 0.035.
  BiasNorm        x * exp(log_scale) / sqrt(mean((x - bias)^2)) over the channels (statistics in float32).

Gradient-only operations (jax.custom_vjp): the forward pass returns its input untouched, so a model's outputs are
bit-identical with them on or off; the backward pass adds icefall's terms to the incoming gradient g. They act only
when the training step is given (`step` not None) and, where icefall draws a probability per call, when `fires`:
a uniform hashed from (step, the module's path) falls below it, so each site fires at its own steps, at its rate,
with no RNG stream (and a compiled step stays small: no threefry per site):
  balance         per channel (last axis; statistics over every other axis, padding frames included as in icefall),
                  m = mean / stddev and r = rms; loss = |m - clip(m, min_mean, max_mean)| + |log(clip(r, min_rms,
                  max_rms) / r)|; dloss/dx normalised to rms grad_scale per channel; g + |g| * dloss/dx. The limits
                  come from min/max_positive through mean = 0.8139535143 atanh(2 p - 1) and from min/max_abs through
                  rms = 1.25331413732 abs (icefall's conversions for a normal distribution).
  whiten          metric = mean(diag(C^2)) / mean(diag(C))^2 over channel groups (C: each group's covariance of
                  mean-centred frames); when metric >= limit, g + grad_scale ||g|| / ||dmetric/dx|| * dmetric/dx.
  limit_param_value  pushes a parameter back into [min, max]: where it lies below min a positive gradient flips sign,
                  above max a negative one (icefall's limit_param_value; the value itself is not clamped).
  penalize_abs_values_gt  g + penalty * sign(x) where |x| > limit (an L1 penalty on the excess, icefall's attention
                  scores guard).
  scale_grad      g * alpha.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from speechfuse.nn import layers

Step = int | jax.Array | None


@dataclasses.dataclass(frozen=True)
class ScheduledFloat:
  """A value piecewise linear in the training step through `points` ((step, value), ...), constant past its ends.

  Attributes:
    points: (step, value) pairs in increasing step order.
    default: the value when no step is given.
  """
  points: tuple[tuple[float, float], ...]
  default: float = 0.0

  def __call__(self, step: Step) -> float | jax.Array:
    """The value at `step`: a float for a Python number or None, a float32 scalar for a traced step."""
    if step is None:
      return self.default
    steps, values = zip(*self.points)
    if isinstance(step, (int, float)):
      return float(np.interp(step, steps, values))
    step = jnp.asarray(step, jnp.float32)
    value = jnp.float32(values[0])
    for (x0, y0), (x1, y1) in zip(self.points[:-1], self.points[1:]):  # each segment's rise, clipped to its span
      value = value + (y1 - y0) / (x1 - x0) * jnp.clip(step - x0, 0.0, x1 - x0)
    return value


FloatLike = float | ScheduledFloat


def scheduled(value: FloatLike, step: Step) -> float | jax.Array:
  """`value` at `step`: itself if a constant, its schedule's value otherwise."""
  return value(step) if isinstance(value, ScheduledFloat) else value


def fires(module: nn.Module, probability: float | jax.Array, step: int | jax.Array) -> bool | jax.Array:
  """Whether `module`'s gradient operation acts at `step`: a uniform in [0, 1) hashed from (step, module.path) is
  below `probability` (a Python bool for a Python step and probability, else a bool scalar)."""
  site = zlib.crc32("/".join(module.path).encode())
  if isinstance(step, int) and isinstance(probability, float):
    return bool(_hash_uniform(np.uint32(step), np.uint32(site), np) < probability)
  return _hash_uniform(jnp.asarray(step).astype(jnp.uint32), jnp.uint32(site), jnp) < probability


def _hash_uniform(step, site, xp) -> Any:
  """A uniform in [0, 1) from two uint32 (numpy or jax): Chris Wellons' lowbias32 integer hash."""
  with np.errstate(over="ignore"):
    x = step * xp.uint32(0x9E3779B9) + site
    x = x ^ (x >> 16)
    x = x * xp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * xp.uint32(0x846CA68B)
    x = x ^ (x >> 16)
  return (x >> 8).astype(xp.float32) / np.float32(2 ** 24)


def swoosh_r(x: jax.Array) -> jax.Array:
  """SwooshR(x) = log(1 + exp(x - 1)) - 0.08 x - 0.313261687 (softplus in its stable form); SwooshR(0) ~ 0."""
  return jax.nn.softplus(x - 1.0) - 0.08 * x - 0.313261687


def swoosh_l(x: jax.Array) -> jax.Array:
  """SwooshL(x) = log(1 + exp(x - 4)) - 0.08 x - 0.035 (softplus in its stable form)."""
  return jax.nn.softplus(x - 4.0) - 0.08 * x - 0.035


# ---- balance -------------------------------------------------------------------------------------------------------


class BalancerLimits(NamedTuple):
  """Per-channel limits of `balance` (float32 scalars or floats): on mean / stddev, on rms, and the gradient scale."""
  min_mean: jax.Array | float
  max_mean: jax.Array | float
  min_rms: jax.Array | float
  max_rms: jax.Array | float
  grad_scale: jax.Array | float


def positive_fraction_to_mean(fraction: float | jax.Array) -> float | jax.Array:
  """The mean / stddev of a normal variable positive a `fraction` of the time, as icefall approximates it."""
  x = 2.0 * fraction - 1.0
  eps = 1e-10
  log = math.log if isinstance(x, float) else jnp.log
  return 0.8139535143 * (log(1 + x + eps) - log(1 - x + eps)) / 2.0


def abs_to_rms(mean_abs: float | jax.Array) -> float | jax.Array:
  """The rms of a zero-mean normal variable of mean absolute value `mean_abs`."""
  return 1.25331413732 * mean_abs


def balancer_gradient(x: jax.Array, limits: BalancerLimits) -> jax.Array:
  """The direction `balance` adds (times |g|): dloss/dx [..., channels] scaled to rms grad_scale per channel.

  In closed form (as PyTorch's autograd differentiates icefall's loss, |.| having derivative 0 at 0), with N values
  per channel, mean u, stddev s = sqrt(max(mean(x^2) - u^2, 1e-20)), rms r = sqrt(max(mean(x^2), 1e-20)), m = u / s:
    dloss/dx = sign(m - clip(m)) (1 / s - m (x - u) / s^2) / N + sign(r - clip(r)) x / (N r^2),
  the stddev and rms terms dropped where their floor binds.
  """
  x = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  count = math.prod(x.shape[:-1])
  mean = jnp.mean(x, axes)
  uncentered_var = jnp.mean(x * x, axes)
  stddev = jnp.sqrt(jnp.maximum(uncentered_var - mean * mean, 1e-20))
  rms = jnp.sqrt(jnp.maximum(uncentered_var, 1e-20))
  m = mean / stddev
  mean_sign = jnp.sign(m - jnp.clip(m, limits.min_mean, limits.max_mean))
  rms_sign = jnp.sign(rms - jnp.clip(rms, limits.min_rms, limits.max_rms))
  stddev_slope = jnp.where(uncentered_var - mean * mean > 1e-20, m / (stddev * stddev), 0.0)
  rms_slope = jnp.where(uncentered_var > 1e-20, rms_sign / (rms * rms), 0.0)
  grad = (mean_sign * (1.0 / stddev - stddev_slope * (x - mean)) + rms_slope * x) / count
  grad_rms = jnp.maximum(jnp.sqrt(jnp.mean(grad * grad, axes)), 1e-20)
  return grad * (limits.grad_scale / grad_rms)


@jax.custom_vjp
def balance(x: jax.Array, active: jax.Array, limits: BalancerLimits) -> jax.Array:
  """x unchanged; when `active` (bool scalar) its gradient g becomes g + |g| * balancer_gradient(x, limits)."""
  del active, limits
  return x


def _balance_fwd(x, active, limits):
  return x, (x, active, limits)


def _balance_bwd(residuals, g):
  x, active, limits = residuals

  def modified():
    g32 = g.astype(jnp.float32)
    return (g32 + jnp.abs(g32) * balancer_gradient(x, limits)).astype(g.dtype)

  return (jax.lax.cond(active, modified, lambda: g), np.zeros((), jax.dtypes.float0),
          jax.tree.map(jnp.zeros_like, limits))


balance.defvjp(_balance_fwd, _balance_bwd)


class Balancer(nn.Module):
  """icefall's Balancer on the last axis: identity forward, `balance` in the backward pass with probability `prob`.

  Attributes (constants or ScheduledFloat):
    min_positive, max_positive: the fraction of positive values per channel, converted to limits on mean / stddev.
    min_abs, max_abs: the mean absolute value per channel, converted to limits on the rms.
    grad_scale: rms of the added direction relative to |g|.
    prob: probability per call; None: icefall's 0.5 -> 0.125 over the first 8000 steps.
  """
  min_positive: FloatLike = 0.05
  max_positive: FloatLike = 0.95
  min_abs: FloatLike = 0.2
  max_abs: FloatLike = 100.0
  grad_scale: FloatLike = 0.04
  prob: FloatLike | None = None

  def __call__(self, x: jax.Array, step: Step) -> jax.Array:
    """x: [..., channels] -> x; step None: the identity in both passes."""
    if step is None:
      return x
    prob = BALANCER_PROB if self.prob is None else self.prob
    value = lambda v, convert=lambda v: v: jnp.asarray(convert(scheduled(v, step)), jnp.float32)
    limits = BalancerLimits(
        value(self.min_positive, positive_fraction_to_mean), value(self.max_positive, positive_fraction_to_mean),
        value(self.min_abs, abs_to_rms), value(self.max_abs, abs_to_rms), value(self.grad_scale))
    return balance(x, jnp.asarray(fires(self, scheduled(prob, step), step)), limits)


BALANCER_PROB = ScheduledFloat(((0.0, 0.5), (8000.0, 0.125)), default=0.4)


# ---- whiten --------------------------------------------------------------------------------------------------------


def _centred_groups(x: jax.Array, num_groups: int) -> jax.Array:
  """x [..., channels] -> float32 [groups, frames, channels / groups], each channel's mean over frames removed."""
  channels = x.shape[-1]
  x = x.reshape(-1, num_groups, channels // num_groups).astype(jnp.float32).transpose(1, 0, 2)
  return x - jnp.mean(x, axis=1, keepdims=True)


def whitening_metric(x: jax.Array, num_groups: int) -> jax.Array:
  """x [..., channels] -> float32 scalar >= 1: mean(diag(C^2)) / mean(diag(C))^2 over `num_groups` channel groups,
  C the covariance of each group over all frames (mean-centred); 1 when every group is white with one variance."""
  return _whitening_terms(_centred_groups(x, num_groups))[0]


def _whitening_terms(centred: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(metric, mean diag(C^2), mean diag(C), C [groups, c, c]) of centred groups [groups, frames, c]."""
  channels = centred.shape[0] * centred.shape[2]
  covariance = jnp.einsum("gnc,gnd->gcd", centred, centred)
  mean_square_diagonal = jnp.sum(covariance * covariance) / channels  # mean diag(C C) = ||C||_F^2 / channels
  mean_diagonal = jnp.sum(centred * centred) / channels  # mean diag(C)
  return mean_square_diagonal / (mean_diagonal ** 2 + 1e-20), mean_square_diagonal, mean_diagonal, covariance


def whitening_gradient(x: jax.Array, num_groups: int) -> tuple[jax.Array, jax.Array]:
  """(whitening_metric(x), its gradient with respect to x [..., channels] in float32), in closed form:
  d mean diag(C^2) = 4 X C / channels and d mean diag(C) = 2 X / channels for the centred groups X (whose gradient
  is already centred, so the centring passes it through)."""
  centred = _centred_groups(x, num_groups)
  metric, square, diagonal, covariance = _whitening_terms(centred)
  channels, denominator = x.shape[-1], diagonal ** 2 + 1e-20
  grad = (4.0 / channels) * jnp.einsum("gnc,gcd->gnd", centred, covariance) / denominator
  grad = grad - square * 2.0 * diagonal * (2.0 / channels) * centred / denominator ** 2
  return metric, grad.transpose(1, 0, 2).reshape(x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def whiten(x: jax.Array, num_groups: int, active: jax.Array, limit: jax.Array, grad_scale: jax.Array) -> jax.Array:
  """x unchanged; when `active` and whitening_metric(x) >= limit, its gradient g gains grad_scale ||g|| in the
  direction of dmetric/dx (norms over the whole tensor)."""
  del num_groups, active, limit, grad_scale
  return x


def _whiten_fwd(x, num_groups, active, limit, grad_scale):
  return x, (x, active, limit, grad_scale)


def _whiten_bwd(num_groups, residuals, g):
  x, active, limit, grad_scale = residuals

  def modified():
    metric, penalty = whitening_gradient(x, num_groups)
    g32 = g.astype(jnp.float32)
    scale = grad_scale * jnp.sqrt(jnp.sum(g32 * g32)) / (jnp.sqrt(jnp.sum(penalty * penalty)) + 1e-20)
    return jnp.where(metric >= limit, g32 + penalty * scale, g32).astype(g.dtype)

  return (jax.lax.cond(active, modified, lambda: g), np.zeros((), jax.dtypes.float0), jnp.zeros_like(limit),
          jnp.zeros_like(grad_scale))


whiten.defvjp(_whiten_fwd, _whiten_bwd)


class Whiten(nn.Module):
  """icefall's Whiten on the last axis: identity forward, `whiten` in the backward pass with probability `prob`.

  icefall switches its probability between (min, max) after each backward pass by whether the limit held (module
  state written in backward); here it is the max, the rate icefall applies while the limit is exceeded, which is
  when the penalty acts at all.

  Attributes:
    num_groups: channel groups (each whitened separately, with a common variance).
    whitening_limit: the metric above which the penalty acts (constant or ScheduledFloat).
    prob: probability per call.
    grad_scale: norm of the added term relative to ||g||.
  """
  num_groups: int
  whitening_limit: FloatLike
  grad_scale: FloatLike
  prob: float = 0.25

  def __call__(self, x: jax.Array, step: Step) -> jax.Array:
    """x: [..., channels] -> x; step None: the identity in both passes."""
    if step is None:
      return x
    value = lambda v: jnp.asarray(scheduled(v, step), jnp.float32)
    return whiten(x, self.num_groups, jnp.asarray(fires(self, self.prob, step)), value(self.whitening_limit),
                  value(self.grad_scale))


def whitening_schedule(limit: float, ratio: float = 2.0) -> ScheduledFloat:
  """icefall's _whitening_schedule: `limit` at step 0 rising to ratio x limit at step 20000."""
  return ScheduledFloat(((0.0, limit), (20000.0, ratio * limit)), default=limit)


# ---- parameter limits, score penalties, gradient scaling -----------------------------------------------------------


@jax.custom_vjp
def limit_param_value(x: jax.Array, active: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
  """x unchanged; when `active`, gradients that would move x further outside [low, high] flip sign."""
  del active, low, high
  return x


def _limit_fwd(x, active, low, high):
  return x, (x, active, low, high)


def _limit_bwd(residuals, g):
  x, active, low, high = residuals
  g_limited = g * jnp.where((g > 0) & (x < low), -1.0, 1.0).astype(g.dtype)
  g_limited = g_limited * jnp.where((g_limited < 0) & (x > high), -1.0, 1.0).astype(g.dtype)
  return jnp.where(active, g_limited, g), np.zeros((), jax.dtypes.float0), jnp.zeros_like(low), jnp.zeros_like(high)


limit_param_value.defvjp(_limit_fwd, _limit_bwd)


def limit_param(module: nn.Module, param: jax.Array, low: FloatLike, high: FloatLike, step: Step) -> jax.Array:
  """`param` through limit_param_value with icefall's probability 0.6 (identity without a step)."""
  if step is None:
    return param
  value = lambda v: jnp.asarray(scheduled(v, step), param.dtype)
  return limit_param_value(param, jnp.asarray(fires(module, 0.6, step)), value(low), value(high))


@jax.custom_vjp
def penalize_abs_values_gt(x: jax.Array, active: jax.Array, limit: float, penalty: float) -> jax.Array:
  """x unchanged; when `active`, its gradient gains penalty * sign(x) where |x| > limit."""
  del active, limit, penalty
  return x


def _penalize_fwd(x, active, limit, penalty):
  return x, (x, active, limit, penalty)


def _penalize_bwd(residuals, g):
  x, active, limit, penalty = residuals
  extra = jnp.where(jnp.abs(x) > limit, penalty * jnp.sign(x), 0.0).astype(g.dtype)
  return (jnp.where(active, g + extra, g), np.zeros((), jax.dtypes.float0), jnp.zeros_like(limit),
          jnp.zeros_like(penalty))


penalize_abs_values_gt.defvjp(_penalize_fwd, _penalize_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def scale_grad(x: jax.Array, alpha: float) -> jax.Array:
  """x unchanged; its gradient times `alpha`."""
  del alpha
  return x


scale_grad.defvjp(lambda x, alpha: (x, None), lambda alpha, _, g: (g * alpha,))


# ---- BiasNorm ------------------------------------------------------------------------------------------------------


class BiasNorm(nn.Module):
  """x * exp(log_scale) / sqrt(mean((x - bias)^2)) over the last axis; statistics in float32.

  Parameters: bias [channels] (normal, std 1e-4, icefall's init; logical axis `axis_name`), log_scale [] (1.0). With a
  step, log_scale is held in [-1.5, 1.5] by limit_param_value (icefall's log_scale_min / max).
  """
  axis_name: str = "embed"
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, step: Step = None) -> jax.Array:
    """x: [..., channels] -> [..., channels]."""
    bias = self.param("bias", layers.logical(nn.initializers.normal(1e-4), (self.axis_name,)), (x.shape[-1],),
                      self.param_dtype)
    log_scale = self.param("log_scale", nn.initializers.constant(1.0), (), self.param_dtype)
    log_scale = limit_param(self, log_scale, -1.5, 1.5, step)
    x32 = x.astype(jnp.float32)
    scales = jax.lax.rsqrt(jnp.mean((x32 - bias.astype(jnp.float32)) ** 2, axis=-1, keepdims=True))
    return (x32 * scales * jnp.exp(log_scale.astype(jnp.float32))).astype(self.dtype or x.dtype)
