"""Moving variables by transport maps: every axis of a hidden space moves by its space's map.

A part's map is a matrix P [units, units], rows indexing the source model's units and columns the target's,
normalised so that each column sums to one (OTFusion's marginal correction, T diag(1/beta) for a plan T with
target marginal beta). An axis moves as x~[j] = sum_i P[i, j] x[i]: in the target's order, each unit is the
weighted average of the source units transported onto it, which is the paper's W~ = T^T W (Eq. 3) on the
output axis and W T (Eq. 2) on the input axis. A permutation matrix gathers exactly (float32, highest precision).
A member with a window (spec.Member.window) moves only its slice of the leaf; the rest of the leaf stays.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from speechfuse.fusion.spec import Member, Part, Space, Spec

Maps = dict[str, tuple[jax.Array, ...]]  # space name -> one map [units, units] per part, in the space's part order


def block_map(head_map: jax.Array, pair_maps: jax.Array) -> jax.Array:
  """head_map: [heads, heads], pair_maps: [heads, heads, size, size] -> [heads * size, heads * size].

  Entry ((i, a), (j, b)) = head_map[i, j] * pair_maps[i, j, a, b]: source head i goes to target head j with
  the within-head map of that pair; column sums stay one when head_map's and the pair maps' columns sum to one.
  """
  heads, _, size, _ = pair_maps.shape
  full = jnp.einsum("ij,ijab->iajb", head_map, pair_maps, precision=jax.lax.Precision.HIGHEST)
  return full.reshape(heads * size, heads * size)


def rows(x: jax.Array, member: Member, units: int) -> jax.Array:
  """The leaf x seen from its space: [units, features], one row per unit of the member's slice (its window), every
  other axis flattened."""
  return _rows(x, member.axes, member.window, units)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _rows(x: jax.Array, axes: tuple[int, ...], window: tuple[int, int] | None, units: int) -> jax.Array:
  # One compiled program per leaf shape, axes and window (eager, the slice, transpose and reshape each compile).
  if window is not None:
    x = x[_window_index(x.ndim, axes[0], window)]
  return jnp.moveaxis(x, axes, tuple(range(len(axes)))).reshape(units, -1)


def apply_member(x: jax.Array, member: Member, p: jax.Array) -> jax.Array:
  """Moves the member's axes of leaf x (within its window) by map p [units, units]; the result has x's shape and
  dtype."""
  return _move(x, p, member.axes, member.window)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _move(x: jax.Array, p: jax.Array, axes: tuple[int, ...], window: tuple[int, int] | None) -> jax.Array:
  # One compiled program per leaf shape and window: eager, each of these ops would compile on its own.
  if window is None:
    return _gather(x, p, axes)
  index = _window_index(x.ndim, axes[0], window)
  return x.at[index].set(_gather(x[index], p, axes))


def _window_index(ndim: int, axis: int, window: tuple[int, int]) -> tuple[slice, ...]:
  return tuple(slice(*window) if a == axis else slice(None) for a in range(ndim))


def _gather(x: jax.Array, p: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """x~[j] = sum_i p[i, j] x[i] along x's axes, flattened."""
  front = tuple(range(len(axes)))
  moved = jnp.moveaxis(x, axes, front)
  flat = moved.reshape(p.shape[0], -1).astype(jnp.float32)
  out = jnp.einsum("ij,if->jf", p.astype(jnp.float32), flat, precision=jax.lax.Precision.HIGHEST)
  return jnp.moveaxis(out.reshape(moved.shape), front, axes).astype(x.dtype)


def apply_space(flat: Mapping[str, Any], space: Space, maps: tuple[jax.Array, ...]) -> dict[str, Any]:
  """flat (spec.flatten) with every member of `space` moved by its part's map; other leaves unchanged."""
  out = dict(flat)
  for part, p in zip(space.parts, maps):
    for member in part.members:
      out[member.path] = apply_member(out[member.path], member, p)
  return out


def apply(flat: Mapping[str, Any], spec: Spec, maps: Maps) -> dict[str, Any]:
  """flat with the spaces named in `maps` moved (the maps act on distinct axes or windows: order does not matter)."""
  out = dict(flat)
  for space in spec.spaces:
    if space.name in maps:
      out = apply_space(out, space, maps[space.name])
  return out


def part_rows(flat: Mapping[str, Any], space: Space, part: Part, members: list[Member]) -> jax.Array:
  """The part's units as rows [units, features]: `members`' rows side by side, in float32."""
  units = space.units(part)
  return jnp.concatenate([rows(jnp.asarray(flat[m.path], jnp.float32), m, units) for m in members], axis=1)
