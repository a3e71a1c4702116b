"""Tests for speechfuse.nn.zipformer_waveform (k2SSL's waveform Zipformer): frame counts, shapes and grid at both
output rates, a padded utterance encoded as alone, the span mask, the step leaving the forward pass unchanged, and
the refusals (chunked mode, masked prediction at 25 Hz)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse import models
from speechfuse.models import encoders
from speechfuse.nn import wav2vec2, zipformer_waveform
from zipformer_testlib import random_variables

_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
LENGTHS = np.array([16000, 9000])


def _encoder(**overrides):
  return zipformer_waveform.ZipformerWaveformEncoder(**{**zipformer_waveform.zipformer_waveform_size("smoke"),
                                                        **overrides})


def _variables(encoder):
  return random_variables(encoder, _waveform(), LENGTHS)


def _apply(encoder, variables, waveform, lengths, **kwargs):
  return _jit(lambda v, w, n, kw: encoder.apply(v, w, n, **kw))(variables, waveform, lengths, kwargs)


def _waveform(seed: int = 0) -> np.ndarray:
  wave = np.random.default_rng(seed).uniform(-0.5, 0.5, (2, 16000)).astype(np.float32)
  wave[1, LENGTHS[1]:] = 0.0
  return wave


@pytest.fixture(scope="module")
def encoded():
  encoder = _encoder()
  variables = _variables(encoder)
  return encoder, variables, _apply(encoder, variables, _waveform(), LENGTHS)


def test_shapes_frames_and_grid_at_50_hz(encoded):
  encoder, variables, out = encoded
  frames = [wav2vec2.frame_lengths(int(n)) for n in LENGTHS]
  assert out.x.shape == (2, frames[0], max(encoder.dims)) and list(out.lengths) == frames
  assert [h.shape for h in out.hidden] == [(2, frames[0], d) for d in encoder.dims]
  assert out.features.shape == (2, frames[0], encoder.extractor_channels)
  assert np.all(np.asarray(out.x)[1, frames[1]:] == 0.0)
  assert variables["params"]["mask_embedding"]["embedding"].shape == (encoder.dims[0],)
  config = encoders.default_config("zipformer_waveform", "smoke")
  grid = encoders.frame_grid(config, 16000)
  assert grid.hop == 320 and [grid.frame_count(int(n)) for n in LENGTHS] == frames


def test_output_factor_2_halves_the_frames_and_matches_its_grid():
  encoder = _encoder(output_factor=2)
  variables = _variables(encoder)
  out = _apply(encoder, variables, _waveform(), LENGTHS)
  expected = [-(-wav2vec2.frame_lengths(int(n)) // 2) for n in LENGTHS]
  assert out.x.shape[1] == expected[0] and list(out.lengths) == expected
  grid = zipformer_waveform.zipformer_waveform_grid(16000, 2)
  assert grid.hop == 640 and [grid.frame_count(int(n)) for n in LENGTHS] == expected
  assert "output_downsample" in variables["params"]


def test_a_padded_utterance_encodes_as_it_would_alone(encoded):
  encoder, variables, out = encoded
  alone = _apply(encoder, variables, _waveform()[1:, :LENGTHS[1]], LENGTHS[1:])
  frames = int(out.lengths[1])
  np.testing.assert_allclose(np.asarray(out.x)[1, :frames], np.asarray(alone.x)[0], atol=2e-4, rtol=1e-4)


def test_the_mask_replaces_projected_frames_and_the_step_leaves_outputs_unchanged(encoded):
  encoder, variables, out = encoded
  frames = out.x.shape[1]
  no_mask = np.zeros((2, frames), bool)
  unmasked = _apply(encoder, variables, _waveform(), LENGTHS, mask=jnp.asarray(no_mask))
  np.testing.assert_array_equal(np.asarray(unmasked.x), np.asarray(out.x))
  mask = no_mask.copy()
  mask[:, 10:20] = True
  masked = _apply(encoder, variables, _waveform(), LENGTHS, mask=jnp.asarray(mask))
  assert not np.allclose(np.asarray(masked.x), np.asarray(out.x))
  np.testing.assert_array_equal(np.asarray(masked.normed_features), np.asarray(out.normed_features))  # unmasked
  stepped = _apply(encoder, variables, _waveform(), LENGTHS, step=jnp.asarray(100),
                   rngs={"dropout": jax.random.key(1)})
  np.testing.assert_allclose(np.asarray(stepped.x), np.asarray(out.x), atol=1e-6)


def test_chunked_mode_and_masked_prediction_at_25_hz_are_refused(encoded):
  encoder, variables, _ = encoded
  with pytest.raises(ValueError, match="no chunked"):
    jax.eval_shape(lambda: encoder.apply(variables, _waveform(), LENGTHS, chunk_size=16))
  config = models.ssl.default_config("zipformer_waveform", "smoke")
  config.encoder.output_factor = 2
  model = models.ssl.from_config(config, jnp.float32, num_classes=8, head="ce")
  with pytest.raises(ValueError, match="output_factor=1"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 16000)), jnp.asarray(LENGTHS),
                                      jax.random.key(1)))
