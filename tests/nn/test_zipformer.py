"""Tests for speechfuse.nn.zipformer and nn.zipformer_scaling: frame counts and shapes, padding invariance, chunk
causality, the building blocks against numpy, Balancer / Whiten gradients, parameter counts, a CTC training step."""

from __future__ import annotations

import functools
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse import audio, models
from speechfuse.audio import frames
from speechfuse.losses import ctc as ctc_loss
from speechfuse.models import acoustic, ctc, encoders
from speechfuse.nn import sizes, zipformer
from speechfuse.nn import zipformer_scaling as scaling
from zipformer_testlib import random_variables as _variables

SMOKE = zipformer.zipformer_size("smoke")
# These tests compile small models: XLA's backend optimisations halve nothing but the compile time on CPU.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _features(batch: int, time: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(batch, time, 80)).astype(np.float32)


# ---- frame counts ---------------------------------------------------------------------------------------------------


def _conv_frames(length: int) -> int:
  """encoder_embed's time axis layer by layer: conv_0 (3, 1), conv_1 (3, 2), conv_2 (3, 1), ConvNeXt 'same'."""
  for kernel, stride in zipformer.EMBED_TIME_LAYERS:
    length = max((length - kernel) // stride + 1, 0)
  return length


def test_frame_counts_and_grid():
  for length in range(9, 60):
    assert zipformer.embed_lengths(length) == _conv_frames(length) == (length - 7) // 2
    assert zipformer.output_lengths(length) == math.ceil(((length - 7) // 2) / 2)
  np.testing.assert_array_equal(zipformer.output_lengths(jnp.array([9, 12, 13, 16, 4])), [1, 1, 2, 2, 0])
  grid = encoders.frame_grid(encoders.default_config("zipformer", "smoke"), 16000)
  assert grid.frame_rate == 25.0
  for samples in (400, 2000, 16000, 16321):
    assert grid.frame_count(samples) == zipformer.output_lengths(frames.kaldi_frame_count(samples))
  # Output t averages embed frames 2t, 2t + 1, reading fbank frames [4t, 4t + 11): centre fbank frame 4t + 5.
  np.testing.assert_allclose(grid.centers(3), 160 * (4 * np.arange(3) + 5) + 200)


def test_shapes_and_stack_rates_for_several_lengths():
  model = zipformer.ZipformerEncoder(**zipformer.zipformer_size("tiny"))
  for time in (9, 123):
    (x, lengths, hidden), _ = jax.eval_shape(lambda: model.init_with_output(
        jax.random.key(0), jnp.zeros((2, time, 80)), jnp.array([time, time]), return_hidden=True))
    assert x.shape == (2, zipformer.output_lengths(time), max(model.dims)) and model.d_model == 160
    embed = zipformer.embed_lengths(time)
    for stack, factor, dim in zip(hidden, model.downsampling_factors, model.dims):
      assert stack.shape == (2, math.ceil(embed / factor), dim)


@pytest.fixture(scope="module")
def smoke():
  model = zipformer.ZipformerEncoder(**SMOKE)
  variables = _variables(model, _features(1, 40), np.array([40]))
  apply = _jit(lambda v, x, lengths: model.apply(v, x, lengths, return_hidden=True))
  return model, variables, apply


def test_lengths_padding_and_padding_invariance(smoke):
  model, variables, apply = smoke
  features = _features(4, 123)
  lengths = np.array([123, 122, 101, 60])
  x, out_lengths, hidden = apply(variables, features, lengths)
  np.testing.assert_array_equal(out_lengths, zipformer.output_lengths(lengths))
  assert x.shape == (4, zipformer.output_lengths(123), 48)
  assert np.all(np.asarray(x)[3, out_lengths[3]:] == 0) and np.isfinite(np.asarray(x)).all()
  assert [h.shape[1] for h in hidden] == [58, 29]  # ceil(58 / factor)
  # An utterance padded in a batch encodes as it does alone (valid frames), in the output and every stack.
  alone, alone_lengths, alone_hidden = apply(variables, features[2:3, :101], lengths[2:3])
  valid = int(alone_lengths[0])
  assert valid == out_lengths[2] and alone.shape[1] == valid
  np.testing.assert_allclose(x[2, :valid], alone[0], atol=1e-5)
  for stack, stack_alone, factor in zip(hidden, alone_hidden, model.downsampling_factors):
    frames_valid = math.ceil(zipformer.embed_lengths(101) / factor)
    np.testing.assert_allclose(stack[2, :frames_valid], stack_alone[0, :frames_valid], atol=1e-5)


def test_chunked_variant_sees_nothing_past_its_chunk():
  model = zipformer.ZipformerEncoder(**SMOKE, causal=True)
  variables = _variables(model, _features(1, 40), np.array([40]))
  apply = _jit(lambda v, x, lengths, chunk, left: model.apply(v, x, lengths, chunk_size=chunk,
                                                                 num_left_chunks=left)[0])
  features, lengths = _features(1, 200), np.array([200])
  chunk = 8  # output frames (25 Hz); 16 embed frames (50 Hz)
  # Embed frame e reads fbank frames up to 2 e + 14 (9-frame convs, ConvNeXt 3 frames ahead); chunk 1 ends at e = 31.
  late = features.copy()
  late[:, 2 * (4 * chunk - 1) + 15:] += 1.0
  for left in (-1, 1):
    chunked = np.asarray(apply(variables, features, lengths, jnp.int32(chunk), jnp.int32(left)))
    chunked_late = np.asarray(apply(variables, late, lengths, jnp.int32(chunk), jnp.int32(left)))
    np.testing.assert_array_equal(chunked[:, :2 * chunk], chunked_late[:, :2 * chunk])  # output chunks 0 and 1
    assert not np.allclose(chunked[:, 2 * chunk:], chunked_late[:, 2 * chunk:])
  full = np.asarray(apply(variables, features, lengths, jnp.int32(-1), jnp.int32(-1)))
  full_late = np.asarray(apply(variables, late, lengths, jnp.int32(-1), jnp.int32(-1)))
  assert not np.allclose(full[:, :2 * chunk], full_late[:, :2 * chunk], atol=1e-4)  # full context looks ahead
  assert not np.allclose(full, chunked, atol=1e-4)
  with pytest.raises(ValueError, match="multiple of 4"):  # 6 embed frames: a stack at 1/8 of the rate would split
    zipformer.ZipformerEncoder(**zipformer.zipformer_size("tiny"), causal=True).check_chunk(3, 2)
  with pytest.raises(ValueError, match="causal=True"):
    zipformer.ZipformerEncoder(**SMOKE).apply(variables, features, lengths, chunk_size=16)


# ---- building blocks against numpy ----------------------------------------------------------------------------------


def _softplus(x):
  return np.logaddexp(0.0, x)


def test_swoosh_against_numpy_and_finite_far_out():
  x = np.linspace(-200, 200, 801)
  np.testing.assert_allclose(scaling.swoosh_r(jnp.asarray(x, jnp.float32)), _softplus(x - 1) - 0.08 * x - 0.313261687,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(scaling.swoosh_l(jnp.asarray(x, jnp.float32)), _softplus(x - 4) - 0.08 * x - 0.035,
                             rtol=1e-5, atol=1e-5)
  assert abs(float(scaling.swoosh_r(jnp.float32(0.0)))) < 1e-6  # SwooshR(0) = 0 by its constant
  grads = jax.vmap(jax.grad(scaling.swoosh_l))(jnp.asarray(x, jnp.float32))
  assert np.isfinite(grads).all()


def test_bias_norm_against_numpy():
  x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32) * 3 + 1
  module = scaling.BiasNorm()
  variables = {"params": {"bias": np.linspace(-1, 1, 8).astype(np.float32), "log_scale": np.float32(0.7)}}
  out = module.apply(variables, x)
  expected = x * np.exp(0.7) / np.sqrt(np.mean((x - variables["params"]["bias"]) ** 2, axis=-1, keepdims=True))
  np.testing.assert_allclose(out, expected, rtol=1e-5)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x))["params"]
  assert shapes["bias"].value.shape == (8,) and shapes["log_scale"].shape == ()


def test_simple_downsample_against_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 11, 3)).astype(np.float32)
  lengths = np.array([11, 7])
  logits = np.array([0.3, -0.2, 0.5], np.float32)
  out = _jit(lambda p, x: zipformer.SimpleDownsample(3).apply(p, x, lengths))({"params": {"logits": logits}}, x)
  assert out.shape == (2, 4, 3)
  weights = np.exp(logits) / np.exp(logits).sum()
  for b, length in enumerate(lengths):
    alone = x[b, :length]
    padded = np.concatenate([alone, np.repeat(alone[-1:], -length % 3, axis=0)])  # the last frame repeated
    expected = np.einsum("tfc,f->tc", padded.reshape(-1, 3, 3), weights)
    np.testing.assert_allclose(out[b, :len(expected)], expected, rtol=1e-5, atol=1e-6)


