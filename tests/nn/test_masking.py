"""Tests for speechfuse.nn.masking: span masks against a numpy port of fairseq's compute_mask_indices."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse.nn import masking

_DRAWS = 3000


def _fairseq_mask(rng, lengths, time, mask_prob=0.8, mask_length=10, min_masks=2, require_same_masks=True):
  """fairseq compute_mask_indices (static spans, overlaps allowed, idc_select_ver 1, num_mask_ver 2), in loops.

  The whole-row check of fairseq is left out, as in masking.compute_mask.
  """
  mask = np.zeros((len(lengths), time), bool)
  chosen = []
  for size in lengths:
    num = max(min_masks, int(mask_prob * size / float(mask_length) + rng.random()))
    min_len = mask_length
    if size - min_len <= num:
      min_len = size - num - 1
    starts = rng.choice(size - min_len, num, replace=False)
    frames = np.asarray([s + offset for s in starts for offset in range(mask_length)])
    chosen.append(np.unique(frames[frames < size]))
  target = min(len(c) for c in chosen) if require_same_masks else None
  for i, frames in enumerate(chosen):
    if target is not None and len(frames) > target:
      frames = rng.choice(frames, target, replace=False)
    mask[i, frames] = True
  return mask


def _runs(row):
  """Lengths and starts of the maximal runs of True in a 1-D bool array."""
  padded = np.concatenate([[False], row, [False]]).astype(np.int8)
  edges = np.flatnonzero(np.diff(padded))
  return edges[1::2] - edges[0::2], edges[0::2]


def _jax_masks(lengths, time, **kwargs):
  keys = jax.random.split(jax.random.key(0), _DRAWS)
  draw = jax.jit(jax.vmap(functools.partial(masking.compute_mask, lengths=jnp.asarray(lengths), time=time, **kwargs)))
  return np.asarray(draw(keys))


@pytest.mark.parametrize("lengths,time,same", [([100, 77, 40], 104, True), ([12, 13, 30], 32, False)])
def test_per_frame_probabilities_match_fairseq(lengths, time, same):
  # The marginal P(frame t masked) of each row pins down the count rule, the start range (fairseq's last valid
  # frame is never masked), overlaps, the short-row start rule (12 and 13 frames) and the trimming.
  rng = np.random.default_rng(0)
  expected = np.mean([_fairseq_mask(rng, lengths, time, require_same_masks=same) for _ in range(_DRAWS)], axis=0)
  got = _jax_masks(lengths, time, require_same_masks=same).mean(axis=0)
  # 5 standard deviations of a frequency over _DRAWS draws (p(1-p) <= 1/4), for each estimate.
  np.testing.assert_allclose(got, expected, atol=5 * np.sqrt(2 * 0.25 / _DRAWS))
  np.testing.assert_allclose(got.sum(-1), expected.sum(-1), rtol=0.03)


def test_masked_count_distribution_matches_fairseq():
  lengths, time = [100, 77, 40], 104
  rng = np.random.default_rng(1)
  expected = np.array([_fairseq_mask(rng, lengths, time)[0].sum() for _ in range(_DRAWS)])
  got = _jax_masks(lengths, time)[:, 0].sum(-1)
  assert abs(got.mean() - expected.mean()) < 0.3 and abs(got.std() - expected.std()) < 0.3


def test_equal_counts_padding_and_last_frame():
  lengths = jnp.array([200, 150, 91, 0])
  masks = _jax_masks(lengths, 210)
  counts = masks[:, :3].sum(-1)
  assert (counts == counts[:, :1]).all() and (counts > 0).all()
  assert not masks[:, 3].any()  # an empty filler row neither gets masks nor sets the common count
  for b, length in enumerate([200, 150, 91]):
    assert not masks[:, b, length - 1:].any()  # past the length, and the last frame (see the docstring)


def test_untrimmed_runs_are_unions_of_spans():
  masks = _jax_masks(jnp.array([120, 64]), 128, require_same_masks=False, mask_length=7, mask_prob=0.65)
  for draw in masks[:200]:
    for row, length in zip(draw, (120, 64)):
      run_lengths, run_starts = _runs(row)
      assert (run_lengths >= 7).all() and (run_starts + run_lengths <= length - 1).all()
      # At least min_masks spans, at most the drawn number: a row covers between 7 and 7 * num frames.
      num_max = max(2, int(0.65 * length / 7) + 1)
      assert 7 <= row.sum() <= 7 * num_max


def test_mask_embedding_replaces_masked_frames_only():
  x = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4)
  mask = jnp.array([[True, False, False], [False, False, True]])
  module = masking.MaskEmbedding()
  variables = nn.unbox(module.init(jax.random.key(0), x))
  embedding = np.asarray(variables["params"]["embedding"])
  assert embedding.shape == (4,) and (embedding >= 0).all() and (embedding < 1).all()
  out = np.asarray(module.apply(variables, x, mask))
  np.testing.assert_array_equal(out[0, 0], embedding)
  np.testing.assert_array_equal(out[1, 2], embedding)
  np.testing.assert_array_equal(out[~np.asarray(mask)], np.asarray(x)[~np.asarray(mask)])
  np.testing.assert_array_equal(module.apply(variables, x), x)
