"""Shared fixtures for the layer tests."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest


def _random_variables(module: nn.Module, *args, seed: int = 0, **kwargs):
  """Variables of `module` with the shapes of module.init(*args), filled by numpy.

  Kernels and biases are normal with std 1/sqrt(fan-in) (all axes but the last), norm scales and running
  variances are ones, running means zeros. XLA compiles the real initialisers (truncated normals of every
  parameter shape) slowly on CPU; the layer tests only need generic, non-zero values.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), *args, **kwargs)))

  def fill(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return np.ones(leaf.shape, np.float32)
    if name == "mean":
      return np.zeros(leaf.shape, np.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else leaf.shape[0]
    return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture
def random_variables():
  return _random_variables