def test_full_dim_output_and_channel_conversion():
  outputs = [jnp.full((1, 2, 4), 1.0), jnp.full((1, 2, 6), 2.0), jnp.full((1, 2, 3), 3.0)]
  np.testing.assert_array_equal(zipformer.full_dim_output(outputs)[0, 0], [3, 3, 3, 2, 2, 2])
  x = jnp.arange(4.0)[None]
  np.testing.assert_array_equal(zipformer.convert_num_channels(x, 2), [[0, 1]])
  np.testing.assert_array_equal(zipformer.convert_num_channels(x, 6), [[0, 1, 2, 3, 0, 0]])


def test_compact_positions():
  table = zipformer.compact_rel_positions(5, 8)
  assert table.shape == (9, 8)
  np.testing.assert_array_equal(table[:, -1], 1.0)
  centre = table[4]  # offset 0: cosines 1, sines 0
  np.testing.assert_allclose(centre[:-1:2], 1.0)
  np.testing.assert_allclose(centre[1:-1:2], 0.0, atol=1e-7)
  np.testing.assert_allclose(table[::-1, 0:-1:2], table[:, 0:-1:2], atol=1e-6)  # cosines even in the offset
  np.testing.assert_allclose(table[::-1, 1:-1:2], -table[:, 1:-1:2], atol=1e-6)  # sines odd
  # Near 0 the compressed offset is the offset: feature 1 is sin(atan(offset / (dim / 2 pi))) to first order.
  np.testing.assert_allclose(table[5, 1], np.sin(np.arctan(8 ** 0.5 * np.log1p(1 / 8 ** 0.5) / (8 / (2 * np.pi)))),
                             rtol=1e-6)


