"""Acoustic degradation for the harder splits: synthetic room reverberation and additive noise.

Everything is synthesised from a seed, so a degraded utterance is as reproducible as a clean one.
Reverberation convolves with an impulse response whose direct path sits at lag 0 and keeps the
input's length (the tail past the end is cut), so word and phone timings stay valid.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.fft
import scipy.signal

NOISE_KINDS = ("white", "pink", "brown", "babble")
NOISE_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f^exponent
_PEAK = 0.95  # Degraded audio is scaled down to this peak when it would clip.


class Degradation(NamedTuple):
  """How one utterance is degraded."""

  noise: str  # one of NOISE_KINDS
  snr_db: float  # speech-to-noise power ratio of the mix
  rt60: float  # reverberation time in seconds: the impulse response decays by 60 dB in rt60
  drr_db: float  # direct-to-reverberant energy ratio of the impulse response
  seed: int


def draw_degradation(rng: np.random.Generator, snr_db: tuple[float, float],
                     rt60: tuple[float, float], drr_db: tuple[float, float]) -> Degradation:
  """Draws a degradation with each parameter uniform in its (low, high) range."""
  return Degradation(noise=str(rng.choice(NOISE_KINDS)), snr_db=float(rng.uniform(*snr_db)),
                     rt60=float(rng.uniform(*rt60)), drr_db=float(rng.uniform(*drr_db)),
                     seed=int(rng.integers(2**31)))


def colored_noise(rng: np.random.Generator, num_samples: int, exponent: float) -> np.ndarray:
  """Gaussian noise [num_samples] float32 with power spectrum ~ 1/f^exponent and unit RMS."""
  # Shaped at a length with small prime factors: FFTs of arbitrary lengths can be 10x slower.
  length = scipy.fft.next_fast_len(max(num_samples, 2), real=True)
  spectrum = scipy.fft.rfft(rng.standard_normal(length))
  frequencies = scipy.fft.rfftfreq(length)
  frequencies[0] = frequencies[1]  # No infinite gain at DC.
  noise = scipy.fft.irfft(spectrum / frequencies ** (exponent / 2), n=length)[:num_samples]
  return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def babble_noise(rng: np.random.Generator, num_samples: int, sample_rate: int, num_talkers: int = 6) -> np.ndarray:
  """Babble-like noise [num_samples] float32 with unit RMS.

  Each "talker" is pink noise band-limited to the speech band (150-4000 Hz) under a syllable-rate
  envelope (random levels every 100-250 ms, interpolated), so the sum fluctuates like a crowd.
  """
  band = scipy.signal.butter(4, (150, min(4000, 0.45 * sample_rate)), btype="bandpass", fs=sample_rate,
                             output="sos")
  babble = np.zeros(num_samples)
  for _ in range(num_talkers):
    voice = scipy.signal.sosfilt(band, colored_noise(rng, num_samples, 1.0))
    step = int(rng.uniform(0.1, 0.25) * sample_rate)
    levels = rng.random(num_samples // step + 2) ** 2
    babble += voice * np.interp(np.arange(num_samples), np.arange(levels.size) * step, levels)
  return (babble / (np.sqrt(np.mean(babble**2)) + 1e-12)).astype(np.float32)


def room_impulse_response(rng: np.random.Generator, sample_rate: int, rt60: float, drr_db: float) -> np.ndarray:
  """Synthetic room impulse response [rt60 * sample_rate] float32: a unit direct path at lag 0
  followed by exponentially decaying Gaussian noise (-60 dB at rt60) scaled to `drr_db`."""
  length = max(int(rt60 * sample_rate), 2)
  t = np.arange(1, length) / sample_rate
  tail = rng.standard_normal(length - 1) * np.exp(-np.log(1000.0) * t / rt60)
  tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
  return np.concatenate([[1.0], tail]).astype(np.float32)


def degrade(waveform: np.ndarray, degradation: Degradation, sample_rate: int) -> np.ndarray:
  """Reverberates `waveform [samples]` (float, [-1, 1]) and adds noise at the degradation's SNR.

  The SNR is measured against the reverberant speech. The result keeps the input's length and is
  scaled down if its peak would exceed 0.95.
  """
  rng = np.random.default_rng(degradation.seed)
  rir = room_impulse_response(rng, sample_rate, degradation.rt60, degradation.drr_db)
  speech = scipy.signal.fftconvolve(waveform, rir)[:waveform.size]
  if degradation.noise == "babble":
    noise = babble_noise(rng, waveform.size, sample_rate)
  else:
    noise = colored_noise(rng, waveform.size, NOISE_EXPONENTS[degradation.noise])
  speech_power = np.mean(speech**2)
  mixed = speech + noise * np.sqrt(speech_power / 10 ** (degradation.snr_db / 10))
  peak = np.max(np.abs(mixed))
  if peak > _PEAK:
    mixed *= _PEAK / peak
  return mixed.astype(np.float32)
