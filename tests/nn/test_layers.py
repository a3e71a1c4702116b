"""Tests for speechfuse.nn.layers: sinusoids, Projection (shapes, initial scale) and FeedForward against numpy."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse.nn import layers
from speechfuse.nn import sizes


def test_sinusoids_closed_form():
  table = layers.sinusoids(np.array([0, 1, 5, -2]), 8)
  frequencies = 1.0 / 10000.0 ** (np.arange(0, 8, 2) / 8)
  for row, position in zip(table, [0, 1, 5, -2]):
    np.testing.assert_allclose(row[0::2], np.sin(position * frequencies), atol=1e-6)
    np.testing.assert_allclose(row[1::2], np.cos(position * frequencies), atol=1e-6)
  with pytest.raises(ValueError, match="even"):
    layers.sinusoids(np.arange(3), 5)


def test_projection_keeps_axes_and_initialises_by_fan_in():
  split = layers.Projection((16, 32), ("embed", "heads", "kv"))
  merge = layers.Projection((64,), ("heads", "kv", "embed"), input_axes=2)
  x = jnp.ones((2, 3, 256))
  params = jax.jit(split.init)(jax.random.key(0), x)["params"]
  assert params["kernel"].names == ("embed", "heads", "kv") and params["bias"].names == ("heads", "kv")
  kernel = nn.unbox(params)["kernel"]
  assert kernel.shape == (256, 16, 32)
  assert abs(float(kernel.std()) * np.sqrt(256) - 1.0) < 0.05  # LeCun: variance 1 / fan_in
  heads = jnp.ones((2, 3, 16, 32))
  merged = nn.unbox(jax.jit(merge.init)(jax.random.key(1), heads)["params"])
  assert merged["kernel"].shape == (16, 32, 64) and merged["bias"].shape == (64,)
  assert abs(float(merged["kernel"].std()) * np.sqrt(16 * 32) - 1.0) < 0.05
  y = merge.apply({"params": merged}, heads)
  np.testing.assert_allclose(y, np.broadcast_to(merged["kernel"].sum((0, 1)), (2, 3, 64)), rtol=1e-4, atol=1e-4)


def test_feed_forward_matches_numpy(random_variables):
  x = np.random.default_rng(0).normal(size=(2, 5, 6)).astype(np.float32)
  module = layers.FeedForward(10, activation="swish")
  params = random_variables(module, x)["params"]
  assert sizes.count_params(params) == 6 * 10 + 10 + 10 * 6 + 6
  hidden = x @ params["dense_in"]["kernel"] + params["dense_in"]["bias"]
  hidden = hidden / (1 + np.exp(-hidden))
  expected = hidden @ params["dense_out"]["kernel"] + params["dense_out"]["bias"]
  np.testing.assert_allclose(module.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="tanhh"):
    layers.activation("tanhh")
