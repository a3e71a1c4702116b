"""TrainState: everything a step reads and writes, and its sharded creation (abstract first, then allocated)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from speechfuse import parallel
from speechfuse.train.task import Task


class TrainState(struct.PyTreeNode):
  """The training state, one pytree: checkpointed whole, sharded leaf by leaf.

  Attributes:
    step: int32 [], completed train steps (= batches consumed, skipped ones included).
    params: float32 parameters.
    opt_state: the optimizer's state (its update count excludes skipped steps).
    extra: non-parameter variable collections, e.g. {"batch_stats": ...}; {} if none.
    rng: uint32 [2], the run's base key; step t uses fold_in(rng, t), so resuming needs no RNG bookkeeping.
    nonfinite_run: int32 [], consecutive steps whose loss or gradient was not finite (update skipped).
    nonfinite_total: int32 [], all skipped steps so far.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  extra: Any
  rng: jax.Array
  nonfinite_run: jax.Array
  nonfinite_total: jax.Array

  @property
  def variables(self) -> dict[str, Any]:
    """Flax variables for model.apply: {"params": ..., **extra}."""
    return {"params": self.params, **self.extra}


def example_batch(host_batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A one-example batch of zeros with `host_batch`'s dtypes and trailing shapes, identical on every process."""
  arrays = parallel.numeric_only(host_batch)
  return {key: np.zeros((1,) + value.shape[1:], value.dtype) for key, value in arrays.items()}


def _init_fn(task: Task, tx: optax.GradientTransformation):
  """init(rng, example) -> TrainState with logically boxed (nn.Partitioned) params and optimizer moments.

  The key is an argument, not a constant, so that everything is traced (constants would run eagerly, outside
  the mesh's shardings).
  """

  def init(rng: jax.Array, example: dict[str, jax.Array]) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    variables = dict(task.init(init_rng, example))
    params = variables.pop("params")
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=tx.init(params), extra=variables, rng=state_rng,
                      nonfinite_run=zero, nonfinite_total=zero)

  return init


def abstract_state(task: Task, tx: optax.GradientTransformation, seed: int, example: dict[str, np.ndarray],
                   mesh: Mesh, rules: parallel.mesh.LogicalRules) -> tuple[TrainState, TrainState]:
  """Shapes and shardings of the state, computed with jax.eval_shape (nothing allocated).

  Returns:
    (abstract, shardings): `abstract` is a TrainState of jax.ShapeDtypeStructs carrying their shardings (the
    restore target); `shardings` the matching NamedShardings (the jit in/out shardings).
  """
  boxed = jax.eval_shape(_init_fn(task, tx), jax.random.PRNGKey(seed), example)
  shardings = parallel.logical_shardings(nn.get_partition_spec(boxed), mesh, rules)
  # Unboxed without nn.unbox, which would apply sharding constraints to abstract values outside jit.
  unboxed = jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, boxed,
                         is_leaf=lambda x: isinstance(x, nn.Partitioned))
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), unboxed, shardings)
  return abstract, shardings


def create_state(task: Task, tx: optax.GradientTransformation, seed: int, example: dict[str, np.ndarray],
                 shardings: TrainState) -> TrainState:
  """Initialises the state directly into its shardings (no full copy on any one device)."""
  init = _init_fn(task, tx)
  return jax.jit(lambda rng, batch: nn.unbox(init(rng, batch)), out_shardings=shardings)(jax.random.PRNGKey(seed),
                                                                                          example)


def initial_variables(task: Task, seed: int) -> dict[str, Any]:
  """The variables a training run of `task` with config.seed = `seed` starts from (task.init_from applied), as
  plain arrays: the same key and example batch as the trainer's step-0 state (`_init_fn`), so this is the
  starting point of that run without training it (the theta_0 of a loss landscape, the encoder a probe reads).
  """
  example = example_batch(next(task.make_input("train", seed=seed, shard_index=0, shard_count=1)))
  init_rng, _ = jax.random.split(jax.random.PRNGKey(seed))
  return jax.jit(lambda rng, batch: nn.unbox(task.init(rng, batch)))(init_rng, example)
