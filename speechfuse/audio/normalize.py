"""Mean/variance normalisation of features: global statistics from a training set, or per utterance.

Global statistics are accumulated on the host in float64 (sums over millions of frames lose digits in
float32), saved as JSON with the run and applied on the device. Padding frames (beyond frame_lengths)
never enter any statistic and stay zero.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_FORMAT = "speechfuse.cmvn.v1"


@dataclasses.dataclass(frozen=True)
class CMVNStats:
  """Sufficient statistics of features: per-dim sum and sum of squares [dim] float64, and the frame count."""

  sum: np.ndarray
  sum_sq: np.ndarray
  count: int

  @classmethod
  def empty(cls, dim: int) -> CMVNStats:
    return cls(np.zeros(dim, np.float64), np.zeros(dim, np.float64), 0)

  @property
  def dim(self) -> int:
    return self.sum.shape[0]

  def mean(self) -> np.ndarray:
    """[dim] float64."""
    if self.count == 0:
      raise ValueError("CMVN statistics are empty: accumulate some frames first")
    return self.sum / self.count

  def std(self, variance_floor: float = 1e-10) -> np.ndarray:
    """[dim] float64 standard deviation; the variance is floored so constant dims do not divide by zero."""
    mean = self.mean()
    variance = self.sum_sq / self.count - mean * mean
    return np.sqrt(np.maximum(variance, variance_floor))

  def save(self, path: str | os.PathLike) -> str:
    """Writes the statistics as JSON (atomically: a reader never sees half a file); returns the path."""
    path = os.fspath(path)
    record = {"format": _FORMAT, "count": self.count, "sum": self.sum.tolist(), "sum_sq": self.sum_sq.tolist()}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(record, f)  # floats are written with repr, so float64 values survive exactly
      f.write("\n")
    os.replace(tmp, path)
    return path

  @classmethod
  def load(cls, path: str | os.PathLike) -> CMVNStats:
    """Reads statistics written by `save`.

    Raises:
      ValueError: the file is missing, not JSON, or not CMVN statistics; the message names the file.
    """
    path = os.fspath(path)
    try:
      with open(path) as f:
        record = json.load(f)
      if record.get("format") != _FORMAT:
        raise ValueError(f"format is {record.get('format')!r}, expected {_FORMAT!r}")
      stats = cls(np.asarray(record["sum"], np.float64), np.asarray(record["sum_sq"], np.float64), int(record["count"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
      raise ValueError(f"cannot read CMVN statistics from {path!r}: {e}") from e
    if stats.sum.ndim != 1 or stats.sum.shape != stats.sum_sq.shape or stats.count < 0:
      raise ValueError(f"malformed CMVN statistics in {path!r}: sum {stats.sum.shape}, sum_sq {stats.sum_sq.shape}")
    return stats


def accumulate(stats: CMVNStats, features: Any, frame_lengths: Any = None) -> CMVNStats:
  """Returns `stats` plus the valid frames of `features`.

  Args:
    stats: statistics so far (`CMVNStats.empty(dim)` to start).
    features: [frames, dim], or a padded batch [batch, frames, dim].
    frame_lengths: [batch] valid frames of a batch; all frames if None.
  """
  features = np.asarray(features, np.float64)
  if features.ndim == 2:
    if frame_lengths is not None:
      raise ValueError("frame_lengths is only for a batch [batch, frames, dim]")
    features = features[None]
  if features.ndim != 3 or features.shape[-1] != stats.dim:
    raise ValueError(f"features must be [frames, {stats.dim}] or [batch, frames, {stats.dim}], got {features.shape}")
  if frame_lengths is None:
    valid = np.ones(features.shape[:2], bool)
  else:
    valid = np.arange(features.shape[1])[None, :] < np.asarray(frame_lengths)[:, None]
  frames = features[valid]
  return CMVNStats(
      stats.sum + frames.sum(axis=0), stats.sum_sq + np.square(frames).sum(axis=0), stats.count + len(frames)
  )


def _valid_mask(features: jax.Array, frame_lengths: Any) -> jax.Array:
  """[batch, frames, 1] bool: frame < frame_length."""
  return (jnp.arange(features.shape[1])[None, :] < jnp.asarray(frame_lengths)[:, None])[..., None]


def apply_global_cmvn(features: Any, mean: Any, std: Any, frame_lengths: Any = None) -> jax.Array:
  """(features - mean) / std in float32, for features [..., dim] and mean, std [dim].

  With frame_lengths [batch] (features [batch, frames, dim]) the padding frames stay zero.
  """
  features = jnp.asarray(features, jnp.float32)
  normalized = (features - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  if frame_lengths is None:
    return normalized
  return jnp.where(_valid_mask(features, frame_lengths), normalized, 0.0)


def per_utterance_cmvn(
    features: Any, frame_lengths: Any, *, normalize_variance: bool = True, variance_floor: float = 1e-10
) -> jax.Array:
  """Normalises each utterance by the mean (and std) of its own valid frames.

  Args:
    features: [batch, frames, dim].
    frame_lengths: [batch]; padding frames do not enter the statistics and come out zero.
    normalize_variance: also divide by the std (Kaldi's apply-cmvn --norm-vars); mean only otherwise.
    variance_floor: floor on the variance, so a constant dim or a one-frame utterance gives zeros.

  Returns:
    [batch, frames, dim] float32.
  """
  features = jnp.asarray(features, jnp.float32)
  valid = _valid_mask(features, frame_lengths)
  count = jnp.maximum(jnp.asarray(frame_lengths, jnp.float32), 1.0)[:, None, None]
  mean = jnp.sum(jnp.where(valid, features, 0.0), axis=1, keepdims=True) / count
  centered = jnp.where(valid, features - mean, 0.0)
  if not normalize_variance:
    return centered
  # Two passes (mean, then squared deviations) keep float32 accurate where E[x^2] - E[x]^2 would cancel.
  variance = jnp.sum(jnp.square(centered), axis=1, keepdims=True) / count
  return centered * jax.lax.rsqrt(jnp.maximum(variance, variance_floor))
