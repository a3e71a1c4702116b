"""Tests for speechfuse.nn.attention: masks against WeNet's loops, rel_shift and MHSA against numpy references."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse.nn import attention
from speechfuse.nn import layers


def _wenet_chunk_mask(size: int, chunk_size: int, num_left_chunks: int) -> np.ndarray:
  """WeNet's subsequent_chunk_mask, written as its loop."""
  mask = np.zeros((size, size), bool)
  for i in range(size):
    start = 0 if num_left_chunks < 0 else max((i // chunk_size - num_left_chunks) * chunk_size, 0)
    ending = min((i // chunk_size + 1) * chunk_size, size)
    mask[i, start:ending] = True
  return mask


@pytest.mark.parametrize("chunk_size,num_left_chunks", [(1, -1), (3, -1), (4, 0), (4, 2), (5, 1), (7, -1), (30, -1)])
def test_chunk_mask_matches_wenet(chunk_size, num_left_chunks):
  expected = _wenet_chunk_mask(17, chunk_size, num_left_chunks)
  np.testing.assert_array_equal(attention.make_chunk_mask(17, chunk_size, num_left_chunks), expected)


def test_chunk_mask_with_traced_chunk_size():
  masks = jax.jit(jax.vmap(lambda c, n: attention.make_chunk_mask(13, c, n)))(
      jnp.array([2, 3, 13]), jnp.array([-1, 1, -1]))
  for mask, (c, n) in zip(masks, [(2, -1), (3, 1), (13, -1)]):
    np.testing.assert_array_equal(mask, _wenet_chunk_mask(13, c, n))
  assert np.asarray(masks[2]).all()  # chunk >= time is full context


def test_padding_and_attention_masks():
  valid = attention.padding_mask(jnp.array([3, 0, 5]), 5)
  np.testing.assert_array_equal(valid, [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
  chunk = attention.make_chunk_mask(5, 2)
  mask = attention.attention_mask(valid, chunk)
  assert mask.shape == (3, 5, 5)
  np.testing.assert_array_equal(mask, np.asarray(valid)[:, None, :] & np.asarray(chunk)[None])


def test_sample_chunk_distribution_under_jit():
  keys = jax.random.split(jax.random.key(0), 4000)
  sizes, lefts = jax.jit(jax.vmap(lambda k: attention.sample_chunk(k, 80)))(keys)
  sizes, lefts = np.asarray(sizes), np.asarray(lefts)
  full = sizes == 80
  assert abs(full.mean() - 0.5) < 0.04
  assert set(np.unique(sizes[~full])) == set(range(1, 26))
  assert (lefts == -1).all()
  sizes, lefts = jax.jit(jax.vmap(lambda k: attention.sample_chunk(
      k, 80, full_context_prob=0.0, max_chunk_size=8, dynamic_left_chunks=True)))(keys)
  sizes, lefts = np.asarray(sizes), np.asarray(lefts)
  assert sizes.min() == 1 and sizes.max() == 8
  assert (lefts >= 0).all() and (lefts < np.maximum((80 - 1) // sizes, 1)).all()
  assert lefts.max() > 10  # the left context range grows as chunks shrink


def test_relative_sinusoids_order():
  table = attention.relative_sinusoids(4, 6)
  assert table.shape == (7, 6)
  np.testing.assert_allclose(table, layers.sinusoids(np.array([3, 2, 1, 0, -1, -2, -3]), 6))
  np.testing.assert_allclose(table[3], [0, 1, 0, 1, 0, 1])  # relative position 0


def test_rel_shift_matches_gather():
  time = 6
  scores = np.random.default_rng(0).normal(size=(2, 3, time, 2 * time - 1)).astype(np.float32)
  i, j = np.meshgrid(np.arange(time), np.arange(time), indexing="ij")
  expected = scores[..., i, time - 1 - i + j]
  np.testing.assert_array_equal(jax.jit(attention.rel_shift)(scores), expected)


def _reference_attention(params, x, mask, relative):
  """Numpy MHSA with an explicit loop over relative positions i - j (no shift trick)."""
  x = np.asarray(x, np.float64)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  batch, time, embed = x.shape
  heads, head_dim = p["query"]["bias"].shape
  project = lambda name, h: np.einsum("bte,ehd->bthd", h, p[name]["kernel"]) + p[name]["bias"]
  q, k, v = project("query", x), project("key", x), project("value", x)
  scores = np.zeros((batch, heads, time, time))
  for i in range(time):
    for j in range(time):
      if relative:
        rel = layers.sinusoids(np.array([i - j]), embed)[0].astype(np.float64)
        pos = np.einsum("e,ehd->hd", rel, p["pos"]["kernel"])
        scores[:, :, i, j] = (np.einsum("bhd,bhd->bh", q[:, i] + p["pos_bias_u"], k[:, j])
                              + np.einsum("bhd,hd->bh", q[:, i] + p["pos_bias_v"], pos))
      else:
        scores[:, :, i, j] = np.einsum("bhd,bhd->bh", q[:, i], k[:, j])
  scores = np.where(mask[:, None], scores / np.sqrt(head_dim), -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights = weights / weights.sum(-1, keepdims=True)
  context = np.einsum("bhqk,bkhd->bqhd", weights, v)
  return np.einsum("bqhd,hde->bqe", context, p["out"]["kernel"]) + p["out"]["bias"]


@pytest.mark.parametrize("relative", [True, False])
def test_attention_matches_reference(relative, random_variables):
  x = np.random.default_rng(1).normal(size=(2, 7, 16)).astype(np.float32)
  mask = attention.attention_mask(attention.padding_mask(jnp.array([7, 5]), 7), attention.make_chunk_mask(7, 3))
  module = attention.MultiHeadSelfAttention(num_heads=4, relative=relative)
  params = random_variables(module, x, mask)["params"]  # random biases too, so a wrong bias axis would show
  out = jax.jit(module.apply)({"params": params}, x, mask)
  np.testing.assert_allclose(out, _reference_attention(params, x, np.asarray(mask), relative), rtol=2e-4, atol=2e-5)


def test_attention_parameter_shapes_and_logical_names():
  module = attention.MultiHeadSelfAttention(num_heads=4)
  params = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 5, 32)), jnp.ones((1, 5, 5), bool))["params"]
  shapes = jax.tree.map(lambda a: a.shape, nn.unbox(params))
  assert shapes == {
      "query": {"kernel": (32, 4, 8), "bias": (4, 8)}, "key": {"kernel": (32, 4, 8), "bias": (4, 8)},
      "value": {"kernel": (32, 4, 8), "bias": (4, 8)}, "out": {"kernel": (4, 8, 32), "bias": (32,)},
      "pos": {"kernel": (32, 4, 8)}, "pos_bias_u": (4, 8), "pos_bias_v": (4, 8),
  }
  assert params["query"]["kernel"].names == ("embed", "heads", "kv")
  assert params["out"]["kernel"].names == ("heads", "kv", "embed")
  assert params["pos_bias_u"].names == ("heads", "kv")


def test_padding_future_chunks_and_empty_rows(random_variables):
  module = attention.MultiHeadSelfAttention(num_heads=2)
  x = jax.random.normal(jax.random.key(1), (2, 12, 8))
  valid = attention.padding_mask(jnp.array([12, 9]), 12)
  mask = attention.attention_mask(valid, attention.make_chunk_mask(12, 4, 1))
  variables = random_variables(module, x, mask)
  apply = jax.jit(module.apply)
  out = apply(variables, x, mask)
  # A query row with no allowed key gives the out bias alone, not NaN or an average over padding.
  empty = apply(variables, x, mask.at[1, 3].set(False))
  np.testing.assert_allclose(empty[1, 3], variables["params"]["out"]["bias"], atol=1e-6)
  np.testing.assert_allclose(empty[0], out[0], atol=1e-6)
  changed = x.at[1, 9:].set(100.0).at[0, 8:].add(5.0)  # padding of utterance 1, third chunk of utterance 0
  out_changed = apply(variables, changed, mask)
  np.testing.assert_allclose(out_changed[1, :9], out[1, :9], atol=1e-5)
  np.testing.assert_allclose(out_changed[0, :8], out[0, :8], atol=1e-5)
  assert not np.allclose(out_changed[0, 8:], out[0, 8:])
