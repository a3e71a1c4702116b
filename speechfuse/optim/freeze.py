"""Freezing part of the parameters: for the first updates (encoder freezing at the start of fine-tuning), or for
the whole run (the frozen members of an encoder ensemble)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

# (path of a parameter as jax.tree_util key entries) -> whether it is frozen.
PathPredicate = Callable[[tuple[Any, ...]], bool]


class FreezeState(NamedTuple):
  inner: optax.OptState
  count: jax.Array  # int32 [], updates so far


def freeze_for_steps(tx: optax.GradientTransformation, steps: int,
                     frozen: PathPredicate) -> optax.GradientTransformation:
  """`tx` with the `frozen` parameters held still for its first `steps` updates.

  During the freeze the frozen parameters' gradients are zeroed before `tx` and their updates after it: `tx`'s
  global-norm clipping then measures the trainable gradients alone (a random head's large gradients into the
  frozen encoder would otherwise shrink the head's own step), and nothing moves a frozen parameter, neither the
  gradient step nor AdamW's decoupled weight decay. As fairseq's freeze_finetune_updates, the frozen parameters
  learn nothing meanwhile (their moments decay towards zero). The count is this wrapper's own: updates the
  trainer skips (non-finite steps) do not count.
  """

  def init(params):
    return FreezeState(tx.init(params), jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    active = state.count < steps
    hold = lambda tree: jax.tree_util.tree_map_with_path(
        lambda path, u: jnp.where(active, jnp.zeros_like(u), u) if frozen(path) else u, tree)
    updates, inner = tx.update(hold(updates), state.inner, params)
    return hold(updates), FreezeState(inner, state.count + 1)

  return optax.GradientTransformation(init, update)


def freeze(tx: optax.GradientTransformation, frozen: PathPredicate) -> optax.GradientTransformation:
  """`tx` on the other parameters; the `frozen` ones get zero updates for good, and no optimizer state.

  `tx` sees each frozen leaf as a scalar zero, so its state keeps the parameters' tree structure with one number
  per frozen leaf and moment (optax.multi_transform would leave optax.MaskedNode subtrees there, which the
  trainer's logical sharding of the state does not map; orbax refuses to save empty arrays), and global-norm
  clipping and weight decay do not see them.
  """

  def hide(tree):
    # Boxed (nn.Partitioned) parameters at init become plain scalars, with no logical axes to shard.
    return jax.tree_util.tree_map_with_path(lambda path, x: jnp.zeros((), jnp.float32) if frozen(path) else x,
                                            tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))

  def init(params):
    return tx.init(hide(params))

  def update(updates, state, params=None):
    inner, state = tx.update(hide(updates), state, None if params is None else hide(params))
    updates = jax.tree_util.tree_map_with_path(lambda path, u, g: jnp.zeros_like(g) if frozen(path) else u,
                                               inner, updates)
    return updates, state

  return optax.GradientTransformation(init, update)
