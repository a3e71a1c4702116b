"""Tests for speechfuse.nn.relative_bias: WavLM's buckets and gate against numpy transcriptions of the formulas."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from speechfuse.nn import relative_bias


def _bucket(relative: int, num_buckets: int = 320, max_distance: int = 800) -> int:
  """The WavLM paper's bucket of relative position key - query, one position at a time in float64."""
  half = num_buckets // 2
  exact = half // 2
  base = half if relative > 0 else 0
  distance = abs(relative)
  if distance < exact:
    return base + distance
  return base + min(half - 1, exact + int(math.log(distance / exact) / math.log(max_distance / exact) * (half - exact)))


def test_buckets_follow_the_formula_at_every_distance():
  table = relative_bias.relative_position_buckets(1200, 1200)
  for query in (0, 1, 599, 1199):
    expected = [_bucket(key - query) for key in range(1200)]
    np.testing.assert_array_equal(table[query], expected)
  assert table.min() == 0 and table.max() == 319
  assert _bucket(79) == 160 + 79 and _bucket(80) == 240 and _bucket(800) == 319 and _bucket(-5000) == 159
  np.testing.assert_array_equal(relative_bias.relative_position_buckets(3, 5, 8, 16),
                                [[_bucket(k - q, 8, 16) for k in range(5)] for q in range(3)])


def test_gate_scales_each_query_row_as_the_formula():
  heads, time, embed = 2, 5, 8
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, time, embed)).astype(np.float32)
  bias = rng.normal(size=(heads, time, time)).astype(np.float32)
  gate = relative_bias.PositionBiasGate(heads)
  params = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32),
                        nn.unbox(gate.init(jax.random.key(0), x, bias)))["params"]
  out = gate.apply({"params": params}, jnp.asarray(x), jnp.asarray(bias))
  kernel, b, const = params["linear"]["kernel"], params["linear"]["bias"], params["const"]
  sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))
  for h in range(heads):
    for t in range(time):
      logits = x[0, t, h * 4:(h + 1) * 4] @ kernel + b  # this head's features -> 8
      g_a, g_b = sigmoid(logits[:4].sum()), sigmoid(logits[4:].sum())
      np.testing.assert_allclose(out[0, h, t], (g_a * (g_b * const[h] - 1.0) + 2.0) * bias[h, t], rtol=1e-5)
