"""OT alignment: cost matrices, the exact and Sinkhorn solvers, and maps that undo a permutation."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from scipy.spatial import distance

from speechfuse import fusion
from speechfuse.fusion import align, permute
from speechfuse.fusion import spec as spec_lib


@pytest.mark.parametrize("squared", [False, True])
def test_cost_matrix_matches_scipy(squared):
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(7, 30)).astype(np.float32), rng.normal(size=(9, 30)).astype(np.float32)
  expected = distance.cdist(x, y, "sqeuclidean" if squared else "euclidean")
  np.testing.assert_allclose(align.cost_matrix(x, y, squared), expected, rtol=1e-5)


def test_exact_maps_are_optimal_permutations():
  costs = np.random.default_rng(1).random((3, 6, 6)).astype(np.float32)
  maps, converged = align.exact_maps(costs)
  assert converged
  for cost, p in zip(costs, np.asarray(maps)):
    best = min(sum(cost[i, s[i]] for i in range(6)) for s in itertools.permutations(range(6)))
    np.testing.assert_array_equal(p.sum(0), 1.0)
    np.testing.assert_array_equal(p.sum(1), 1.0)
    assert np.sum(p * cost) == pytest.approx(best, rel=1e-6)


def test_sinkhorn_maps_are_corrected_plans_that_sharpen_as_epsilon_falls():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(40, 8)).astype(np.float32)
  perm = rng.permutation(40)
  cost = align.cost_matrix(x, x[perm])[None]
  target = np.eye(40, dtype=np.float32)[:, perm]  # y[j] = x[perm[j]]: source i goes to target j
  sharp, converged = align.sinkhorn_maps(cost, epsilon=1e-3)
  assert converged
  np.testing.assert_allclose(np.asarray(sharp[0]).sum(0), 1.0, atol=1e-3)  # T diag(1/beta): columns sum to one
  np.testing.assert_allclose(np.asarray(sharp[0]), target, atol=1e-3)
  blurred, _ = align.sinkhorn_maps(cost, epsilon=1.0)
  assert np.asarray(blurred[0]).max(1).mean() < 0.5


def _toy_attention(heads: int = 4, size: int = 5, embed: int = 12):
  """One attention-like headed space over [embed, heads, size] and [heads, size, embed] leaves, embed fixed."""
  rng = np.random.default_rng(3)
  flat = {"params/query": rng.normal(size=(embed, heads, size)).astype(np.float32),
          "params/value": rng.normal(size=(embed, heads, size)).astype(np.float32),
          "params/out": rng.normal(size=(heads, size, embed)).astype(np.float32)}
  space = fusion.Space("mhsa", (fusion.Part("qk", size, (fusion.Member("params/query", (1, 2)),)),
                                fusion.Part("vo", size, (fusion.Member("params/value", (1, 2)),
                                                         fusion.Member("params/out", (0, 1))))), heads)
  fixed = (fusion.Fixed("params/query", (0,), "inputs"), fusion.Fixed("params/value", (0,), "inputs"),
           fusion.Fixed("params/out", (2,), "outputs"))
  return spec_lib.unflatten(flat), fusion.Spec((space,), fixed)


@pytest.mark.parametrize("solver", align.SOLVERS)
def test_headed_space_recovers_head_and_feature_permutations(solver):
  variables, spec = _toy_attention()
  permuted = fusion.random_permutation(variables, spec, jax.random.key(0))
  qk_true, vo_true = permute.random_maps(spec, jax.random.key(0))["mhsa"]
  assert not np.array_equal(np.asarray(qk_true).reshape(4, 5, 4, 5).sum((1, 3)), np.eye(4) * 5)  # heads moved
  aligned, maps, report = align.align(permuted, variables, spec, solver=solver, epsilon=1e-3)
  # Aligning the copy onto the original undoes the permutation: the map is its transpose.
  np.testing.assert_allclose(maps["mhsa"][0], np.asarray(qk_true).T, atol=1e-4)
  np.testing.assert_allclose(maps["mhsa"][1], np.asarray(vo_true).T, atol=1e-4)
  for path, leaf in spec_lib.flatten(variables).items():
    np.testing.assert_allclose(spec_lib.flatten(aligned)[path], leaf, atol=1e-5)
  assert report["mhsa"].max_mass == pytest.approx(1.0, abs=1e-4)
  assert report["mhsa"].cost < 1e-2 * report["mhsa"].identity_cost


@pytest.mark.parametrize("squared", [False, True])
def test_exact_alignment_undoes_a_random_permutation_of_a_conformer(cases, squared):
  case = cases["conformer_batch_norm"]
  spec = fusion.conformer_ctc_spec(case.variables)
  rng = jax.random.key(5)
  permuted = fusion.random_permutation(case.variables, spec, rng)
  aligned, maps, report = align.align(permuted, case.variables, spec, solver="exact", squared=squared)
  for name, true in permute.random_maps(spec, rng).items():
    for p, t in zip(maps[name], true):
      np.testing.assert_array_equal(p, np.asarray(t).T)
  for path, leaf in spec_lib.flatten(case.variables).items():
    np.testing.assert_array_equal(spec_lib.flatten(aligned)[path], leaf)
  for name, space in report.items():
    assert space.max_mass == 1.0 and space.converged
    assert space.cost < 1e-3 * space.identity_cost, name


def _matching_distance(source, target) -> float:
  """Weight matching's objective: the squared distance between two variables dicts, summed over every leaf."""
  flat_source, flat_target = spec_lib.flatten(source), spec_lib.flatten(target)
  return sum(float(np.sum((np.asarray(flat_source[p], np.float64) - np.asarray(leaf, np.float64)) ** 2))
             for p, leaf in flat_target.items())


