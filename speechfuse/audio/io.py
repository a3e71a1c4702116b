"""Waveform I/O: reading any soundfile-supported file to float32 mono, and polyphase resampling."""

from __future__ import annotations

import math
import os

import numpy as np
import scipy.signal
import soundfile


class AudioReadError(IOError):
  """A file that cannot be read as audio; the message names the file."""


def read_audio(path: str | os.PathLike, target_sample_rate: int | None = None) -> tuple[np.ndarray, int]:
  """Reads wav / flac / ogg (anything libsndfile reads) as float32 mono in [-1, 1].

  Args:
    path: the audio file.
    target_sample_rate: resample to this rate if given and different from the file's.

  Returns:
    (waveform [samples] float32, sample_rate). Multi-channel audio is averaged to mono.

  Raises:
    AudioReadError: the file is missing, corrupt, empty or not audio; the message names the file.
  """
  if not os.path.isfile(path):
    raise AudioReadError(f"audio file {os.fspath(path)!r} not found")
  try:
    data, sample_rate = soundfile.read(os.fspath(path), dtype="float32", always_2d=True)
  except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, OSError, TypeError...
    raise AudioReadError(f"cannot read audio file {os.fspath(path)!r}: {e}") from e
  if data.shape[0] == 0:
    raise AudioReadError(f"audio file {os.fspath(path)!r} holds no samples")
  waveform = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
  if target_sample_rate is not None and target_sample_rate != sample_rate:
    waveform = resample(waveform, sample_rate, target_sample_rate)
    sample_rate = target_sample_rate
  return np.ascontiguousarray(waveform, dtype=np.float32), int(sample_rate)


def resample(waveform: np.ndarray, orig_sample_rate: int, target_sample_rate: int) -> np.ndarray:
  """Polyphase resampling (scipy's Kaiser-windowed FIR, beta 5) of `waveform [..., samples]`.

  The output has ceil(samples * target / orig) samples along the last axis and keeps the input's
  float dtype (integers become float32, values unscaled).
  """
  if orig_sample_rate <= 0 or target_sample_rate <= 0:
    raise ValueError(f"sample rates must be positive, got {orig_sample_rate} -> {target_sample_rate}")
  waveform = np.asarray(waveform)
  dtype = waveform.dtype if np.issubdtype(waveform.dtype, np.floating) else np.float32
  if orig_sample_rate == target_sample_rate:
    return waveform.astype(dtype, copy=False)
  g = math.gcd(int(orig_sample_rate), int(target_sample_rate))
  up, down = int(target_sample_rate) // g, int(orig_sample_rate) // g
  out = scipy.signal.resample_poly(waveform.astype(np.float64), up, down, axis=-1)
  return out.astype(dtype)


def write_audio(path: str | os.PathLike, waveform: np.ndarray, sample_rate: int) -> None:
  """Writes float waveform [samples] in [-1, 1] (or int16) to a file; the format follows the suffix."""
  soundfile.write(os.fspath(path), np.asarray(waveform), sample_rate)