def _chunk_causal_reference(x, causal_kernel, causal_bias, chunk_kernel, chunk_bias, edge, chunk):
  """icefall's ChunkCausalDepthwiseConv1d.forward on one unpadded utterance x [time, channels] (numpy)."""
  time, channels = x.shape
  taps, half = chunk_kernel.shape[0], chunk_kernel.shape[0] // 2
  if chunk < 0 or chunk > time:
    chunk = time
  padded = np.concatenate([np.zeros((half, channels)), x, np.zeros((-time % chunk, channels))])
  causal = sum(causal_kernel[j] * padded[j:j + time] for j in range(half + 1)) + causal_bias
  out = []
  for block in padded[half:].reshape(-1, chunk, channels):
    block_padded = np.concatenate([np.zeros((half, channels)), block, np.zeros((half, channels))])
    out.append(sum(chunk_kernel[j] * block_padded[j:j + chunk] for j in range(taps)) + chunk_bias)
  if chunk < taps:
    left, right = edge[0, :chunk], edge[1, -chunk:]
  else:
    zeros = np.zeros((chunk - taps, channels))
    left, right = np.concatenate([edge[0], zeros]), np.concatenate([zeros, edge[1]])
  scale = 1.0 + left + right
  return np.concatenate([block * scale for block in out])[:time] + causal


