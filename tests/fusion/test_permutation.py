"""random_permutation: a functionally identical copy with every hidden space permuted."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from speechfuse import fusion
from speechfuse.fusion import permute
from speechfuse.fusion import spec as spec_lib

CASES = ("conformer_batch_norm", "conformer_layer_norm", "transformer_relative", "transformer_absolute")


def build_spec(name: str, variables) -> fusion.Spec:
  return (fusion.conformer_ctc_spec if name.startswith("conformer") else fusion.transformer_ctc_spec)(variables)


@pytest.mark.parametrize("name", CASES)
def test_permuted_model_computes_the_same_log_probs(cases, name):
  case = cases[name]
  spec = build_spec(name, case.variables)
  permuted = fusion.random_permutation(case.variables, spec, jax.random.key(1))
  before, after = spec_lib.flatten(case.variables), spec_lib.flatten(permuted)
  moved = [path for path in before if not np.array_equal(before[path], after[path])]
  fixed_only = {f.path for f in spec.fixed} - set(spec.assignments())
  assert set(moved) == set(before) - fixed_only  # every leaf a space touches has moved
  original, shuffled = case.log_probs(case.variables), case.log_probs(permuted)
  for b, valid in enumerate(case.lengths):
    np.testing.assert_allclose(shuffled[b, :valid], original[b, :valid], atol=2e-5, rtol=0)


def test_maps_are_permutations_of_whole_heads_and_features_within(cases):
  spec = build_spec("conformer_batch_norm", cases["conformer_batch_norm"].variables)
  maps = permute.random_maps(spec, jax.random.key(3))
  mhsa = next(space for space in spec.spaces if space.name == "blocks_0/mhsa")
  for p in maps[mhsa.name]:
    p = np.asarray(p)
    np.testing.assert_array_equal(p.sum(0), 1.0)
    np.testing.assert_array_equal(p.sum(1), 1.0)
    assert set(np.unique(p)) == {0.0, 1.0}
    heads, size = mhsa.heads, mhsa.parts[0].size
    # Each source head's features all land in one target head.
    blocks = p.reshape(heads, size, heads, size).sum(axis=(1, 3))
    assert sorted(blocks.ravel().tolist()) == [0.0] * (heads * heads - heads) + [float(size)] * heads
  qk, vo = maps[mhsa.name]
  assert not np.array_equal(qk, vo)  # same heads, own within-head permutations
