"""The train step (exact gradient accumulation, non-finite guard) and the eval step, as pure functions to jit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from speechfuse.train.state import TrainState
from speechfuse.train.task import Task


def _microbatches(batch: dict[str, jax.Array], count: int) -> dict[str, jax.Array]:
  """[B, ...] -> [count, B / count, ...], micro-batch i = examples i, i + count, ...

  The strided split keeps each micro-batch spread over every data-parallel device (the batch axis is
  sharded in contiguous blocks), so no device idles while another works on its block.
  """

  def split(x):
    x = x.reshape((x.shape[0] // count, count) + x.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))

  return jax.tree.map(split, batch)


def make_train_step(task: Task, tx: optax.GradientTransformation, *,
                    grad_accum_steps: int) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, Any]]:
  """Builds train_step(state, batch) -> (state, metrics).

  The batch's loss is its summed loss over its summed count (task.loss's Mean), and so is every metric; with
  `grad_accum_steps` micro-batches (a lax.scan, so one compiled body) the sums and counts are added over them
  before dividing, so the gradient is that of the whole batch even when the micro-batches hold different numbers
  of real utterances or frames. If the loss or the gradient norm is not finite, params, optimizer state and
  extra collections keep their old values, `nonfinite_run` / `nonfinite_total` count it, and `step` still
  advances (the batch is consumed).

  metrics: scalars: loss, grad_norm and the task's metrics (float32), finite (1.0 / 0.0), nonfinite_run (int32).
  """

  def objective(params, extra, batch, rng, step):
    loss, (metrics, extra) = task.loss(params, extra, batch, rng, step=step, train=True)
    return loss.total, (loss.count, metrics, extra)

  grad_fn = jax.value_and_grad(objective, has_aux=True)
  add = lambda a, b: jax.tree.map(jnp.add, a, b)

  def accumulate(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
    """(summed loss, its count, metrics as Means, new extra, summed gradient) over the micro-batches."""
    if grad_accum_steps == 1:
      (total, (count, metrics, extra)), grads = grad_fn(state.params, state.extra, batch, rng, state.step)
      return total, count, metrics, extra, grads

    def body(carry, inputs):
      extra, grads_sum, total_sum, count_sum, metrics_sum = carry
      index, micro = inputs
      (total, (count, metrics, extra)), grads = grad_fn(state.params, extra, micro, jax.random.fold_in(rng, index),
                                                        state.step)
      return (extra, add(grads_sum, grads), total_sum + total, count_sum + count, add(metrics_sum, metrics)), None

    micro = _microbatches(batch, grad_accum_steps)
    first = jax.tree.map(lambda x: x[0], micro)
    # Trace once to learn the metrics' structure for the zero carry.
    _, (_, metrics_shape, _) = jax.eval_shape(lambda: objective(state.params, state.extra, first, rng, state.step))
    zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), tree)
    zero = jnp.zeros((), jnp.float32)
    carry = (state.extra, zeros(state.params), zero, zero, zeros(metrics_shape))
    (extra, grads, total, count, metrics), _ = jax.lax.scan(body, carry, (jnp.arange(grad_accum_steps), micro))
    return total, count, metrics, extra, grads

  def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    rng = jax.random.fold_in(state.rng, state.step)
    total, count, metrics, extra, grads = accumulate(state, batch, rng)
    scale = jnp.where(count > 0, 1.0 / jnp.maximum(count, 1e-30), 0.0)
    loss = total * scale
    grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    nonfinite_run = jnp.where(finite, 0, state.nonfinite_run + 1)
    new_state = state.replace(
        step=state.step + 1,
        params=keep_if_finite(params, state.params),
        opt_state=keep_if_finite(opt_state, state.opt_state),
        extra=keep_if_finite(extra, state.extra),
        nonfinite_run=nonfinite_run,
        nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
    )
    metrics = {**{name: mean.value for name, mean in metrics.items()}, "loss": loss, "grad_norm": grad_norm,
               "finite": finite.astype(jnp.float32), "nonfinite_run": nonfinite_run}
    return new_state, metrics

  return train_step


def make_eval_step(task: Task) -> Callable[[TrainState, dict[str, jax.Array]], Any]:
  """eval_step(state, batch) -> task.eval_step(state.variables, batch)."""
  return lambda state, batch: task.eval_step(state.variables, batch)