@pytest.mark.parametrize("chunk", [None, 3, 4, 8])
def test_chunk_causal_conv_against_icefall_transcription(chunk):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 13, 3)).astype(np.float32)
  lengths = np.array([13, 9])
  x[1, 9:] = 0.0  # the conv module zeroes padding before the depthwise conv
  params = {"causal": {"kernel": rng.normal(size=(3, 3)), "bias": rng.normal(size=3)},
            "chunkwise": {"kernel": rng.normal(size=(5, 3)), "bias": rng.normal(size=3)},
            "chunkwise_scale": rng.normal(size=(2, 5, 3)) * 0.3}
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  out = _jit(lambda p, x: zipformer.ChunkCausalDepthwiseConv(5).apply({"params": p}, x, lengths, chunk))(params, x)
  for b, length in enumerate(lengths):
    expected = _chunk_causal_reference(
        x[b, :length].astype(np.float64), params["causal"]["kernel"], params["causal"]["bias"],
        params["chunkwise"]["kernel"], params["chunkwise"]["bias"], params["chunkwise_scale"],
        -1 if chunk is None else chunk)
    np.testing.assert_allclose(out[b, :length], expected, rtol=1e-4, atol=1e-5)


# ---- Balancer, Whiten and the other gradient-only operations --------------------------------------------------------


def _numerical_gradient(f, x, eps=1e-6):
  grad = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    step = np.zeros_like(x)
    step[index] = eps
    grad[index] = (f(x + step) - f(x - step)) / (2 * eps)
  return grad


def _balancer_loss(x, min_mean, max_mean, min_rms, max_rms):
  """icefall's BalancerFunction loss in numpy (float64), channels last."""
  x = x.reshape(-1, x.shape[-1])
  mean, uncentered = x.mean(0), (x * x).mean(0)
  stddev, rms = np.sqrt(np.maximum(uncentered - mean ** 2, 1e-20)), np.sqrt(np.maximum(uncentered, 1e-20))
  m = mean / stddev
  return np.sum(np.abs(m - np.clip(m, min_mean, max_mean)) + np.abs(np.log(np.clip(rms, min_rms, max_rms) / rms)))


