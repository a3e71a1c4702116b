"""Tests for speechfuse.nn.transformer: pre-/post-LN blocks against numpy, padding and chunk invariance, sizes."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse.nn import attention
from speechfuse.nn import sizes
from speechfuse.nn import transformer

_SMALL = dict(num_blocks=2, d_model=16, num_heads=2, ffn_dim=32, subsampling_channels=4)


def _layer_norm(x, p):
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * p["scale"] + p["bias"]


@pytest.mark.parametrize("pre_norm", [True, False])
def test_block_orders_norms_as_documented(pre_norm, random_variables):
  x = np.random.default_rng(0).normal(size=(1, 6, 16)).astype(np.float32)
  mask = np.ones((1, 6, 6), bool)
  block = transformer.TransformerBlock(num_heads=2, ffn_dim=32, pre_norm=pre_norm)
  params = random_variables(block, x, mask)["params"]
  attend = lambda h: np.asarray(attention.MultiHeadSelfAttention(2, relative=False).apply(
      {"params": params["mhsa"]}, h.astype(np.float32), mask))
  p = params["ffn"]
  ffn = lambda h: np.maximum(h @ p["dense_in"]["kernel"] + p["dense_in"]["bias"], 0) @ p["dense_out"]["kernel"] \
      + p["dense_out"]["bias"]
  if pre_norm:
    h = x + attend(_layer_norm(x, params["norm_mhsa"]))
    expected = h + ffn(_layer_norm(h, params["norm_ffn"]))
  else:
    h = _layer_norm(x + attend(x), params["norm_mhsa"])
    expected = _layer_norm(h + ffn(h), params["norm_ffn"])
  np.testing.assert_allclose(block.apply({"params": params}, x, mask), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pre_norm,positions", [(True, "absolute"), (False, "relative")])
def test_encoder_ignores_padding_and_future_chunks(pre_norm, positions, random_variables):
  encoder = transformer.TransformerEncoder(**_SMALL, pre_norm=pre_norm, positions=positions)
  features = jax.random.normal(jax.random.key(1), (2, 80, 12))
  variables = random_variables(encoder, features, jnp.array([80, 80]))
  apply = jax.jit(lambda f, lengths, chunk: encoder.apply(variables, f, lengths, chunk_size=chunk)[0])
  lengths = jnp.array([80, 55])
  out = apply(features, lengths, 80)
  assert out.shape == (2, 19, 16) and not np.asarray(out[1, 13:]).any()
  np.testing.assert_allclose(apply(features.at[1, 55:].set(30.0), lengths, 80), out, atol=1e-5)
  alone = apply(features[1:, :55], lengths[1:], 80)
  np.testing.assert_allclose(out[1, :13], alone[0], rtol=1e-4, atol=1e-5)
  # Chunks of 4 output frames: input frames from 35 on feed output frames >= 8 only (see the Conformer test).
  changed = features.at[:, 35:].add(3.0)
  chunked, chunked_changed = apply(features, lengths, 4), apply(changed, lengths, 4)
  np.testing.assert_allclose(chunked_changed[:, :8], chunked[:, :8], atol=1e-5)
  assert not np.allclose(apply(changed, lengths, 80)[:, :8], out[:, :8], atol=1e-3)


def _transformer_params(d, f, n, pre_norm, relative, mel=80):
  freq = ((mel - 1) // 2 - 1) // 2
  subsampling = 9 * d + d + 9 * d * d + d + d * freq * d + d
  block = (d * f + f + f * d + d) + 4 * (d * d + d) + (d * d + 2 * d if relative else 0) + 2 * 2 * d
  return subsampling + n * block + (2 * d if pre_norm else 0)


@pytest.mark.parametrize("size,pre_norm,positions", [("tiny", False, "relative"), ("base", True, "absolute")])
def test_parameter_counts_and_names(size, pre_norm, positions):
  kwargs = sizes.encoder_size(size, "transformer")
  encoder = transformer.TransformerEncoder(**kwargs, pre_norm=pre_norm, positions=positions)
  variables = jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1, 32, 80)), jnp.array([32]))
  params = nn.unbox(variables["params"])
  expected = _transformer_params(kwargs["d_model"], kwargs["ffn_dim"], kwargs["num_blocks"], pre_norm,
                                 positions == "relative")
  assert sizes.count_params(params) == expected
  assert ("norm_out" in params) == pre_norm
  assert ("pos_bias_u" in params["blocks_0"]["mhsa"]) == (positions == "relative")
  assert set(params["blocks_0"]) == {"norm_mhsa", "mhsa", "norm_ffn", "ffn"}


def test_unknown_options_raise():
  with pytest.raises(ValueError, match="rotary"):
    transformer.TransformerEncoder(**_SMALL, positions="rotary").init(
        jax.random.key(0), jnp.zeros((1, 16, 8)), jnp.array([16]))
  with pytest.raises(ValueError, match="size"):
    sizes.encoder_size("huge")
  with pytest.raises(ValueError, match="architecture"):
    sizes.encoder_size("tiny", "zipformer")
