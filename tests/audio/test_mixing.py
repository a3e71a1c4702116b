"""Tests for speechfuse.audio.augment.mix_utterances (WavLM's utterance mixing), measured on its output."""

from __future__ import annotations

import functools

import jax
import numpy as np

from speechfuse.audio import augment


def _batch(seed=0, batch=6, samples=400):
  """Padded waveforms [batch, samples] (zeros past the lengths) of different loudness, and their lengths."""
  rng = np.random.default_rng(seed)
  lengths = np.array([samples, 3, 1, 0, *rng.integers(20, samples, size=batch - 4)])
  audio = rng.normal(size=(batch, samples)) * rng.uniform(0.01, 1.0, size=(batch, 1))
  audio[np.arange(samples)[None, :] >= lengths[:, None]] = 0.0
  return audio.astype(np.float32), lengths


@functools.partial(jax.jit, static_argnames=("max_ratio", "energy_db"))
def _mix(key, audio, lengths, prob, max_ratio=0.5, energy_db=(-5.0, 5.0)):
  return augment.mix_utterances(key, audio, lengths, prob=prob, max_ratio=max_ratio, energy_db=energy_db)


def _energy(x):
  return np.mean(np.square(x, dtype=np.float64)) if len(x) else 0.0


def test_prob_zero_is_identity():
  audio, lengths = _batch()
  mixed, info = _mix(jax.random.key(0), audio, lengths, 0.0)
  np.testing.assert_array_equal(mixed, audio)
  assert not np.asarray(info["mixed"]).any()
  np.testing.assert_array_equal(info["length"], 0)
  np.testing.assert_array_equal(info["gain"], 0.0)


def test_mixing_adds_a_scaled_segment_of_another_utterance_inside_the_valid_audio():
  audio, lengths = _batch()
  batch, samples = audio.shape
  ratios = []
  for seed in range(10):
    mixed, info = _mix(jax.random.key(seed), audio, lengths, 1.0)
    assert mixed.shape == audio.shape and mixed.dtype == audio.dtype
    mixed, info = np.asarray(mixed), {k: np.asarray(v) for k, v in info.items()}
    np.testing.assert_array_equal(info["mixed"], lengths > 0)
    for i in range(batch):
      j, s, r, n = info["interferer"][i], info["start"][i], info["source_start"][i], info["length"][i]
      assert j != i
      assert 0 <= n <= lengths[i] // 2 and n <= lengths[j]
      assert 0 <= s and s + n <= lengths[i] and 0 <= r and r + n <= lengths[j]
      residual = mixed[i].astype(np.float64) - audio[i]
      outside = np.ones(samples, bool)
      outside[s:s + n] = False
      np.testing.assert_array_equal(mixed[i][outside], audio[i][outside])  # padding stays zero, the rest intact
      segment = audio[j, r:r + n].astype(np.float64)
      np.testing.assert_allclose(residual[s:s + n], info["gain"][i] * segment, rtol=1e-5, atol=1e-6)
      if n > 0 and _energy(segment) > 0:
        # The gain measured on the output sets 10 log10(E_primary / E_interferer) over the whole utterances.
        gain = residual[s:s + n] @ segment / (segment @ segment)
        ratio = 10 * np.log10(_energy(audio[i, :lengths[i]]) / (gain**2 * _energy(audio[j, :lengths[j]])))
        np.testing.assert_allclose(ratio, info["energy_ratio_db"][i], atol=1e-3)
        ratios.append(ratio)
  assert len(ratios) > 20
  assert -5.0 <= min(ratios) < -2.0 and 2.0 < max(ratios) <= 5.0


def test_rates_and_lengths():
  rng = np.random.default_rng(1)
  batch, samples = 2000, 64
  lengths = rng.integers(1, samples + 1, size=batch)
  audio = rng.normal(size=(batch, samples)).astype(np.float32)
  _, info = _mix(jax.random.key(2), audio, lengths, 0.2, energy_db=(-1.0, 3.0))
  mixed, length = np.asarray(info["mixed"]), np.asarray(info["length"])
  assert abs(mixed.mean() - 0.2) < 5 * np.sqrt(0.2 * 0.8 / batch)
  np.testing.assert_array_equal(length[~mixed], 0)
  limit = np.minimum(lengths // 2, lengths[np.asarray(info["interferer"])])
  assert (length <= limit).all() and (length[mixed] == limit[mixed]).any()
  assert (length[mixed] < limit[mixed] / 2).any()  # uniform lengths: short ones too
  ratio_db = np.asarray(info["energy_ratio_db"])
  assert ratio_db.min() >= -1.0 and ratio_db.max() <= 3.0


def test_a_batch_of_one_is_never_mixed():
  audio, lengths = _batch()
  mixed, info = _mix(jax.random.key(3), audio[:1], lengths[:1], 1.0)
  np.testing.assert_array_equal(mixed, audio[:1])
  assert not np.asarray(info["mixed"]).any()
