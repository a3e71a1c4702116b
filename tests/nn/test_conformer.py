"""Tests for speechfuse.nn.conformer: conv module against numpy, masking of padding and future chunks, BatchNorm."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse.nn import conformer
from speechfuse.nn import sizes

_SMALL = dict(num_blocks=2, d_model=16, num_heads=2, ffn_dim=32, conv_kernel=5, subsampling_channels=4)


def _reference_conv_module(params, x, valid, context, norm, chunk=None):
  """Numpy conv module with LayerNorm (or BatchNorm from running statistics), convolving each valid prefix alone;
  with context "chunk" and a chunk size, a tap never reads past the end of its frame's chunk."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x, np.float64)
  glu_in = np.einsum("bte,evc->btvc", x, p["pointwise_in"]["kernel"]) + p["pointwise_in"]["bias"]
  h = glu_in[:, :, 0] / (1 + np.exp(-glu_in[:, :, 1]))  # value * sigmoid(gate)
  kernel = p["depthwise"]["kernel"]
  taps = kernel.shape[0]
  left = taps - 1 if context == "causal" else (taps - 1) // 2
  out = np.zeros_like(h)
  for b, length in enumerate(valid.sum(1)):
    for t in range(length):
      end = length if chunk is None else min(length, (t // chunk + 1) * chunk)
      for tap in range(taps):
        s = t + tap - left
        if 0 <= s < end:  # an unpadded utterance sees zeros outside [0, length), or past its chunk
          out[b, t] += kernel[tap] * h[b, s]
  out += p["depthwise"]["bias"]
  if norm == "layer_norm":
    out = (out - out.mean(-1, keepdims=True)) / np.sqrt(out.var(-1, keepdims=True) + 1e-5)
  else:
    out = out / np.sqrt(1 + 1e-5)  # fresh running statistics: mean 0, var 1
  out = out * p["norm"]["scale"] + p["norm"]["bias"]
  out = out / (1 + np.exp(-out))
  return out @ p["pointwise_out"]["kernel"] + p["pointwise_out"]["bias"]


@pytest.mark.parametrize("context, norm, chunk", [("symmetric", "layer_norm", None), ("causal", "batch_norm", None),
                                                   ("chunk", "layer_norm", None), ("chunk", "batch_norm", 2),
                                                   ("chunk", "layer_norm", 4)])
def test_conv_module_matches_reference(context, norm, chunk, random_variables):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 9, 6)).astype(np.float32)
  valid = np.arange(9)[None] < np.array([[9], [6]])
  module = conformer.ConvModule(kernel_size=5, norm=norm, context=context)
  variables = random_variables(module, x, valid)
  params = variables["params"]
  out = jax.jit(lambda v, x, valid: module.apply(v, x, valid, chunk_size=chunk))(variables, x, valid)
  expected = _reference_conv_module(params, x, valid, context, norm, chunk)
  np.testing.assert_allclose(np.asarray(out)[valid], expected[valid], rtol=1e-4, atol=1e-5)


def test_batch_norm_statistics_skip_padding(random_variables):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 4)).astype(np.float32)
  valid = jnp.arange(8)[None] < jnp.array([[8], [3]])
  module = conformer.ConvModule(kernel_size=3)
  variables = random_variables(module, x, valid)

  @jax.jit
  def run(x):
    out, state = module.apply(variables, x, valid, train=True, mutable=["batch_stats", "intermediates"],
                              capture_intermediates=lambda mdl, _: mdl.name == "depthwise")
    return out, state["batch_stats"]["norm"], state["intermediates"]["depthwise"]["__call__"][0]

  out, stats, depthwise = run(x)
  valid = np.asarray(valid)
  kept = np.asarray(depthwise)[valid]
  # Running statistics start at mean 0, var 1; flax's update keeps `momentum` of them and takes the rest from
  # the (biased) statistics of the valid frames only.
  keep = conformer.BATCH_NORM_MOMENTUM
  np.testing.assert_allclose(stats["mean"], (1 - keep) * kept.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["var"], keep + (1 - keep) * kept.var(0), rtol=1e-5, atol=1e-6)
  out_changed, stats_changed, _ = run(x + np.where(valid[..., None], 0.0, 30.0).astype(np.float32))
  np.testing.assert_allclose(stats_changed["mean"], stats["mean"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out_changed)[valid], np.asarray(out)[valid], rtol=1e-5, atol=1e-5)


