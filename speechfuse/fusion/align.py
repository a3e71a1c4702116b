"""Optimal-transport alignment of a source model onto a target model, one map per hidden space (OTFusion).

For each space in the spec's dependency order:
  1. Support points: each unit's row of weights, every member leaf of the part side by side (`transport.rows`).
     A member is read only when all its other axes are fixed or belong to spaces already aligned; those axes of
     the source have been moved by their maps already, which is OTFusion's input alignment (paper Eq. 2).
     Activations mode (OTFusion's alternative): each unit's activations on the same inputs in both models
     (`architectures.ctc_activations`), which need no input alignment.
  2. Cost: Euclidean distance between source and target rows (squared with squared=True), uniform marginals.
  3. Solver: "exact" (a permutation by linear assignment, scipy) or "sinkhorn" (ott-jax, entropic, jitted, so it
     runs on the accelerator; `epsilon` is relative to the cost after `scale_cost`, "max_cost" by default).
  4. Headed spaces (attention): every (source head, target head) pair is solved within heads for each part, the
     pair costs summed over parts form the head-level cost, and the head-level plan weights the pair maps
     (`transport.block_map`).
  5. The plan T becomes the map P = T diag(1/beta) (OTFusion's marginal correction; n * T for uniform beta) and
     moves every axis of the space (output alignment, Eq. 3; biases, norm statistics and conv taps alike).

With rounds > 0 (weights mode), the greedy pass is refined by coordinate descent, Git Re-Basin's weight matching
(Ainsworth et al., 2023): each space in turn is re-solved from every member of its parts, the source's other axes
moved by the other spaces' current maps, so a space is matched on the weights that read it as well as on those
that write it (the greedy pass only sees what is aligned before it, e.g. the residual stream only its writers).

Returns the aligned source, the maps and a report per space: the transport cost <T, D> (T of unit mass), the
cost of leaving the source as it is (the identity plan), the mean over source units of their largest map entry
(1 for a permutation; 1/n for a uniform plan) and whether Sinkhorn converged.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import geometry
from ott.solvers import linear
from scipy import optimize

from speechfuse.fusion import spec as spec_lib
from speechfuse.fusion import transport
from speechfuse.fusion.spec import Space, Spec, Variables

SOLVERS = ("exact", "sinkhorn")


@dataclasses.dataclass(frozen=True)
class SpaceReport:
  units: int
  cost: float
  identity_cost: float
  max_mass: float
  converged: bool


@functools.partial(jax.jit, static_argnames="squared")
def cost_matrix(x: jax.Array, y: jax.Array, squared: bool = False) -> jax.Array:
  """x: [n, features], y: [m, features] -> [n, m] (squared) Euclidean distances, float32, full precision.

  Jitted: one compiled program per shape pair (eager, each of its ops would compile on its own).
  """
  dot = jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)
  sq = jnp.maximum(jnp.sum(x * x, 1)[:, None] + jnp.sum(y * y, 1)[None, :] - 2 * dot, 0.0)
  return sq if squared else jnp.sqrt(sq)


def exact_maps(costs: jax.Array) -> tuple[jax.Array, bool]:
  """costs: [batch, n, n] -> (permutation matrices [batch, n, n] minimising each total cost, True)."""
  maps = np.zeros(costs.shape, np.float32)
  for b, cost in enumerate(np.asarray(costs, np.float64)):
    rows, cols = optimize.linear_sum_assignment(cost)
    maps[b, rows, cols] = 1.0
  return jnp.asarray(maps), True


@functools.partial(jax.jit, static_argnames=("epsilon", "scale_cost", "threshold", "max_iterations"))
def _sinkhorn(costs: jax.Array, epsilon: float, scale_cost: str | float, threshold: float,
              max_iterations: int) -> tuple[jax.Array, jax.Array]:
  def solve(cost):
    geom = geometry.Geometry(cost_matrix=cost, epsilon=epsilon, scale_cost=scale_cost)
    out = linear.solve(geom, threshold=threshold, max_iterations=max_iterations)
    return out.matrix * cost.shape[1], out.converged  # T diag(1/beta), beta = 1/n

  return jax.vmap(solve)(costs)


def sinkhorn_maps(costs: jax.Array, epsilon: float = 1e-2, scale_cost: str | float = "max_cost",
                  threshold: float = 1e-3, max_iterations: int = 2000) -> tuple[jax.Array, bool]:
  """costs: [batch, n, n] -> (corrected entropic plans [batch, n, n], whether all converged)."""
  maps, converged = _sinkhorn(costs, epsilon, scale_cost, threshold, max_iterations)
  return maps, bool(jnp.all(converged))


def solve(costs: jax.Array, solver: str, **sinkhorn_options) -> tuple[jax.Array, bool]:
  """Maps [batch, n, n] (columns summing to one) for cost matrices [batch, n, n] with uniform marginals."""
  if solver == "exact":
    return exact_maps(costs)
  if solver == "sinkhorn":
    return sinkhorn_maps(costs, **sinkhorn_options)
  raise ValueError(f"unknown OT solver {solver!r}; choose from {SOLVERS}")


def align_space(space: Space, support: list[tuple[jax.Array, jax.Array]], solver: str, squared: bool,
                **sinkhorn_options) -> tuple[tuple[jax.Array, ...], SpaceReport]:
  """Maps of one space from its parts' support points: (source, target) rows [units, features] per part."""
  heads = space.heads
  pair_costs, pair_maps, identity, converged = [], [], 0.0, True
  for part, (x, y) in zip(space.parts, support):
    size = part.size
    d = cost_matrix(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), squared)
    identity += float(jnp.mean(jnp.diagonal(d)))
    pairs = d.reshape(heads, size, heads, size).transpose(0, 2, 1, 3).reshape(heads * heads, size, size)
    maps, ok = solve(pairs, solver, **sinkhorn_options)
    converged &= ok
    pair_costs.append(jnp.sum(maps * pairs, axis=(1, 2)) / size)
    pair_maps.append(maps.reshape(heads, heads, size, size))
  head_cost = sum(pair_costs).reshape(heads, heads)
  if heads == 1:
    head_map = jnp.ones((1, 1), jnp.float32)
  else:
    head_maps, ok = solve(head_cost[None], solver, **sinkhorn_options)
    head_map, converged = head_maps[0], converged and ok
  maps = tuple(transport.block_map(head_map, pm) for pm in pair_maps)
  max_mass = float(np.mean([float(jnp.mean(jnp.max(p, axis=1))) for p in maps]))
  cost = float(jnp.sum(head_map * head_cost)) / heads
  units = sum(space.units(part) for part in space.parts)
  return maps, SpaceReport(units, cost, identity, max_mass, converged)


