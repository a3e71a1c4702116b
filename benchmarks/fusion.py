"""Wall time of OT alignment of a base Conformer-CTC (12 blocks, d=512): ott-jax Sinkhorn and exact assignment
against POT's `ot.emd` (the solver OTFusion uses) on the same cost matrices.

  python benchmarks/fusion.py [--size base] [--vocab 500] [--epsilon 0.01] [--repeats 2]   (needs `pip install pot`)

Two models of the same shapes with different random weights (eval_shape, then numpy normals: the real
initialisers compile slowly on CPU and the solvers do not care how the weights were drawn). Timings:
  end to end: `speechfuse.fusion.align.align` (rows, cost matrices, solver, moving every leaf), the best of
    --repeats calls after a first one that compiles;
  solver only: every cost matrix the exact alignment solved (the within-head pair problems and head-level
    problems of attention included), recorded once and given to each solver: scipy's linear_sum_assignment
    (our "exact"), ott-jax Sinkhorn (jitted, vmapped over a space's batch; compiled beforehand) and POT ot.emd
    (network simplex, float64, uniform marginals, one problem at a time).
Transport cost: the sum over all problems of <T, D> with T of unit mass; the exact solvers reach the optimum,
Sinkhorn pays its entropic blur. Prints Markdown tables; speed-up vs POT = POT's seconds / these seconds.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import ot

from speechfuse import audio, fusion, models
from speechfuse import nn as sf_nn
from speechfuse.fusion import align
from speechfuse.models import ctc


def random_variables(size: str, vocab: int, seeds: tuple[int, ...]) -> list[dict]:
  """Variables of a Conformer-CTC of `size` with numpy normals (1/sqrt(fan-in)), one dict per seed."""
  stats = audio.CMVNStats(np.zeros(80), np.full(80, 2.0), 1)
  model = models.get_model(ctc.default_config("conformer", size), dtype=jnp.float32, vocab_size=vocab, cmvn=stats)
  waves, lengths = jnp.zeros((1, 16000), jnp.int16), jnp.array([16000])
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), waves, lengths)))

  def fill(rng, x):
    fan_in = int(np.prod(x.shape[:-1])) if len(x.shape) > 1 else 1
    return (rng.standard_normal(x.shape, np.float32) / np.sqrt(fan_in)).astype(np.float32)

  return [jax.tree.map(lambda x, rng=np.random.default_rng(seed): fill(rng, x), shapes) for seed in seeds]


def timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def recorded_costs(sl: dict, ssl: dict, spec: fusion.Spec) -> list[np.ndarray]:
  """Runs the exact alignment once and returns every batch of cost matrices [batch, n, n] it solved."""
  costs, solve = [], align.solve

  def recording(batch, solver, **options):
    costs.append(np.asarray(batch))
    return solve(batch, solver, **options)

  align.solve = recording
  try:
    align.align(sl, ssl, spec, solver="exact")
  finally:
    align.solve = solve
  return costs


def solver_time_and_cost(costs: list[np.ndarray], solve_batch) -> tuple[float, float]:
  """Seconds and total transport cost of `solve_batch(costs [batch, n, n]) -> maps [batch, n, n]` (columns sum 1)."""
  seconds, total = 0.0, 0.0
  for batch in costs:
    maps, elapsed = timed(lambda: np.asarray(solve_batch(batch)))
    seconds += elapsed
    total += float(np.sum(maps * batch)) / batch.shape[-1]
  return seconds, total


def pot_emd(batch: np.ndarray) -> np.ndarray:
  n = batch.shape[-1]
  uniform = np.full(n, 1.0 / n)
  return np.stack([ot.emd(uniform, uniform, cost.astype(np.float64)) * n for cost in batch])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="base")
  parser.add_argument("--vocab", type=int, default=500)
  parser.add_argument("--epsilon", type=float, default=1e-2)
  parser.add_argument("--repeats", type=int, default=2, help="end-to-end timings: best of this many warm calls")
  args = parser.parse_args()

  sl, ssl = random_variables(args.size, args.vocab, (0, 1))
  spec = fusion.conformer_ctc_spec(ssl)
  units = sum(space.units(part) for space in spec.spaces for part in space.parts)
  print(f"{args.size} Conformer-CTC, {sf_nn.count_params(ssl['params']):,} parameters, {len(spec.spaces)} spaces, "
        f"{units} units; jax {jax.__version__} on {jax.devices()[0].platform}, POT {ot.__version__}")

  end_to_end = {}
  for solver in ("exact", "sinkhorn"):
    run = lambda: jax.block_until_ready(align.align(sl, ssl, spec, solver=solver, epsilon=args.epsilon)[0])
    run()
    end_to_end[solver] = min(timed(run)[1] for _ in range(args.repeats))

  costs = recorded_costs(sl, ssl, spec)
  problems = sum(len(batch) for batch in costs)
  sinkhorn = lambda batch: align.sinkhorn_maps(jnp.asarray(batch), epsilon=args.epsilon)[0]
  for batch in costs:  # compile every shape before timing
    sinkhorn(batch)
  rows = {
      "POT ot.emd": solver_time_and_cost(costs, pot_emd),
      "exact (scipy linear_sum_assignment)": solver_time_and_cost(costs, lambda b: align.exact_maps(b)[0]),
      f"ott-jax Sinkhorn (epsilon {args.epsilon:g} of max cost)": solver_time_and_cost(costs, sinkhorn),
  }
  pot_seconds, pot_cost = rows["POT ot.emd"]
  print(f"\nSolver only, {problems} transport problems from {len(costs)} batches (the exact alignment's costs):\n")
  print("| solver | seconds | speed-up vs POT | transport cost | cost / POT's |")
  print("|---|---|---|---|---|")
  for name, (seconds, cost) in rows.items():
    print(f"| {name} | {seconds:.2f} | {pot_seconds / seconds:.2f} | {cost:.4f} | {cost / pot_cost:.5f} |")
  print("\nEnd to end (`align.align`: rows, costs, solver, moving every leaf; warm):\n")
  print("| solver | seconds |")
  print("|---|---|")
  for solver, seconds in end_to_end.items():
    print(f"| {solver} | {seconds:.2f} |")


if __name__ == "__main__":
  main()
