"""Tests for speechfuse.nn.quantizer against numpy references of fairseq's GumbelVectorQuantizer."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from speechfuse.losses.contrastive import diversity_loss
from speechfuse.nn import quantizer

B, T, DIM, G, V, CODE_DIM = 3, 7, 8, 2, 5, 6


def _setup(seed=0):
  """Module, numpy parameters (as the module's tree), features [B, T, DIM] and valid [B, T] with padding."""
  module = quantizer.GumbelVectorQuantizer(num_groups=G, num_vars=V, codevector_dim=CODE_DIM)
  rng = np.random.default_rng(seed)
  variables = {"params": {
      "codevectors": rng.uniform(size=(1, G * V, CODE_DIM // G)).astype(np.float32),
      "weight_proj": {"kernel": rng.normal(size=(DIM, G * V)).astype(np.float32),
                      "bias": rng.normal(size=(G * V,)).astype(np.float32)},
  }}
  features = rng.normal(size=(B, T, DIM)).astype(np.float32)
  valid = np.arange(T)[None, :] < np.array([[T], [4], [1]])
  return module, variables, features, valid


def _numpy_logits(variables, features):
  proj = variables["params"]["weight_proj"]
  return (features.astype(np.float64) @ proj["kernel"] + proj["bias"]).reshape(B, T, G, V)


def _numpy_perplexity(logits, valid):
  """fairseq's prob_perplexity over the valid frames: sum_g exp(-sum_v p log(p + 1e-7)) of the mean softmax."""
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  marginal = probs[valid].mean(axis=0)  # [G, V]
  return np.exp(-np.sum(marginal * np.log(marginal + 1e-7), axis=-1)).sum()


def test_parameters_have_the_transformers_names_and_shapes():
  module, _, features, valid = _setup()
  shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), features, valid, 2.0)))
  assert jax.tree.map(lambda s: s.shape, shapes) == {"params": {
      "codevectors": (1, G * V, CODE_DIM // G), "weight_proj": {"kernel": (DIM, G * V), "bias": (G * V,)}}}


def test_eval_is_argmax_and_perplexity_matches_numpy():
  module, variables, features, valid = _setup()
  quantized, perplexity, codes = jax.jit(lambda v, f, m: module.apply(v, f, m, 2.0))(variables, features, valid)
  logits = _numpy_logits(variables, features)
  expected_codes = logits.argmax(-1)
  np.testing.assert_array_equal(codes, expected_codes)
  table = variables["params"]["codevectors"][0].reshape(G, V, -1)
  expected = np.concatenate([table[g][expected_codes[..., g]] for g in range(G)], axis=-1)
  np.testing.assert_array_equal(quantized, expected)  # the codebook entries, bit for bit
  expected_perplexity = _numpy_perplexity(logits, valid)
  np.testing.assert_allclose(perplexity, expected_perplexity, rtol=1e-5)
  np.testing.assert_allclose(diversity_loss(perplexity, G * V), (G * V - expected_perplexity) / (G * V), rtol=1e-5)
  assert G <= perplexity <= G * V


def test_train_samples_codebook_entries_with_the_noise_free_perplexity():
  module, variables, features, valid = _setup()
  cotangent = np.random.default_rng(2).normal(size=(B, T, CODE_DIM)).astype(np.float32)

  def run(v):
    out = module.apply(v, features, valid, 1.0, train=True, rngs={"dropout": jax.random.key(1)})
    return jnp.sum(out[0] * cotangent), out

  (_, (quantized, perplexity, codes)), grads = jax.jit(jax.value_and_grad(run, has_aux=True))(variables)
  table = variables["params"]["codevectors"][0].reshape(G, V, -1)
  codes = np.asarray(codes)
  np.testing.assert_array_equal(quantized, np.concatenate([table[g][codes[..., g]] for g in range(G)], axis=-1))
  np.testing.assert_allclose(perplexity, _numpy_perplexity(_numpy_logits(variables, features), valid), rtol=1e-5)
  assert (codes != _numpy_logits(variables, features).argmax(-1)).any()  # the Gumbel noise changes some codes
  # The codebook receives the straight-through gradient of one_hot @ table: the cotangent lands on chosen rows.
  expected = np.zeros((G, V, CODE_DIM // G))
  per_group = cotangent.reshape(B, T, G, -1)
  for b, t, g in np.ndindex(B, T, G):
    expected[g, codes[b, t, g]] += per_group[b, t, g]
  np.testing.assert_allclose(grads["params"]["codevectors"][0].reshape(G, V, -1), expected, rtol=1e-5, atol=1e-6)
  assert np.abs(grads["params"]["weight_proj"]["kernel"]).sum() > 0  # the logits get the soft sample's gradient


def test_gumbel_softmax_is_hard_with_the_soft_gradient():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(4, 3, V)).astype(np.float32)
  weights = rng.normal(size=(4, 3, V)).astype(np.float32)
  key, temperature = jax.random.key(4), 0.7

  def weighted(x):
    sample = quantizer.gumbel_softmax(key, x, temperature)
    return jnp.sum(sample * weights), (sample, jax.random.gumbel(key, x.shape, jnp.float32))

  (_, (sample, noise)), grad = jax.jit(jax.value_and_grad(weighted, has_aux=True))(logits)
  noisy = logits + np.asarray(noise)
  np.testing.assert_array_equal(sample, np.eye(V)[noisy.argmax(-1)])
  # d/dx_i sum_j w_j s_j = s_i (w_i - sum_j w_j s_j) / tau for s = softmax((x + g) / tau).
  soft = np.exp(noisy / temperature - (noisy / temperature).max(-1, keepdims=True))
  soft /= soft.sum(-1, keepdims=True)
  expected = soft * (weights - np.sum(weights * soft, axis=-1, keepdims=True)) / temperature
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_gumbel_temperature_closed_form():
  steps = np.array([0, 1, 1000, 100_000, 277_000, 277_300, 1_000_000])
  expected = np.maximum(2.0 * 0.999995 ** steps.astype(np.float64), 0.5)
  np.testing.assert_allclose(jax.jit(quantizer.gumbel_temperature)(steps), expected, rtol=1e-6)
  np.testing.assert_allclose(quantizer.gumbel_temperature(10, start=1.0, end=0.1, decay=0.9), 0.9**10, rtol=1e-6)
