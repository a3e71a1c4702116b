"""Tests of waveform reading and polyphase resampling."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from speechfuse.audio import io


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
def test_read_audio_formats_to_float_mono(tmp_path, suffix):
  rng = np.random.default_rng(0)
  stereo = (0.3 * rng.standard_normal((8000, 2))).clip(-1, 1).astype(np.float32)
  path = tmp_path / f"x{suffix}"
  soundfile.write(path, stereo, 16000)
  waveform, sample_rate = io.read_audio(path)
  assert sample_rate == 16000 and waveform.dtype == np.float32 and waveform.ndim == 1
  assert abs(len(waveform) - 8000) <= (0 if suffix != ".ogg" else 1024)
  if suffix != ".ogg":  # lossless formats: mono is the channel mean, up to 16-bit quantisation
    np.testing.assert_allclose(waveform, stereo.mean(axis=1), atol=2e-4)


def test_read_audio_names_the_bad_file(tmp_path):
  bad = tmp_path / "corrupt.wav"
  bad.write_bytes(b"RIFF....WAVEfmt garbage")
  with pytest.raises(io.AudioReadError, match="corrupt.wav"):
    io.read_audio(bad)
  with pytest.raises(io.AudioReadError, match="missing.flac"):
    io.read_audio(tmp_path / "missing.flac")


def test_resample_keeps_a_tone_and_rejects_aliases():
  t = np.arange(22050) / 22050
  tone = np.sin(2 * np.pi * 440 * t)
  out = io.resample(tone, 22050, 16000)
  assert out.shape == (16000,)
  reference = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
  np.testing.assert_allclose(out[200:-200], reference[200:-200], atol=2e-3)  # edges: filter transients
  # A 10 kHz tone is above the 8 kHz Nyquist limit of the target: the anti-aliasing filter removes it.
  alias = io.resample(np.sin(2 * np.pi * 10000 * t), 22050, 16000)
  assert np.sqrt(np.mean(alias[200:-200] ** 2)) < 1e-2


def test_read_audio_resamples_on_request(tmp_path):
  path = tmp_path / "x.wav"
  soundfile.write(path, np.zeros(44100, np.float32), 44100)
  waveform, sample_rate = io.read_audio(path, target_sample_rate=16000)
  assert (sample_rate, waveform.shape) == (16000, (16000,))
