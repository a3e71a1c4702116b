"""Tests for speechfuse.nn.subsampling: length formulas against running the convs, layout against numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse.nn import subsampling

_CASES = [("conv2d", 4), ("conv2d", 6), ("conv2d", 8), ("conv1d", 2), ("conv1d", 4)]


def _module(kind, factor):
  return subsampling.make_subsampling(kind, factor, d_model=8, channels=4, dtype=None, param_dtype=jnp.float32)


@pytest.mark.parametrize("kind,factor", _CASES)
def test_length_formula_matches_unpadded_convs(kind, factor, random_variables):
  module = _module(kind, factor)
  variables = random_variables(module, jnp.zeros((1, 40, 20)), jnp.array([40]))
  for time in (7, 9, 10, 11, 15, 16, 17, 23, 30):
    # eval_shape traces the very conv ops (their output shapes) without paying for a run per length.
    out, lengths = jax.eval_shape(module.apply, variables, jnp.ones((1, time, 20)), jnp.array([time]))
    assert out.shape[1] == subsampling.subsampled_length(time, kind, factor), (kind, factor, time)
  for time in (15, 16):
    out, lengths = module.apply(variables, jnp.ones((1, time, 20)), jnp.array([time]))
    assert out.shape[1] == int(lengths[0]) == subsampling.subsampled_length(time, kind, factor), (kind, factor, time)
  # Closed forms of the common layouts (WeNet / icefall).
  lengths = np.arange(7, 200)
  expected = {("conv2d", 4): ((lengths - 1) // 2 - 1) // 2, ("conv2d", 6): ((lengths - 1) // 2 - 2) // 3,
              ("conv2d", 8): (((lengths - 1) // 2 - 1) // 2 - 1) // 2, ("conv1d", 2): (lengths - 1) // 2,
              ("conv1d", 4): ((lengths - 1) // 2 - 1) // 2}[(kind, factor)]
  np.testing.assert_array_equal(subsampling.subsampled_length(jnp.asarray(lengths), kind, factor), expected)


@pytest.mark.parametrize("kind,factor", [("conv2d", 6), ("conv1d", 4)])
def test_padding_does_not_change_valid_frames(kind, factor, random_variables):
  module = _module(kind, factor)
  features = jax.random.normal(jax.random.key(1), (1, 31, 20))
  variables = random_variables(module, features, jnp.array([31]))
  alone, alone_lengths = module.apply(variables, features, jnp.array([31]))
  padded = jnp.concatenate([features, 50.0 * jnp.ones((1, 17, 20))], axis=1)
  out, lengths = module.apply(variables, padded, jnp.array([31]))
  assert int(lengths[0]) == int(alone_lengths[0]) == alone.shape[1]
  np.testing.assert_allclose(out[:, : alone.shape[1]], alone, rtol=1e-5, atol=1e-5)


def test_conv2d_matches_numpy_and_flattens_channel_major(random_variables):
  module = subsampling.Conv2dSubsampling(d_model=5, factor=4, channels=3)
  features = np.random.default_rng(0).normal(size=(1, 11, 13)).astype(np.float32)
  params = random_variables(module, features, jnp.array([11]))["params"]

  def conv(x, kernel, bias):  # x [t, f, in], kernel [3, 3, in, out], unpadded stride 2
    t_out, f_out = (x.shape[0] - 3) // 2 + 1, (x.shape[1] - 3) // 2 + 1
    y = np.empty((t_out, f_out, kernel.shape[-1]))
    for t in range(t_out):
      for f in range(f_out):
        y[t, f] = np.einsum("abi,abio->o", x[2 * t: 2 * t + 3, 2 * f: 2 * f + 3], kernel) + bias
    return np.maximum(y, 0)

  h = conv(features[0, :, :, None], params["conv_0"]["kernel"], params["conv_0"]["bias"])
  h = conv(h, params["conv_1"]["kernel"], params["conv_1"]["bias"])
  flat = h.transpose(0, 2, 1).reshape(h.shape[0], -1)  # [t, channels * freq], as PyTorch's view
  expected = flat @ params["proj"]["kernel"] + params["proj"]["bias"]
  out, lengths = module.apply({"params": params}, features, jnp.array([11]))
  assert params["proj"]["kernel"].shape == (3 * 2, 5)
  assert int(lengths[0]) == 2
  np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-5)


def test_unknown_kind_and_factor_raise():
  with pytest.raises(ValueError, match="conv3d"):
    subsampling.subsampled_length(10, "conv3d", 4)
  with pytest.raises(ValueError, match="factors"):
    _module("conv1d", 6)