def _balancer_input():
  """[4, 5, 6]: channel 0 almost always negative, 1 always positive, 2 tiny, 3 huge, 4 and 5 within the limits."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 5, 6))
  x[..., 0] -= 3.0
  x[..., 1] += 3.0
  x[..., 2] *= 0.01
  x[..., 3] *= 50.0
  return x


def test_balancer_gradient_against_numpy():
  x, g = _balancer_input(), np.random.default_rng(1).normal(size=(4, 5, 6))
  limits = (scaling.positive_fraction_to_mean(0.05), scaling.positive_fraction_to_mean(0.95), scaling.abs_to_rms(0.2),
            scaling.abs_to_rms(10.0))
  direction = _numerical_gradient(lambda x: _balancer_loss(x, *limits), x).reshape(-1, 6)
  direction *= 0.04 / np.maximum(np.sqrt(np.mean(direction ** 2, 0)), 1e-20)
  expected = g + np.abs(g) * direction.reshape(x.shape)
  balancer_limits = scaling.BalancerLimits(*(jnp.float32(v) for v in (*limits, 0.04)))
  x32, g32 = jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32)
  vjp = _jit(lambda x, g, active: jax.vjp(lambda x: scaling.balance(x, active, balancer_limits), x)[1](g)[0])
  assert np.array_equal(scaling.balance(x32, jnp.bool_(True), balancer_limits), x32)  # the identity forward
  grad = vjp(x32, g32, jnp.bool_(True))
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)
  added = np.asarray(grad - g32)
  np.testing.assert_array_equal(added[..., 4:], 0.0)  # channels within the limits: untouched
  # A gradient step (x -= lr * added) raises the positive fraction of channel 0, lowers channel 1's, grows channel 2
  # and shrinks channel 3.
  assert added[..., 0].mean() < 0 < added[..., 1].mean()
  assert np.sum(added[..., 2] * x[..., 2]) < 0 < np.sum(added[..., 3] * x[..., 3])
  np.testing.assert_array_equal(vjp(x32, g32, jnp.bool_(False)), g32)


def _whitening_metric(x, groups):
  x = x.reshape(-1, groups, x.shape[-1] // groups).transpose(1, 0, 2)
  x = x - x.mean(1, keepdims=True)
  covariance = np.einsum("gnc,gnd->gcd", x, x)
  channels = groups * x.shape[2]
  return (np.sum(covariance ** 2) / channels) / (np.einsum("gcc->", covariance) / channels) ** 2


@pytest.mark.parametrize("groups", [1, 2])
def test_whiten_gradient_against_numpy(groups):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 5, 8)) @ rng.normal(size=(8, 8))  # correlated channels
  g = rng.normal(size=x.shape)
  metric = _whitening_metric(x, groups)
  assert metric > 1.0
  np.testing.assert_allclose(scaling.whitening_metric(jnp.asarray(x, jnp.float32), groups), metric, rtol=1e-5)
  penalty = _numerical_gradient(lambda x: _whitening_metric(x, groups), x)
  expected = g + 0.02 * np.linalg.norm(g) / np.linalg.norm(penalty) * penalty
  x32, g32 = jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32)
  vjp = _jit(lambda x, g, limit: jax.vjp(lambda x: scaling.whiten(x, groups, jnp.bool_(True), limit,
                                                                  jnp.float32(0.02)), x)[1](g)[0])
  assert np.array_equal(scaling.whiten(x32, groups, jnp.bool_(True), jnp.float32(1.0), jnp.float32(0.02)), x32)
  for limit, want in ((metric * 0.9, expected), (metric * 1.1, g)):  # a penalty only above the limit
    np.testing.assert_allclose(vjp(x32, g32, jnp.float32(limit)), want, rtol=1e-4, atol=1e-6)


def test_limit_param_value_and_score_penalty():
  x = jnp.array([-2.0, -2.0, 0.0, 2.0, 2.0])
  g = jnp.array([1.0, -1.0, 1.0, -1.0, 1.0])
  (grad,) = jax.vjp(lambda x: scaling.limit_param_value(x, jnp.bool_(True), jnp.float32(-1), jnp.float32(1)), x)[1](g)
  np.testing.assert_array_equal(grad, [-1.0, -1.0, 1.0, 1.0, 1.0])  # only moves back into [-1, 1] flip
  (grad,) = jax.vjp(lambda x: scaling.penalize_abs_values_gt(x, jnp.bool_(True), 1.5, 0.1), x)[1](g)
  np.testing.assert_allclose(grad, [0.9, -1.1, 1.0, -0.9, 1.1])
  (grad,) = jax.vjp(lambda x: scaling.scale_grad(x, 0.2), x)[1](g)
  np.testing.assert_allclose(grad, 0.2 * g)


def test_schedules_and_firing():
  schedule = scaling.ScheduledFloat(((0.0, 0.5), (8000.0, 0.125), (9000.0, 0.0)), default=0.4)
  steps = np.array([0, 1000, 7999, 8500, 20000])
  expected = np.interp(steps, [0, 8000, 9000], [0.5, 0.125, 0.0])
  np.testing.assert_allclose([schedule(int(s)) for s in steps], expected, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(schedule)(jnp.asarray(steps)), expected, rtol=1e-6)
  assert schedule(None) == 0.4

  class Site(nn.Module):
    def __call__(self, step):
      return scaling.fires(self, 0.25, step)

  class Sites(nn.Module):
    @nn.compact
    def __call__(self, step):
      return Site(name="a")(step), Site(name="b")(step)

  a, b = map(np.asarray, jax.vmap(lambda s: Sites().apply({}, s))(jnp.arange(4000)))
  assert 0.22 < a.mean() < 0.28 and 0.22 < b.mean() < 0.28
  assert 0.03 < np.mean(a & b) < 0.1  # each site fires at its own steps
  assert [Sites().apply({}, s)[0] for s in range(50)] == list(a[:50])  # Python steps: the same draws


def test_gradient_operations_leave_the_forward_pass_bit_identical_and_act_with_a_step():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 8)) * 3.0, jnp.float32)
  module = zipformer.FeedForward(16)
  variables = _variables(module, x, train=False, step=None)
  forward = _jit(lambda v, x, step: module.apply(v, x, train=False, step=step))
  grad = _jit(jax.grad(lambda v, x, step: jnp.sum(module.apply(v, x, train=False, step=step) ** 3), argnums=1))
  reference, reference_grad = forward(variables, x, None), grad(variables, x, None)
  changed = 0
  for step in range(12):
    assert np.array_equal(forward(variables, x, jnp.int32(step)), reference)
    step_grad = grad(variables, x, jnp.int32(step))
    assert np.isfinite(step_grad).all()
    changed += not np.array_equal(step_grad, reference_grad)
  assert 0 < changed < 12  # the Balancer fires at about half of these steps, and not at every one
  balancer = scaling.Balancer(min_positive=0.45, prob=1.0)
  pullback = lambda step: jax.vjp(lambda x: balancer.apply({}, x, step), x)[1](jnp.ones_like(x))[0]
  np.testing.assert_array_equal(pullback(None), jnp.ones_like(x))
  assert not np.array_equal(pullback(3), jnp.ones_like(x))


# ---- sizes, registry, training ---------------------------------------------------------------------------------------


def _icefall_count(size: dict, mel: int = 80) -> tuple[int, int]:
  """Parameters of icefall's Conv2dSubsampling + Zipformer2 of these sizes from their modules' shapes, and how many of
  them are the unused per-layer bypass_scale."""
  c1, c2, c3 = size["embed_channels"]
  linear = lambda a, b, bias=True: a * b + (b if bias else 0)
  total = (9 * c1 + c1) + (9 * c1 * c2 + c2) + (9 * c2 * c3 + c3) + (49 * c3 + c3) + linear(c3, 3 * c3)
  total += linear(3 * c3, c3) + linear((((mel - 1) // 2 - 1) // 2) * c3, size["dims"][0]) + size["dims"][0] + 1
  q, p, v = size["query_head_dim"], size["pos_head_dim"], size["value_head_dim"]
  unused = 0
  for i, factor in enumerate(size["downsampling_factors"]):
    d, h, f, k = size["dims"][i], size["num_heads"][i], size["feedforward_dims"][i], size["conv_kernels"][i]
    layer = linear(d, (2 * q + p) * h) + linear(size["pos_dim"], p * h, False)
    layer += 2 * (linear(d, v * h) + linear(v * h, d))
    layer += sum(linear(d, hidden) + linear(hidden, d) for hidden in (f * 3 // 4, f, f * 5 // 4))
    layer += linear(d, 3 * (3 * d // 4)) + linear(3 * d // 4, d) + 2 * (linear(d, 2 * d) + k * d + d + linear(d, d))
    layer += 4 * d + 1  # bypass_scale (unused), bypass, bypass_mid, norm.bias; + norm.log_scale
    total += layer * size["num_layers"][i] + (factor + d if factor > 1 else 0)
    unused += d * size["num_layers"][i]
  return total + 2, unused


def _causal_extra(size: dict) -> int:
  """Parameters causal=True adds: per conv module a causal conv of K // 2 + 1 taps and its bias, and edge factors."""
  return sum(2 * layers * dim * (kernel // 2 + 2 + 2 * kernel) for layers, dim, kernel in
             zip(size["num_layers"], size["dims"], size["conv_kernels"]))


def test_parameter_counts_match_the_docstring_and_icefall():
  table = {}
  for line in zipformer.__doc__.splitlines():
    match = re.match(r"  (smoke|tiny|base|large) .* ([\d,]+) \(([\d,]+)\)$", line)
    if match:
      table[match[1]] = (int(match[2].replace(",", "")), int(match[3].replace(",", "")))
  assert set(table) == set(zipformer.SIZES)
  count = lambda model: sizes.count_params(jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 20, 80)), jnp.array([20])))["params"])
  for size, (params, causal_params) in table.items():  # closed forms for every size, checked on smoke and base
    kwargs = zipformer.zipformer_size(size)
    icefall, unused = _icefall_count(kwargs)
    assert icefall - unused == params and causal_params == params + _causal_extra(kwargs), size
  assert count(zipformer.ZipformerEncoder(**zipformer.zipformer_size("base"))) == table["base"][0]
  assert count(zipformer.ZipformerEncoder(**SMOKE)) == table["smoke"][0]
  assert count(zipformer.ZipformerEncoder(**SMOKE, causal=True)) == table["smoke"][1]