def test_encoder_padding_invariance_and_batch_independence(random_variables):
  encoder = conformer.ConformerEncoder(**_SMALL)
  variables = random_variables(encoder, jnp.zeros((2, 40, 12)), jnp.array([40, 40]))
  features = jax.random.normal(jax.random.key(1), (2, 40, 12))
  apply = jax.jit(encoder.apply)
  out, lengths = apply(variables, features, jnp.array([40, 27]))
  np.testing.assert_array_equal(lengths, [9, 6])
  assert out.shape == (2, 9, 16) and not np.asarray(out[1, 6:]).any()
  noisy = features.at[1, 27:].set(40.0)
  out_noisy, _ = apply(variables, noisy, jnp.array([40, 27]))
  np.testing.assert_allclose(out_noisy, out, atol=1e-5)
  alone, _ = apply(variables, features[1:, :27], jnp.array([27]))
  np.testing.assert_allclose(out[1, :6], alone[0], rtol=1e-4, atol=1e-5)


def test_encoder_train_mode_padding_invariance(random_variables):
  encoder = conformer.ConformerEncoder(**_SMALL, dropout_rate=0.0)
  variables = random_variables(encoder, jnp.zeros((2, 40, 12)), jnp.array([40, 40]))
  features = jax.random.normal(jax.random.key(1), (2, 40, 12))

  @jax.jit
  def run(features):
    return encoder.apply(variables, features, jnp.array([40, 23]), train=True, mutable=["batch_stats"])

  (out, _), state = run(features)
  (out_noisy, _), state_noisy = run(features.at[1, 23:].set(-25.0))
  np.testing.assert_allclose(out_noisy[:, :5], out[:, :5], atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), state_noisy, state)


def test_chunked_streaming_encoder_ignores_future_chunks(random_variables):
  features = jax.random.normal(jax.random.key(1), (1, 80, 12))
  # Output frame t reads input frames 4t .. 4t + 6 through the x4 subsampling, so frames from 4 * 8 + 3 = 35 on
  # feed only output frames >= 8, i.e. the third chunk of 4 ([8, 12)) and later.
  changed = features.at[:, 35:].add(3.0)
  chunk = 4

  def encode(conv_context):
    encoder = conformer.ConformerEncoder(**_SMALL, conv_context=conv_context)
    variables = random_variables(encoder, features, jnp.array([80]))
    apply = jax.jit(lambda f, chunk, left: encoder.apply(variables, f, jnp.array([80]), chunk_size=chunk,
                                                         num_left_chunks=left)[0])
    return lambda f, chunk, left=-1: np.asarray(apply(f, chunk, left))

  for context in ("causal", "chunk"):
    streaming = encode(context)
    for left in (-1, 1):
      out, out_changed = streaming(features, chunk, left), streaming(changed, chunk, left)
      np.testing.assert_array_equal(out_changed[:, :8], out[:, :8])
      assert not np.allclose(out_changed[:, 8:], out[:, 8:], atol=1e-3)
    # The same perturbation reaches earlier frames with full context.
    assert not np.allclose(streaming(changed, 80)[:, :8], streaming(features, 80)[:, :8], atol=1e-3)
  # ... and with chunks but a symmetric conv, which looks past the chunk.
  offline = encode("symmetric")
  assert not np.allclose(offline(changed, chunk)[:, :8], offline(features, chunk)[:, :8], atol=1e-3)


def test_dynamic_chunk_training_draws_full_context_or_chunks(random_variables):
  config = dict(_SMALL, dropout_rate=0.0, conv_norm="layer_norm", dynamic_chunk_training=True)
  features, lengths = jax.random.normal(jax.random.key(1), (2, 40, 12)), jnp.array([40, 30])
  variables = random_variables(conformer.ConformerEncoder(**config), features, lengths)

  @jax.jit
  def encode(chunk_size):  # evaluation with an explicit chunk (traced); chunk >= time is full context
    return conformer.ConformerEncoder(**config).apply(variables, features, lengths, chunk_size=chunk_size)[0]

  def train(**chunking):  # training: the encoder draws its own chunk under jit
    encoder = conformer.ConformerEncoder(**config, **chunking)
    run = jax.jit(lambda rng: encoder.apply(variables, features, lengths, train=True, rngs={"dropout": rng})[0])
    return run(jax.random.key(3))

  np.testing.assert_allclose(train(full_context_prob=1.0), encode(9), atol=1e-5)
  np.testing.assert_allclose(train(full_context_prob=0.0, max_chunk_size=1), encode(1), atol=1e-5)
  assert not np.allclose(encode(1), encode(9), atol=1e-3)


