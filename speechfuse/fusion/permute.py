"""Random permutations of every hidden space: a functionally identical copy of a model, to test alignment."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from speechfuse.fusion import spec as spec_lib
from speechfuse.fusion import transport
from speechfuse.fusion.spec import Spec, Variables


def random_maps(spec: Spec, rng: jax.Array) -> transport.Maps:
  """One random permutation matrix per part: whole heads permuted, then each head's features, per part.

  rng: a JAX PRNG key; it seeds numpy's generator (eager jax.random would compile once per permutation size).
  """
  generator = np.random.default_rng(np.asarray(jax.random.key_data(rng)).ravel())
  maps: transport.Maps = {}
  for space in spec.spaces:
    head_map = _permutation_matrix(generator, space.heads)
    maps[space.name] = tuple(_part_map(generator, space.heads, part.size, head_map) for part in space.parts)
  return maps


def random_permutation(variables: Variables, spec: Spec, rng: jax.Array) -> dict:
  """A copy of variables ({"params": ..., "batch_stats": ...}, boxed or not) with every hidden space permuted.

  The copy computes the same function (to float rounding of reordered sums). Returns plain (unboxed) arrays.
  """
  flat = spec_lib.flatten(variables)
  spec.validate(flat)
  return spec_lib.unflatten(transport.apply(flat, spec, random_maps(spec, rng)))


def _permutation_matrix(generator: np.random.Generator, n: int) -> np.ndarray:
  return np.eye(n, dtype=np.float32)[generator.permutation(n)]


def _part_map(generator: np.random.Generator, heads: int, size: int, head_map: np.ndarray) -> jax.Array:
  # Pair (i, j) takes target head j's within-head permutation; only pairs with head_map[i, j] = 1 contribute.
  within = np.stack([_permutation_matrix(generator, size) for _ in range(heads)])
  pairs = np.broadcast_to(within, (heads, heads, size, size))
  return transport.block_map(jnp.asarray(head_map), jnp.asarray(pairs))