def test_registry_entry():
  config = encoders.default_config("zipformer", "base")
  entry = encoders.encoder_type("zipformer")
  assert set(config.keys()) - {"architecture"} == set(entry.keys())
  assert entry.inputs == "fbank" and not encoders.streams(config)  # symmetric convolutions look ahead
  config.causal = True
  assert encoders.streams(config)
  encoder = encoders.make_encoder(config, jnp.float32)
  assert encoder.d_model == 512 and encoder.dims == (192, 256, 384, 512, 384, 256)


def test_ctc_training_step_is_finite_and_gets_the_step():
  rng = np.random.default_rng(0)
  config = ctc.default_config("zipformer", "smoke")
  config.encoder = encoders.default_config("zipformer", "smoke")
  config.spec_augment.enabled = False
  stats = audio.CMVNStats(rng.normal(size=80) * 100, np.full(80, 1e4) + rng.random(80) * 100, 100)
  model = models.get_model(config, dtype=jnp.float32, vocab_size=7, cmvn=stats)
  waves = (rng.normal(size=(2, 8000)) * 2000).astype(np.int16)
  lengths = np.array([8000, 6400], np.int32)
  labels, label_lengths = np.array([[1, 2, 3], [4, 5, 0]], np.int32), np.array([3, 2], np.int32)
  variables = _variables(model, waves, lengths)
  rngs = {name: jax.random.key(i) for i, name in enumerate(acoustic.RNG_STREAMS)}

  def loss(params, step):
    log_probs, out_lengths = model.apply({"params": params}, waves, lengths, train=True, rngs=rngs, step=step)
    return jnp.mean(ctc_loss.ctc_loss(log_probs, out_lengths, labels, label_lengths))

  # The CTC task's path: the trainer's step goes through models.ctc to the encoder's schedules (at step 100 its
  # dropout and layer skipping are on; without a step they are off), so the loss differs.
  value, grads = _jit(jax.value_and_grad(loss))(variables["params"], jnp.int32(100))
  assert np.isfinite(value) and value != _jit(loss)(variables["params"], None)
  leaves = jax.tree.leaves(grads)
  assert all(np.isfinite(leaf).all() for leaf in leaves)
  assert sum(float(jnp.abs(leaf).sum()) > 0 for leaf in leaves) > 0.9 * len(leaves)


@pytest.mark.slow
def test_encoder_gradients_with_a_step_are_finite_and_shaped():
  model = zipformer.ZipformerEncoder(**SMOKE)
  features, lengths = _features(2, 100), np.array([100, 77])
  variables = _variables(model, features, lengths)

  def loss(params, step):
    x, _ = model.apply({"params": params}, features, lengths, train=True, step=step,
                       rngs={"dropout": jax.random.key(0)})
    return jnp.sum(x ** 2)

  exact = _jit(jax.grad(lambda p: loss(p, None)))(variables["params"])
  shaped = _jit(jax.grad(loss))(variables["params"], jnp.int32(100))
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(shaped))
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(exact), jax.tree.leaves(shaped)))
