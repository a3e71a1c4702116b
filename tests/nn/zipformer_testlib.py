"""Shared helpers of the Zipformer tests (test_zipformer.py, test_zipformer_waveform.py)."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np


def random_variables(module: nn.Module, *args, seed: int = 0, **kwargs):
  """Variables with the shapes of module.init(*args, **kwargs), filled by numpy (XLA compiles the real initialisers
  slowly on CPU): kernels normal with std 1/sqrt(fan-in), vectors and scalars small and non-zero, bypass scales in
  (0.3, 0.9), so that every parameter (biases, edge factors, downsampling logits) takes part."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), *args, **kwargs)))

  def fill(path, leaf):
    if path[-2].key in ("bypass", "bypass_mid", "out_combiner") or path[-1].key == "log_scale":
      return rng.uniform(0.3, 0.9, leaf.shape).astype(np.float32)
    if len(leaf.shape) < 2:
      return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
    return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)