def test_gradients_with_remat_and_hidden_outputs(random_variables):
  encoder = conformer.ConformerEncoder(**dict(_SMALL, num_blocks=1), remat=True, dynamic_chunk_training=True)
  features, lengths = jax.random.normal(jax.random.key(1), (2, 40, 12)), jnp.array([40, 30])
  variables = random_variables(encoder, features, lengths)

  @jax.jit
  def loss_and_grad(params, rng):
    def loss(params):
      (out, _, hidden), _ = encoder.apply({**variables, "params": params}, features, lengths, train=True,
                                          return_hidden=True, rngs={"dropout": rng}, mutable=["batch_stats"])
      return jnp.sum(out ** 2) + jnp.sum(hidden[0]), (out, hidden)
    return jax.value_and_grad(loss, has_aux=True)(params)

  (value, (out, hidden)), grads = loss_and_grad(variables["params"], jax.random.key(0))
  assert np.isfinite(value) and all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert np.abs(grads["blocks_0"]["mhsa"]["pos_bias_u"]).sum() > 0
  assert len(hidden) == 1 and hidden[0].shape == out.shape
  np.testing.assert_allclose(out[0], hidden[0][0], atol=1e-6)  # utterance 0 has no padding


def _conformer_block_params(d, f, k):
  ffn = d * f + f + f * d + d
  mhsa = 4 * (d * d + d) + d * d + 2 * d
  conv = d * 2 * d + 2 * d + k * d + d + 2 * d + d * d + d
  return 2 * ffn + mhsa + conv + 5 * 2 * d


def _conv2d_subsampling_params(d, mel=80):
  freq = ((mel - 1) // 2 - 1) // 2
  return 9 * d + d + 9 * d * d + d + d * freq * d + d


@pytest.mark.parametrize("size", ["tiny", "base", "large"])
def test_parameter_counts_and_logical_names(size):
  kwargs = sizes.encoder_size(size)
  encoder = conformer.ConformerEncoder(**kwargs)
  variables = jax.eval_shape(lambda: encoder.init(jax.random.key(0), jnp.zeros((1, 32, 80)), jnp.array([32])))
  d, f, k, n = kwargs["d_model"], kwargs["ffn_dim"], kwargs["conv_kernel"], kwargs["num_blocks"]
  expected = _conv2d_subsampling_params(d) + n * _conformer_block_params(d, f, k)
  assert sizes.count_params(variables["params"]) == expected
  assert {"tiny": 3_622_752, "base": 83_230_720, "large": 114_849_280}[size] == expected
  boxed = jax.tree.leaves(variables["params"], is_leaf=lambda a: isinstance(a, nn.Partitioned))
  assert all(isinstance(a, nn.Partitioned) and len(a.names) == a.value.ndim for a in boxed)
  names = {"/".join(str(key.key) for key in path) for path, _ in
           jax.tree_util.tree_flatten_with_path(nn.unbox(variables["params"]))[0]}
  assert {"blocks_0/ffn1/dense_in/kernel", "blocks_0/mhsa/query/kernel", "blocks_0/conv/pointwise_in/kernel",
          f"blocks_{n - 1}/conv/depthwise/kernel", "blocks_0/norm_out/scale", "subsampling/proj/kernel"} <= names


def test_runs_under_logical_sharding_rules_in_bfloat16(random_variables):
  encoder = conformer.ConformerEncoder(**_SMALL, dtype=jnp.bfloat16)
  features, lengths = jnp.ones((2, 40, 12)), jnp.array([40, 30])
  variables = random_variables(encoder, features, lengths)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  rules = (("batch", "data"), ("time", None), ("embed", None), ("mlp", None), ("heads", None), ("kv", None),
           ("conv_channels", None))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    # Tracing init applies every parameter's logical names as a sharding constraint: ranks must match.
    boxed = jax.eval_shape(encoder.init, jax.random.key(0), features, lengths)
    out, _ = jax.jit(encoder.apply)(variables, features, lengths)
  assert out.dtype == jnp.bfloat16 and np.isfinite(np.asarray(out, np.float32)).all()
  assert {leaf.dtype for leaf in jax.tree.leaves(nn.unbox(boxed["params"]))} == {np.dtype(np.float32)}
