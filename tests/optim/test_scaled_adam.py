"""ScaledAdam against an independent float64 numpy transcription of icefall's update rules, jit and checkpointing of
its state, and the factory's "scaled_adam" on a flax param tree."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from speechfuse import optim
from speechfuse.optim.scaled_adam import ScaledAdamState, scaled_adam


class _Reference:
  """icefall's ScaledAdam.step (zipformer/optim.py) for unbatched numpy tensors, in float64, one step at a time.

  Written from icefall's code path by path: state per tensor, created at its first step; Python branches on the step.
  """

  def __init__(self, params, *, lr, b1, b2, eps, scalar_lr_scale, param_min_rms, param_max_rms, scalar_max,
               size_update_period, clipping_scale, clipping_update_period):
    self.params = {name: np.array(p, np.float64) for name, p in params.items()}
    self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
    self.scalar_lr_scale, self.min_rms, self.max_rms, self.scalar_max = (scalar_lr_scale, param_min_rms,
                                                                         param_max_rms, scalar_max)
    self.period, self.clipping_scale, self.clip_period = size_update_period, clipping_scale, clipping_update_period
    self.state = {}
    self.step = 0
    self.model_norms = None
    self.threshold = None
    self.hits = {"clipped": 0, "min_rms": 0, "max_rms": 0, "scalar_max": 0}  # how often each bound acted

  def _clipping_factor(self, grads):
    if self.step == 0:  # icefall: no state yet, so no clipping
      return 1.0
    total = 0.0
    for name, g in grads.items():
      if g.size == 1:
        total += float(np.sum(g**2)) * self.scalar_lr_scale**2
      else:
        total += float(np.sum((g * self.state[name]["param_rms"]) ** 2))
    norm = math.sqrt(total)
    if self.model_norms is None:
      self.model_norms = [0.0] * self.clip_period
    self.model_norms[self.step % self.clip_period] = norm
    irregular = [i for i in [10, 20, 40] if i < self.clip_period]
    if self.step % self.clip_period == 0 or self.step in irregular:
      ranked = sorted(self.model_norms)
      if self.step in irregular:
        ranked = ranked[-self.step:]
      median = ranked[min(len(ranked) - 1, (len(ranked) // 4) * 2)]
      self.threshold = self.clipping_scale * median
      if self.step in irregular:
        self.threshold *= 2.0
    if self.threshold is None:
      return 1.0
    factor = min(1.0, self.threshold / (norm + 1e-20))
    self.hits["clipped"] += factor < 1.0
    return factor

  def _tensor_step(self, name, g, lr):
    p = self.params[name]
    scalar = p.size == 1
    state = self.state.setdefault(name, {})
    if not state:
      state["exp_avg_sq"] = np.zeros_like(p)
      state["delta"] = np.zeros_like(p)
      if not scalar:
        state["param_rms"] = math.sqrt(float(np.mean(p**2)))
        state["scale_grads"] = [0.0] * self.period
        state["scale_exp_avg_sq"] = 0.0
    step = self.step
    state["exp_avg_sq"] = self.b2 * state["exp_avg_sq"] + (1 - self.b2) * g * g
    correction = 1 - self.b2 ** (step + 1)
    exp_avg_sq = state["exp_avg_sq"] / correction if correction < 0.99 else state["exp_avg_sq"]
    delta = -(lr * self.scalar_lr_scale if scalar else lr) * g / (np.sqrt(exp_avg_sq) + self.eps)
    if not scalar:
      state["scale_grads"][step % self.period] = float(np.sum(p * g))
      if step % self.period == self.period - 1:
        state["param_rms"] = math.sqrt(float(np.mean(p**2)))
      delta = delta * max(state["param_rms"], self.min_rms)
      if step % self.period == self.period - 1 and step > 0:
        beta2_corr = self.b2**self.period
        mean_sq = sum(x * x for x in state["scale_grads"]) / self.period
        state["scale_exp_avg_sq"] = beta2_corr * state["scale_exp_avg_sq"] + (1 - beta2_corr) * mean_sq
        size_step = (step + 1) // self.period
        scale_step = (-lr * self.scalar_lr_scale * math.sqrt(1 - beta2_corr**size_step) * sum(state["scale_grads"])
                      / (math.sqrt(state["scale_exp_avg_sq"]) + self.eps))
        if state["param_rms"] < self.min_rms:
          scale_step = 0.0
          self.hits["min_rms"] += 1
        scale_step = min(max(scale_step, -0.1), 0.1)
        bound = (self.max_rms - state["param_rms"]) / state["param_rms"]
        self.hits["max_rms"] += bound < scale_step
        scale_step = min(scale_step, bound)
        delta = delta + p * scale_step
    state["delta"] = self.b1 * state["delta"] + (1 - self.b1) * delta
    p = p + state["delta"]
    if scalar:
      self.hits["scalar_max"] += abs(float(p)) > self.scalar_max
      p = np.clip(p, -self.scalar_max, self.scalar_max)
    self.params[name] = p

  def update(self, grads):
    lr = float(self.lr(self.step)) if callable(self.lr) else self.lr
    factor = self._clipping_factor(grads)
    grads = {name: g * factor if factor != 0.0 else np.zeros_like(g) for name, g in grads.items()}
    for name, g in grads.items():
      self._tensor_step(name, g, lr)
    self.step += 1


_SHAPES = {"gain": (), "bias": (7,), "kernel": (5, 6), "conv": (3, 4, 2)}


def _problem(seed, tiny_bias):
  """Params, and 50 steps of gradients whose scale varies log-normally (so that clipping triggers now and then).

  The kernel's and the scalar's gradients lean against their sign, so their scale grows (towards param_max_rms,
  scalar_max); a tiny bias (rms below param_min_rms) takes the min-rms paths.
  """
  rng = np.random.default_rng(seed)
  params = {name: rng.normal(size=shape) for name, shape in _SHAPES.items()}
  params["gain"] = np.asarray(0.5)
  if tiny_bias:
    params["bias"] *= 3e-6
  grads = []
  for _ in range(50):
    scale = math.exp(1.5 * rng.normal())
    step = {name: scale * rng.normal(size=shape) for name, shape in _SHAPES.items()}
    step["kernel"] -= scale * 0.5 * np.sign(params["kernel"])
    step["gain"] = np.asarray(-scale * abs(rng.normal()))
    grads.append(step)
  return params, grads


_DEFAULTS = dict(b1=0.9, b2=0.98, eps=1e-8, scalar_lr_scale=0.1, param_min_rms=1e-5, param_max_rms=3.0,
                 scalar_max=10.0, size_update_period=4, clipping_scale=2.0, clipping_update_period=100)
# Short periods (regular median refreshes at 12, 24, ...; scale steps every 3), b2 = 0.9 (the second moment's bias
# correction stops at step 44), a decaying schedule, and bounds that the run reaches.
_SHORT = dict(_DEFAULTS, b2=0.9, size_update_period=3, clipping_update_period=12, param_max_rms=1.1, scalar_max=0.55)


def _decaying(t):
  # In float64 (under enable_x64): an int32 count divided in jax would give float32.
  return 0.08 / jnp.sqrt(1.0 + jnp.asarray(t, jnp.float64) / 10.0)


@pytest.mark.parametrize("hyper, lr, tiny_bias", [
    (_DEFAULTS, 0.045, False),
    (_SHORT, _decaying, True),
], ids=["icefall_defaults", "short_periods"])
def test_matches_the_numpy_transcription_of_icefall(hyper, lr, tiny_bias):
  params, grads = _problem(seed=0, tiny_bias=tiny_bias)
  reference = _Reference(params, lr=lr, **hyper)
  with jax.enable_x64(True):
    tx = scaled_adam(lr, **hyper)
    current = {name: jnp.asarray(p, jnp.float64) for name, p in params.items()}
    state = tx.init(current)
    update = jax.jit(tx.update)
    for t, step_grads in enumerate(grads):
      reference.update(step_grads)
      updates, state = update({name: jnp.asarray(g) for name, g in step_grads.items()}, state, current)
      current = optax.apply_updates(current, updates)
      for name in _SHAPES:
        np.testing.assert_allclose(np.asarray(current[name]), reference.params[name], rtol=1e-6, atol=0,
                                   err_msg=f"{name} after step {t}")
      if reference.threshold is not None:
        np.testing.assert_allclose(float(state.threshold), reference.threshold, rtol=1e-6)
    assert int(state.count) == 50
  # The run took the branches it is meant to test.
  assert 3 <= reference.hits["clipped"] <= 30
  if hyper is _SHORT:
    assert min(reference.hits.values()) > 0


def _tree_problem():
  params, grads = _problem(seed=1, tiny_bias=False)
  as32 = lambda tree: {name: jnp.asarray(x, jnp.float32) for name, x in tree.items()}
  return as32(params), [as32(g) for g in grads[:4]]


def test_state_is_arrays_that_jit_and_orbax_keep(tmp_path):
  params, grads = _tree_problem()
  tx = scaled_adam(0.045)
  state = jax.jit(tx.init)(params)
  structure = jax.tree.structure(state)
  jit_update = jax.jit(tx.update)
  for g in grads:
    updates, state = jit_update(g, state, params)
    params = optax.apply_updates(params, updates)
  assert isinstance(state, ScaledAdamState) and jax.tree.structure(state) == structure
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(state))
  assert int(state.count) == len(grads)

  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "state", state)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "state", jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  # The restored state continues exactly as the live one.
  expected, _ = jit_update(grads[0], state, params)
  assert isinstance(restored, ScaledAdamState)
  resumed, _ = jit_update(grads[0], restored, params)
  jax.tree.map(np.testing.assert_array_equal, resumed, expected)


class _Tiny(nn.Module):
  @nn.compact
  def __call__(self, x):
    kernel_init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
    y = nn.Dense(3, kernel_init=kernel_init)(x)
    return y * self.param("gain", nn.initializers.ones, ())


def test_the_factory_builds_scaled_adam_on_a_flax_tree_without_global_norm_clipping():
  config = optim.default_config()
  config.update(name="scaled_adam", learning_rate=0.045, schedule="eden", warmup_steps=10,
                eden_steps_per_epoch=100.0)
  tx, schedule = optim.make_optimizer(config, total_steps=1000, max_grad_norm=1.0)
  model, x = _Tiny(), jnp.ones((2, 4))
  boxed = model.init(jax.random.PRNGKey(0), x)["params"]
  # Init on boxed params, as the trainer's abstract state: per-element moments keep the logical axes, per-tensor
  # summaries are plain (replicated).
  boxed_state = jax.eval_shape(tx.init, boxed)
  assert len(boxed_state) == 1  # no clip_by_global_norm before it, though max_grad_norm > 0
  assert isinstance(boxed_state[0].exp_avg_sq["Dense_0"]["kernel"], nn.Partitioned)
  specs = nn.get_partition_spec(boxed_state)[0]
  assert specs.momentum["Dense_0"]["kernel"] == jax.sharding.PartitionSpec("embed", "mlp")
  assert specs.param_rms["Dense_0"]["kernel"] == jax.sharding.PartitionSpec()

  params = nn.unbox(boxed)
  state = jax.jit(tx.init)(params)
  loss = jax.jit(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2))

  @jax.jit
  def train_step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  before = loss(params)
  for _ in range(5):
    params, state = train_step(params, state)
  assert int(state[0].count) == 5
  assert all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(params))
  assert float(loss(params)) < float(before)
  assert float(schedule(0)) > 0
