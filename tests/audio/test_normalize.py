"""Global and per-utterance CMVN against numpy."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from speechfuse.audio import normalize


def _padded(rng: np.random.Generator, frame_lengths: list[int], dim: int = 6) -> np.ndarray:
  """[batch, max_frames, dim] features with garbage (not zeros) in the padding frames."""
  feats = 1e3 + rng.standard_normal((len(frame_lengths), max(frame_lengths), dim)).astype(np.float32)
  for row, count in zip(feats, frame_lengths):
    row[:count] = 3.0 * rng.standard_normal((count, dim)) + np.arange(dim)
  return feats


def test_accumulate_matches_numpy_over_valid_frames():
  rng = np.random.default_rng(0)
  frame_lengths = [9, 4, 0, 7]
  feats = _padded(rng, frame_lengths)
  single = 5.0 + rng.standard_normal((11, 6))
  stats = normalize.accumulate(normalize.CMVNStats.empty(6), feats, np.array(frame_lengths))
  stats = normalize.accumulate(stats, single)
  valid = np.concatenate([row[:n] for row, n in zip(feats.astype(np.float64), frame_lengths)] + [single])
  assert stats.count == len(valid) == 31
  np.testing.assert_allclose(stats.mean(), valid.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(stats.std(), valid.std(axis=0), rtol=1e-10)


def test_float64_accumulation_keeps_digits_that_float32_loses():
  # 10^6 frames around 1000 with unit spread: float32 sums of squares would lose the variance entirely.
  frames = 1000.0 + np.random.default_rng(1).standard_normal((1_000_000, 1)).astype(np.float32)
  stats = normalize.accumulate(normalize.CMVNStats.empty(1), frames)
  np.testing.assert_allclose(stats.std(), frames.astype(np.float64).std(axis=0), rtol=1e-6)


def test_std_floors_constant_dims_and_empty_stats_raise():
  stats = normalize.accumulate(normalize.CMVNStats.empty(2), np.array([[1.0, 2.0], [1.0, 4.0]]))
  np.testing.assert_allclose(stats.std(variance_floor=1e-4), [1e-2, 1.0])
  with pytest.raises(ValueError, match="empty"):
    normalize.CMVNStats.empty(3).mean()
  with pytest.raises(ValueError, match="features must be"):
    normalize.accumulate(normalize.CMVNStats.empty(3), np.zeros((4, 2)))


def test_save_load_round_trip_is_exact_and_atomic(tmp_path):
  stats = normalize.accumulate(normalize.CMVNStats.empty(4), np.random.default_rng(2).standard_normal((50, 4)) / 3)
  path = stats.save(tmp_path / "cmvn.json")
  assert os.listdir(tmp_path) == ["cmvn.json"]  # the temporary file was renamed into place
  loaded = normalize.CMVNStats.load(path)
  assert loaded.count == stats.count
  np.testing.assert_array_equal(loaded.sum, stats.sum)
  np.testing.assert_array_equal(loaded.sum_sq, stats.sum_sq)


def test_load_errors_name_the_file(tmp_path):
  missing = tmp_path / "missing.json"
  with pytest.raises(ValueError, match="missing.json"):
    normalize.CMVNStats.load(missing)
  other = tmp_path / "other.json"
  other.write_text(json.dumps({"format": "something-else"}))
  with pytest.raises(ValueError, match="other.json"):
    normalize.CMVNStats.load(other)
  broken = tmp_path / "broken.json"
  broken.write_text(json.dumps({"format": "speechfuse.cmvn.v1", "count": 3, "sum": [1.0, 2.0], "sum_sq": [1.0]}))
  with pytest.raises(ValueError, match="broken.json"):
    normalize.CMVNStats.load(broken)


def test_apply_global_cmvn_matches_numpy_and_keeps_padding_zero():
  rng = np.random.default_rng(3)
  frame_lengths = np.array([5, 2])
  feats = _padded(rng, list(frame_lengths))
  mean, std = rng.standard_normal(6), 1.0 + rng.random(6)
  out = np.asarray(normalize.apply_global_cmvn(feats, mean, std, frame_lengths))
  np.testing.assert_allclose(out[0], (feats[0] - mean) / std, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[1, :2], (feats[1, :2] - mean) / std, rtol=1e-5, atol=1e-5)
  assert not out[1, 2:].any()
  np.testing.assert_allclose(normalize.apply_global_cmvn(feats[0], mean, std), out[0], rtol=1e-6)


@pytest.mark.parametrize("normalize_variance", [True, False])
def test_per_utterance_cmvn_matches_numpy_per_row(normalize_variance):
  rng = np.random.default_rng(4)
  frame_lengths = [40, 13, 1, 0]
  feats = _padded(rng, frame_lengths)
  apply = jax.jit(lambda f, n: normalize.per_utterance_cmvn(f, n, normalize_variance=normalize_variance))
  out = np.asarray(apply(feats, np.array(frame_lengths)))
  for row, feat, count in zip(out, feats.astype(np.float64), frame_lengths):
    valid = feat[:count]
    if count:
      expected = valid - valid.mean(axis=0)
      if normalize_variance:
        expected = expected / np.sqrt(np.maximum(valid.var(axis=0), 1e-10))
      np.testing.assert_allclose(row[:count], expected, rtol=1e-4, atol=1e-4)
    assert not row[count:].any()
  if normalize_variance:
    np.testing.assert_allclose(out[0, :40].std(axis=0), 1.0, rtol=1e-4)