def align(source: Variables, target: Variables, spec: Spec, *, solver: str = "sinkhorn", squared: bool = False,
          activations: tuple[Mapping[str, jax.Array], Mapping[str, jax.Array]] | None = None, rounds: int = 0,
          **sinkhorn_options) -> tuple[dict, transport.Maps, dict[str, SpaceReport]]:
  """Aligns the source model onto the target model, space by space.

  Args:
    source, target: variables dicts ({"params": ..., "batch_stats": ...}, boxed or not) of one architecture.
    spec: their hidden-space spec (speechfuse.fusion.conformer_ctc_spec, ...).
    solver: "exact" or "sinkhorn".
    squared: squared Euclidean cost instead of Euclidean.
    activations: None (weights mode) or the source's and the target's {"space/part": [units, samples]} on the
      same inputs (architectures.ctc_activations); parts missing from them fall back to weights.
    rounds: weight-matching refinement passes over all spaces after the greedy one (weights mode only).
    **sinkhorn_options: epsilon (1e-2), scale_cost ("max_cost"), threshold (1e-3), max_iterations (2000).

  Returns:
    (aligned source variables, plain arrays; maps per space; SpaceReport per space).
  """
  if solver not in SOLVERS:
    raise ValueError(f"unknown OT solver {solver!r}; choose from {SOLVERS}")
  if rounds < 0 or (rounds and activations is not None):
    raise ValueError(f"rounds={rounds}: weight-matching refinement needs rounds >= 0 and weights mode (no activations)")
  src, tgt = spec_lib.flatten(source), spec_lib.flatten(target)
  spec.validate(src)
  spec.validate(tgt)
  mismatched = [p for p in src if tuple(src[p].shape) != tuple(tgt[p].shape)]
  if mismatched:
    raise ValueError(f"source and target shapes differ at {mismatched[:5]}: fusion needs one architecture and size")
  assignments = spec.assignments()
  maps: transport.Maps = {}
  report: dict[str, SpaceReport] = {}
  for space in spec.spaces:
    support = []
    for part in space.parts:
      key = f"{space.name}/{part.name}"
      if activations is not None and key in activations[0]:
        support.append((activations[0][key], activations[1][key]))
      else:
        members = [m for m in part.members if spec_lib.readable(assignments, m, set(maps))]
        support.append((transport.part_rows(src, space, part, members), transport.part_rows(tgt, space, part, members)))
    maps[space.name], report[space.name] = align_space(space, support, solver, squared, **sinkhorn_options)
    src = transport.apply_space(src, space, maps[space.name])
  if rounds:
    src, maps, report = _refine(spec_lib.flatten(source), tgt, spec, maps, rounds, solver, squared, **sinkhorn_options)
  return spec_lib.unflatten(src), maps, report


def _refine(src: dict, tgt: dict, spec: Spec, maps: transport.Maps, rounds: int, solver: str, squared: bool,
            **sinkhorn_options) -> tuple[dict, transport.Maps, dict[str, SpaceReport]]:
  """Weight matching: `rounds` passes re-solving each space from all its members, the others' maps held fixed.

  src and tgt are flattened variables, src unaligned; returns (src moved by the final maps, maps, reports).
  """
  maps, report = dict(maps), {}
  for _ in range(rounds):
    for space in spec.spaces:
      rest = transport.apply(src, spec, {name: m for name, m in maps.items() if name != space.name})
      support = [(transport.part_rows(rest, space, part, list(part.members)),
                  transport.part_rows(tgt, space, part, list(part.members))) for part in space.parts]
      maps[space.name], report[space.name] = align_space(space, support, solver, squared, **sinkhorn_options)
  return transport.apply(src, spec, maps), maps, report
