"""Tests for speechfuse.audio.augment against closed forms and statistics."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse.audio import augment
from speechfuse.audio.io import resample

_STATIC = ("num_freq_masks", "max_freq_width", "num_time_masks", "time_mask_multiplicity_ratio",
           "max_time_width_ratio", "max_time_width", "adaptive", "mask_value")


def _coverage_probability(extent: int, max_width: int, num_masks: int) -> np.ndarray:
  """Exact P(position masked) [extent] for `num_masks` independent spans.

  A span has width w uniform on {0..max_width} and start uniform on {0..extent-w}; position t is covered
  by one span with probability mean_w #{s : s <= t < s + w} / (extent - w + 1).
  """
  positions = np.arange(extent)
  one = np.zeros(extent)
  for width in range(max_width + 1):
    lowest = np.maximum(0, positions - width + 1)
    highest = np.minimum(positions, extent - width)
    one += np.maximum(0, highest - lowest + 1) / (extent - width + 1)
  one /= max_width + 1
  return 1.0 - (1.0 - one) ** num_masks


def _masks(features, frame_lengths, seed=0, **kwargs):
  """Boolean [batch, frames, bins] of the cells that spec_augment changed (features must be non-zero)."""
  out = augment.spec_augment(jax.random.key(seed), jnp.asarray(features), jnp.asarray(frame_lengths),
                             **kwargs)
  return np.asarray(out) != np.asarray(features)


def _assert_rates_match(masked: np.ndarray, expected: np.ndarray) -> None:
  """Per-position empirical rates over axis 0 agree with `expected` within 5 binomial sigmas."""
  trials = masked.shape[0]
  sigma = np.sqrt(expected * (1 - expected) / trials) + 1e-9
  np.testing.assert_array_less(np.abs(masked.mean(axis=0) - expected), 5 * sigma + 1e-6)


def test_time_mask_rate_matches_closed_form():
  batch, frames, bins, length = 4096, 120, 4, 100
  features = np.ones((batch, frames, bins), np.float32)
  masked = _masks(features, np.full(batch, length), num_freq_masks=0)
  # Adaptive: min(10, floor(0.04 * 100)) = 4 masks of up to floor(0.05 * 100) = 5 frames.
  expected = _coverage_probability(length, max_width=5, num_masks=4)
  time_masked = masked[:, :length, 0]
  assert (masked[:, :length, :] == time_masked[:, :, None]).all(), "a time mask spans all bins"
  _assert_rates_match(time_masked, expected)
  assert not masked[:, length:].any()


def test_freq_mask_rate_matches_closed_form():
  batch, frames, bins = 4096, 8, 40
  features = np.ones((batch, frames, bins), np.float32)
  masked = _masks(features, np.full(batch, frames), num_time_masks=0, max_freq_width=27)
  freq_masked = masked[:, 0, :]
  assert (masked == freq_masked[:, None, :]).all(), "a frequency mask spans all valid frames"
  _assert_rates_match(freq_masked, _coverage_probability(bins, max_width=27, num_masks=2))


def test_combined_masked_fraction_matches_closed_form():
  batch, frames, bins, length = 2048, 300, 20, 250
  features = np.ones((batch, frames, bins), np.float32)
  masked = _masks(features, np.full(batch, length), max_freq_width=5)
  time_p = _coverage_probability(length, max_width=12, num_masks=10)  # floor(0.05 * 250), min(10, 10)
  freq_p = _coverage_probability(bins, max_width=5, num_masks=2)
  expected = 1 - (1 - time_p[:, None]) * (1 - freq_p[None, :])
  observed = masked[:, :length].mean()
  # Cells of one example are correlated; the per-example fraction's spread bounds the error of the mean.
  per_example = masked[:, :length].mean(axis=(1, 2))
  assert abs(observed - expected.mean()) < 5 * per_example.std() / np.sqrt(batch)


def test_non_adaptive_uses_fixed_count_and_absolute_cap():
  batch, frames, length = 4096, 200, 200
  features = np.ones((batch, frames, 1), np.float32)
  masked = _masks(features, np.full(batch, length), num_freq_masks=0, num_time_masks=2,
                  adaptive=False, max_time_width=3, max_time_width_ratio=1.0)
  _assert_rates_match(masked[:, :, 0], _coverage_probability(length, max_width=3, num_masks=2))


def test_masks_stay_inside_lengths_and_scale_with_them():
  lengths = np.array([0, 10, 24, 25, 60, 300, 500])
  frames, bins = 500, 16
  features = np.full((len(lengths), frames, bins), 7.0, np.float32)
  for seed in range(20):
    out = np.asarray(augment.spec_augment(jax.random.key(seed), jnp.asarray(features),
                                          jnp.asarray(lengths), num_freq_masks=0, mask_value=-1.0))
    for example, length in enumerate(lengths):
      assert (out[example, length:] == 7.0).all(), "padding frames untouched"
      masked_frames = (out[example, :length, 0] == -1.0).sum()
      # At most min(10, floor(0.04 L)) masks of at most floor(0.05 L) frames.
      assert masked_frames <= min(10, (4 * length) // 100) * ((5 * length) // 100)
  assert (np.asarray(augment.spec_augment(jax.random.key(0), jnp.asarray(features[:3]),
                                          jnp.asarray(lengths[:3]), num_freq_masks=0)) == 7.0).all(), (
      "utterances shorter than 25 frames get no time mask")


def test_examples_are_masked_independently():
  batch, frames, bins = 2048, 100, 10
  features = np.ones((batch, frames, bins), np.float32)
  masked = _masks(features, np.full(batch, frames), max_freq_width=4)
  patterns = masked.reshape(batch, -1)
  assert len({row.tobytes() for row in patterns}) > 0.99 * batch
  fractions = patterns.mean(axis=1)
  correlation = np.corrcoef(fractions[0::2], fractions[1::2])[0, 1]
  assert abs(correlation) < 5 / np.sqrt(batch // 2)


def test_no_masks_when_counts_are_zero():
  features = np.random.default_rng(0).normal(size=(3, 50, 8)).astype(np.float32)
  out = augment.spec_augment(jax.random.key(0), jnp.asarray(features), jnp.array([50, 30, 0]),
                             num_freq_masks=0, num_time_masks=0)
  np.testing.assert_array_equal(np.asarray(out), features)


def test_jit_matches_eager_and_keeps_dtype():
  features = jnp.asarray(np.random.default_rng(0).normal(size=(4, 300, 80)), jnp.bfloat16)
  lengths = jnp.array([300, 250, 100, 7])
  key = jax.random.key(3)
  jitted = jax.jit(augment.spec_augment, static_argnames=_STATIC)
  eager = augment.spec_augment(key, features, lengths)
  out = jitted(key, features, lengths)
  assert out.dtype == jnp.bfloat16 and out.shape == features.shape
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(eager, np.float32))
  step = jax.jit(functools.partial(augment.spec_augment, num_time_masks=3, adaptive=False))
  assert step(key, features, lengths).shape == features.shape


def _peak_frequency(waveform: np.ndarray, sample_rate: int) -> float:
  spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform)), n=16 * len(waveform)))
  return np.argmax(spectrum) * sample_rate / (16 * len(waveform))


@pytest.mark.parametrize("factor", [0.9, 1.0, 1.1, 1.25])
def test_speed_perturb_scales_frequency_and_length(factor):
  sample_rate, tone = 16000, 440.0
  time = np.arange(sample_rate) / sample_rate
  waveform = np.sin(2 * np.pi * tone * time).astype(np.float32)
  out = augment.speed_perturb(waveform, sample_rate, factor)
  assert out.dtype == np.float32
  assert len(out) == augment.speed_perturbed_length(len(waveform), sample_rate, factor)
  assert len(out) == int(np.ceil(len(waveform) / factor - 1e-9))
  assert abs(_peak_frequency(out, sample_rate) - tone * factor) < 0.5


def test_speed_perturbed_length_is_what_resample_gives():
  for num_samples in (1, 999, 16001):
    for sample_rate, factor in ((16000, 0.9), (8000, 1.1), (22050, 0.95)):
      expected = len(resample(np.zeros(num_samples, np.float32), round(sample_rate * factor), sample_rate))
      assert augment.speed_perturbed_length(num_samples, sample_rate, factor) == expected


def test_random_speed_perturb_draws_every_factor():
  rng = np.random.default_rng(0)
  waveform = np.zeros(1000, np.float32)
  lengths = {len(augment.random_speed_perturb(rng, waveform, 16000)) for _ in range(60)}
  assert lengths == {augment.speed_perturbed_length(1000, 16000, f) for f in (0.9, 1.0, 1.1)}


def _snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
  added = noisy.astype(np.float64) - clean.astype(np.float64)
  return 10 * np.log10(np.mean(np.square(clean, dtype=np.float64)) / np.mean(np.square(added)))


@pytest.mark.parametrize("noise_samples", [300, 4000, 50000])
@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 12.5, 30.0])
def test_add_noise_reaches_requested_snr(noise_samples, snr_db):
  rng = np.random.default_rng(1)
  waveform = (0.3 * np.sin(np.arange(16000) * 0.05)).astype(np.float32)
  noise = rng.normal(size=noise_samples).astype(np.float32)
  noisy = augment.add_noise(rng, waveform, noise, snr_db)
  assert noisy.shape == waveform.shape and noisy.dtype == np.float32
  assert abs(_snr_db(waveform, noisy) - snr_db) < 1e-3


def test_add_noise_tiles_short_noise():
  noise = np.array([1.0, -1.0, 2.0])
  waveform = np.ones(8, np.float32)
  added = augment.add_noise(np.random.default_rng(0), waveform, noise, 0.0) - waveform
  # The added noise is the noise repeated from some offset, scaled to the signal's power (SNR 0 dB).
  candidates = [np.tile(noise, 4)[offset:offset + 8] for offset in range(3)]
  assert any(np.allclose(added, c / np.sqrt(np.mean(c**2)), atol=1e-6) for c in candidates)


def test_add_noise_silence_gives_no_nan():
  rng = np.random.default_rng(0)
  silent = np.zeros(100, np.float32)
  np.testing.assert_array_equal(augment.add_noise(rng, silent, rng.normal(size=50), 10.0), silent)
  waveform = rng.normal(size=100).astype(np.float32)
  np.testing.assert_array_equal(augment.add_noise(rng, waveform, np.zeros(50), 10.0), waveform)


def test_random_add_noise_snr_in_range_and_uniform():
  rng = np.random.default_rng(2)
  waveform = rng.normal(size=4000).astype(np.float32)
  noises = [rng.normal(size=n) for n in (500, 3000, 9000)]
  snrs = np.array([_snr_db(waveform, augment.random_add_noise(rng, waveform, noises, (5.0, 15.0)))
                   for _ in range(400)])
  assert snrs.min() >= 5.0 - 1e-3 and snrs.max() <= 15.0 + 1e-3
  # Uniform on [5, 15]: mean 10, standard deviation 10 / sqrt(12).
  assert abs(snrs.mean() - 10.0) < 5 * (10 / np.sqrt(12)) / np.sqrt(len(snrs))