@pytest.mark.parametrize("name", ["conformer_batch_norm", "transformer_relative"])
def test_weight_matching_rounds_recover_permutations_and_never_increase_the_distance(cases, other_seed_cases, name):
  case = cases[name]
  spec = (fusion.conformer_ctc_spec if name.startswith("conformer") else fusion.transformer_ctc_spec)(case.variables)
  rng = jax.random.key(11)
  permuted = fusion.random_permutation(case.variables, spec, rng)
  aligned, maps, _ = align.align(permuted, case.variables, spec, solver="exact", squared=True, rounds=2)
  for space_name, true in permute.random_maps(spec, rng).items():
    for p, t in zip(maps[space_name], true):
      np.testing.assert_array_equal(p, np.asarray(t).T, err_msg=space_name)
  assert _matching_distance(aligned, case.variables) == 0.0
  # Two unrelated models: each round re-solves one space exactly with the rest fixed (coordinate descent on the
  # summed squared distance), so refining can only lower the greedy pass's distance, and here it does.
  other, source = case.variables, other_seed_cases[name].variables
  distances = [_matching_distance(align.align(source, other, spec, solver="exact", squared=True, rounds=r)[0], other)
               for r in (0, 1, 2)]
  assert distances[2] <= distances[1] * (1 + 1e-6) and distances[1] <= distances[0] * (1 + 1e-6)
  assert distances[2] < distances[0]
  with pytest.raises(ValueError, match="rounds=1: .*weights mode"):
    align.align(source, other, spec, solver="exact", rounds=1, activations=({}, {}))


@pytest.mark.parametrize("name", ["conformer_batch_norm", "transformer_relative"])
def test_activations_mode_undoes_a_random_permutation(cases, name):
  case = cases[name]
  spec = (fusion.conformer_ctc_spec if name.startswith("conformer") else fusion.transformer_ctc_spec)(case.variables)
  rng = jax.random.key(9)
  permuted = fusion.random_permutation(case.variables, spec, rng)
  activations = tuple(fusion.ctc_activations(case.model, v, case.waves, case.wave_lengths, spec)
                      for v in (permuted, case.variables))
  # Residual support: proj, the LayerNorms (Conformer: 5 per block; pre-LN Transformer: 2 and norm_out) and the
  # block output, at every valid frame.
  outputs = 7 if name.startswith("conformer") else 5
  assert activations[1]["residual/units"].shape == (64, outputs * case.lengths.sum())
  assert activations[1]["blocks_0/mhsa/qk"].shape == (64, 2 * case.lengths.sum())  # query and key, 2 heads x 32
  aligned, maps, report = align.align(permuted, case.variables, spec, solver="exact", activations=activations)
  for space_name, true in permute.random_maps(spec, rng).items():
    for p, t in zip(maps[space_name], true):
      np.testing.assert_array_equal(p, np.asarray(t).T, err_msg=space_name)
  for path, leaf in spec_lib.flatten(case.variables).items():
    np.testing.assert_array_equal(spec_lib.flatten(aligned)[path], leaf)
  # The maps are exact (above), yet the cost of the true match is not zero: Euclidean distances of identical float32
  # activations, from |x|^2 + |y|^2 - 2 x.y, keep a rounding residue near sqrt(eps) ~ 3e-4 of their norms, and more
  # on some CPUs (the first subsampling conv's 1794 frames: 1.3e-3 of the identity cost on one of ours).
  assert all(space.cost < 1e-2 * space.identity_cost for space in report.values())


def test_alignment_rejects_an_unknown_solver_and_different_sizes(cases):
  variables = cases["transformer_relative"].variables
  spec = fusion.transformer_ctc_spec(variables)
  with pytest.raises(ValueError, match="unknown OT solver 'emd'"):
    align.align(variables, variables, spec, solver="emd")
  other = jax.tree.map(lambda x: x, variables)
  other["params"]["ctc_head"]["bias"] = np.zeros(7, np.float32)
  with pytest.raises(ValueError, match="params/ctc_head/bias"):
    align.align(variables, other, spec)
