"""Tests for speechfuse.nn.wav2vec2: frame counts, the extractor and positional conv against numpy, the encoder."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse.nn import sizes
from speechfuse.nn import transformer
from speechfuse.nn import wav2vec2

_SMALL = dict(num_blocks=2, d_model=32, num_heads=2, ffn_dim=64, extractor_channels=8, pos_conv_kernel=8,
              pos_conv_groups=4)
_erf = np.vectorize(math.erf)


def _gelu(x):
  return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))


def _layer_norm(x, p, axis=-1):
  mean, var = x.mean(axis, keepdims=True), x.var(axis, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _conv(x, kernel, stride):
  """x: [time, in], kernel: [k, in, out] -> VALID strided conv [time', out], a loop over taps."""
  k = kernel.shape[0]
  frames = (x.shape[0] - k) // stride + 1
  return sum(x[j:j + stride * (frames - 1) + 1:stride] @ kernel[j] for j in range(k))


def _extractor(waveform, params, mode):
  x = np.asarray(waveform, np.float64)[:, None]
  for i in range(7):
    p = params[f"conv_layers_{i}"]
    x = _conv(x, np.asarray(p["conv"]["kernel"], np.float64), wav2vec2.EXTRACTOR_KERNELS[i][1])
    if mode == "layer_norm":
      x = _layer_norm(x, p["layer_norm"])
    elif i == 0:  # GroupNorm(C, C): each channel over time
      x = _layer_norm(x, p["layer_norm"], axis=0)
    x = _gelu(x)
  return x


def test_frame_lengths_closed_form_and_convs():
  samples = np.arange(0, 5000)
  expected = np.where(samples >= 400, (samples - 400) // 320 + 1, 0)
  np.testing.assert_array_equal(wav2vec2.frame_lengths(jnp.asarray(samples)), expected)
  assert wav2vec2.frame_lengths(16000) == 50 - 1 and wav2vec2.frame_lengths(16080) == 50
  extractor = wav2vec2.ConvFeatureExtractor(channels=4)
  for n in (400, 719, 720, 1999):
    x = jnp.zeros((1, n))
    out, lengths = jax.eval_shape(lambda x: extractor.init_with_output(jax.random.key(0), x, jnp.array([n]))[0], x)
    assert out.shape == (1, expected[n], 4) and lengths.shape == (1,)


@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
def test_extractor_matches_numpy_and_ignores_padding(mode, random_variables):
  extractor = wav2vec2.ConvFeatureExtractor(channels=8, mode=mode)
  rng = np.random.default_rng(0)
  waveform = rng.uniform(-1, 1, size=(2, 2000)).astype(np.float32)
  variables = random_variables(extractor, waveform, np.array([2000, 2000]))
  apply = jax.jit(lambda w, n: extractor.apply(variables, w, n))
  out, lengths = apply(waveform, jnp.array([2000, 1500]))
  np.testing.assert_array_equal(lengths, [6, 4])
  params = variables["params"]
  np.testing.assert_allclose(out[0], _extractor(waveform[0], params, mode), rtol=1e-4, atol=1e-4)
  # The second row is 1500 samples long: its valid frames are those of the row alone, padding ignored.
  np.testing.assert_allclose(out[1, :4], _extractor(waveform[1, :1500], params, mode), rtol=1e-4, atol=1e-4)


def test_positional_conv_matches_numpy(random_variables):
  module = wav2vec2.PositionalConvEmbedding(kernel_size=128, groups=16)
  x = np.random.default_rng(1).normal(size=(1, 10, 32)).astype(np.float32)
  variables = nn.unbox(module.init(jax.random.key(0), x))
  p = variables["params"]
  # Weight norm starts at g = ||v|| per tap, so the initial kernel is v itself.
  np.testing.assert_allclose(p["kernel_g"], np.linalg.norm(p["kernel_v"], axis=(1, 2)), rtol=1e-6)
  p = random_variables(module, x)["params"]
  v, g = np.asarray(p["kernel_v"], np.float64), np.asarray(p["kernel_g"], np.float64)
  kernel = v * (g / np.sqrt((v**2).sum(axis=(1, 2))))[:, None, None]  # [128, 2, 32]
  padded = np.pad(x[0].astype(np.float64), ((64, 64), (0, 0)))
  expected = np.zeros((11, 32))
  for group in range(16):  # PyTorch grouping: out channels [2g, 2g+2) read in channels [2g, 2g+2)
    channels = slice(2 * group, 2 * group + 2)
    expected[:, channels] = _conv(padded[:, channels], kernel[:, :, channels], 1)
  expected = _gelu(expected[:10] + p["bias"])  # SamePad drops the extra last frame
  np.testing.assert_allclose(module.apply({"params": p}, x)[0], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_encoder_orders_layers_and_ignores_padding(pre_norm, random_variables):
  encoder = wav2vec2.Wav2Vec2Encoder(**_SMALL, pre_norm=pre_norm)
  waveform = np.random.default_rng(2).uniform(-1, 1, size=(2, 4000)).astype(np.float32)
  variables = random_variables(encoder, waveform, np.array([4000, 4000]))
  apply = jax.jit(lambda w, n: encoder.apply(variables, w, n))
  out = apply(waveform, jnp.array([4000, 2800]))
  assert out.x.shape == (2, 12, 32) and len(out.hidden) == 3 and out.features.shape == (2, 12, 8)
  np.testing.assert_array_equal(out.lengths, [12, 8])
  if not pre_norm:
    np.testing.assert_array_equal(out.x, out.hidden[-1])
  assert not np.asarray(out.x[1, 8:]).any() and not np.asarray(out.features[1, 8:]).any()
  alone = apply(waveform[1:, :2800], jnp.array([2800]))
  np.testing.assert_allclose(out.x[1, :8], alone.x[0], rtol=1e-4, atol=1e-4)

  # Rebuild the first row from the submodules, following the documented data flow.
  params = variables["params"]
  sub = lambda module, name, *args: jax.jit(module.apply)({"params": params[name]}, *args)
  features = out.features[:1]
  x, _ = sub(wav2vec2.FeatureProjection(32), "feature_projection", features)
  x = x + sub(wav2vec2.PositionalConvEmbedding(8, 4), "pos_conv_embed", x)
  if not pre_norm:
    x = _layer_norm(np.asarray(x), params["encoder_norm"])
  np.testing.assert_allclose(out.hidden[0][:1], x, rtol=1e-4, atol=1e-4)
  mask = np.ones((1, 12, 12), bool)
  for i in range(2):
    x = sub(transformer.TransformerBlock(2, 64, pre_norm, ffn_activation="gelu_exact"), f"blocks_{i}", x, mask)
    np.testing.assert_allclose(out.hidden[i + 1][:1], x, rtol=1e-4, atol=1e-4)  # pre-LN: before encoder_norm
  if pre_norm:
    x = _layer_norm(np.asarray(x), params["encoder_norm"])
  np.testing.assert_allclose(out.x[:1], x, rtol=1e-4, atol=1e-4)


def test_mask_embedding_hides_masked_frames(random_variables):
  encoder = wav2vec2.Wav2Vec2Encoder(**_SMALL)
  waveform = np.random.default_rng(3).uniform(-1, 1, size=(1, 4000)).astype(np.float32)
  lengths = jnp.array([4000])
  variables = random_variables(encoder, waveform, lengths)
  apply = jax.jit(lambda w, m: encoder.apply(variables, w, lengths, mask=m).x)
  everything = jnp.ones((1, 12), bool)
  other = waveform[:, ::-1].copy()
  # With every frame masked the encoder sees only the mask embedding: the waveform no longer matters.
  np.testing.assert_allclose(apply(waveform, everything), apply(other, everything), atol=1e-5)
  nothing = jnp.zeros((1, 12), bool)
  assert not np.allclose(apply(waveform, nothing), apply(other, nothing), atol=1e-3)


def test_feature_grad_mult_scales_extractor_gradients(random_variables):
  waveform = np.random.default_rng(4).uniform(-1, 1, size=(1, 2000)).astype(np.float32)
  lengths = jnp.array([2000])
  small = dict(_SMALL, num_blocks=1)
  variables = random_variables(wav2vec2.Wav2Vec2Encoder(**small), waveform, lengths)

  def run(mult):
    encoder = wav2vec2.Wav2Vec2Encoder(**small, feature_grad_mult=mult)
    # A loss on the returned features only: the extractor's backward pass, without the Transformer's.
    loss = lambda p: jnp.sum(encoder.apply({"params": p}, waveform, lengths).features ** 2)
    x = jax.jit(lambda p: encoder.apply({"params": p}, waveform, lengths).x)(variables["params"])
    return x, jax.jit(jax.grad(loss))(variables["params"])["feature_extractor"]["conv_layers_3"]["conv"]["kernel"]

  (x_full, full), (x_scaled, scaled) = run(1.0), run(0.1)
  np.testing.assert_allclose(x_scaled, x_full, rtol=1e-5, atol=1e-6)  # the forward pass is unchanged
  np.testing.assert_allclose(scaled, 0.1 * full, rtol=1e-4, atol=1e-6)


def _base_params(d=768, f=3072, n=12, c=512, k=128, g=16):
  extractor = 10 * c + 2 * c + 4 * (3 * c * c) + 2 * (2 * c * c)
  projection = 2 * c + c * d + d
  positions = k * (d // g) * d + k + d
  block = 4 * (d * d + d) + (d * f + f + f * d + d) + 2 * 2 * d
  return extractor + projection + d + positions + 2 * d + n * block


def test_base_parameter_count_and_names():
  encoder = wav2vec2.Wav2Vec2Encoder(**wav2vec2.wav2vec2_size("base"))
  variables = jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1, 800)), jnp.array([800]))
  params = nn.unbox(variables["params"])
  assert sizes.count_params(params) == _base_params() == 94_371_712
  assert set(params) == {"feature_extractor", "feature_projection", "mask_embedding", "pos_conv_embed",
                         "encoder_norm"} | {f"blocks_{i}" for i in range(12)}
  assert set(params["feature_extractor"]["conv_layers_0"]) == {"conv", "layer_norm"}
  assert set(params["feature_extractor"]["conv_layers_1"]) == {"conv"}
  assert params["pos_conv_embed"]["kernel_v"].shape == (128, 48, 768)
  tiny = wav2vec2.Wav2Vec2Encoder(**wav2vec2.wav2vec2_size("tiny"))
  tiny_params = jax.eval_shape(tiny.init, jax.random.key(0), jnp.zeros((1, 800)), jnp.array([800]))["params"]
  assert sizes.count_params(tiny_params) == _base_params(144, 576, 6, 128, 128, 16) == 1_953_328
