"""OTF on a model and a random permutation of itself (the issue's permutation recovery), and direct averaging.

Stated tolerances for Sinkhorn (epsilon 1e-3 of the max cost, the default threshold): every fused leaf within
1e-5 of the original relative to the leaf's largest entry (measured about 3e-7) and log-probs within 1e-4
(measured about 1e-6). The default epsilon 1e-2 stays within 1e-4 relative (measured about 1e-5).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from speechfuse import fusion
from speechfuse.fusion import align
from speechfuse.fusion import spec as spec_lib

CASES = ("conformer_batch_norm", "conformer_layer_norm", "transformer_relative", "transformer_absolute")


def _fuse_with_permuted_self(case, name, **options):
  build = fusion.conformer_ctc_spec if name.startswith("conformer") else fusion.transformer_ctc_spec
  spec = build(case.variables)
  permuted = fusion.random_permutation(case.variables, spec, jax.random.key(7))
  return fusion.otf_fuse(permuted, case.variables, spec, **options)


def _max_relative_error(a, b) -> float:
  fa, fb = spec_lib.flatten(a), spec_lib.flatten(b)
  assert set(fa) == set(fb)
  return max(float(np.max(np.abs(fa[p] - fb[p])) / np.max(np.abs(fb[p]))) for p in fb)


@pytest.mark.parametrize("name", CASES)
def test_exact_solver_recovers_the_original_exactly(cases, name):
  case = cases[name]
  fused, report = _fuse_with_permuted_self(case, name, solver="exact")
  for path, leaf in spec_lib.flatten(case.variables).items():
    np.testing.assert_array_equal(spec_lib.flatten(fused)[path], leaf, err_msg=path)
  np.testing.assert_array_equal(case.log_probs(fused), case.log_probs(case.variables))
  assert all(space.max_mass == 1.0 for space in report.values())


@pytest.mark.parametrize("name", CASES)
def test_sinkhorn_with_small_epsilon_recovers_within_tolerance(cases, name):
  case = cases[name]
  fused, report = _fuse_with_permuted_self(case, name, solver="sinkhorn", epsilon=1e-3)
  assert all(space.converged for space in report.values())
  assert _max_relative_error(fused, case.variables) < 1e-5
  original, recovered = case.log_probs(case.variables), case.log_probs(fused)
  for b, valid in enumerate(case.lengths):
    np.testing.assert_allclose(recovered[b, :valid], original[b, :valid], atol=1e-4, rtol=0)


def test_default_sinkhorn_recovers_within_tolerance(cases):
  case = cases["conformer_batch_norm"]
  fused, _ = _fuse_with_permuted_self(case, "conformer_batch_norm")
  assert _max_relative_error(fused, case.variables) < 1e-4


def test_weight_is_the_ssl_models_share(cases):
  case = cases["transformer_relative"]
  spec = fusion.transformer_ctc_spec(case.variables)
  rng = np.random.default_rng(11)
  sl = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), case.variables)
  aligned, _, _ = align.align(sl, case.variables, spec, solver="exact")
  fused, _ = fusion.otf_fuse(sl, case.variables, spec, weight=0.25, solver="exact")
  expected = fusion.direct_average(aligned, case.variables, weight=0.25)
  for path, leaf in spec_lib.flatten(expected).items():
    np.testing.assert_array_equal(spec_lib.flatten(fused)[path], leaf)
  kernel = "params/ctc_head/kernel"
  np.testing.assert_allclose(spec_lib.flatten(expected)[kernel], 0.75 * spec_lib.flatten(aligned)[kernel]
                             + 0.25 * case.variables["params"]["ctc_head"]["kernel"], rtol=1e-6)
  ssl, _ = fusion.otf_fuse(sl, case.variables, spec, weight=1.0, solver="exact")
  assert _max_relative_error(ssl, case.variables) == 0.0


def test_direct_average_of_a_permuted_copy_breaks_the_model(cases):
  case = cases["conformer_batch_norm"]
  spec = fusion.conformer_ctc_spec(case.variables)
  permuted = fusion.random_permutation(case.variables, spec, jax.random.key(7))
  averaged = fusion.direct_average(permuted, case.variables, weight=0.5)
  head = "params/ctc_head/bias"  # the vocabulary never moves: its average is the original
  np.testing.assert_array_equal(spec_lib.flatten(averaged)[head], spec_lib.flatten(case.variables)[head])
  original, broken = case.log_probs(case.variables), case.log_probs(averaged)
  assert np.abs(np.asarray(broken) - np.asarray(original)).max() > 1.0
