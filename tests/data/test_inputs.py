"""speechfuse.data.inputs: the training feature statistics come from a random sample of the split, not its head."""

from __future__ import annotations

import numpy as np

from speechfuse.audio import features, normalize
from speechfuse.data import inputs


def _source(loud_first: int, total: int) -> list[dict]:
  """`total` utterances of noise, the first `loud_first` far louder: storage order groups recording conditions."""
  rng = np.random.default_rng(0)
  return [{"id": f"u{i}", "audio": (rng.normal(size=8000) * (8000 if i < loud_first else 100)).astype(np.int16),
           "sample_rate": 16000} for i in range(total)]


def test_cmvn_statistics_sample_the_split_at_random():
  source = _source(loud_first=20, total=40)
  sampled = inputs.feature_stats(source, num_mel_bins=23, max_utterances=20)
  head = normalize.CMVNStats.empty(23)
  for record in source[:20]:  # what the first max_utterances in storage order would give
    feats, lengths = features.fbank(record["audio"][None].astype(np.float32), 16000, 23)
    head = normalize.accumulate(head, np.asarray(feats), np.asarray(lengths))
  everything = inputs.feature_stats(source, num_mel_bins=23, max_utterances=None)
  # The head is all loud; a random half is about half loud, so its mean lies near the whole split's.
  assert abs(sampled.mean() - everything.mean()).mean() < 0.5 * abs(head.mean() - everything.mean()).mean()
  assert sampled.count == head.count  # the same number of frames: 20 one-second utterances
  again = inputs.feature_stats(source, num_mel_bins=23, max_utterances=20)
  np.testing.assert_array_equal(again.sum, sampled.sum)  # seeded: every run of a recipe gets the same sample
