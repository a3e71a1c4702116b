"""A recipe's `data` config → the dataset on disk, its splits as sources, and the training feature statistics.

This is the one place where recipes' tasks get their corpus: the built-in synthetic corpus (built and
cached on first use) or a dataset written by `speechfuse-prepare` / `write_dataset`.
"""

from __future__ import annotations

import os
import pathlib

import ml_collections
import numpy as np

from speechfuse import config as config_lib
from speechfuse.audio import features, normalize
from speechfuse.data import pipeline, storage, synth


def default_config() -> ml_collections.ConfigDict:
  """The `data` section of a recipe config: where the corpus is, which splits, and the pipeline fields."""
  config = pipeline.default_config()
  config.corpus = "builtin"  # "builtin", or the path of a dataset written by speechfuse-prepare
  config.builtin_size = "small"  # built-in corpus size: tiny (~10 min), small (~2 h), medium, large
  config.builtin_seed = 0
  config.data_dir = os.environ.get("SPEECHFUSE_DATA", "data")  # where the built-in corpus is cached
  config.train_split = "train"
  # Labeled share of the train split (fine-tuning on a subset): a fixed random subset of this fraction of its
  # utterances, chosen with train_subset_seed (`train_source`); 1.0 takes the whole split.
  config.train_fraction = 1.0
  config.train_subset_seed = 0
  config.eval_split = "dev"  # evaluated every eval_every_steps
  config.test_splits = ("test_clean", "test_other")  # evaluated at the end of a run
  return config


def sized_config(size: str) -> ml_collections.ConfigDict:
  """`default_config()` with the corpus and batching a recipe of `size` uses by default.

  smoke / tiny train on the built-in tiny / small corpus (0.5-10 s utterances, median ~3 s: short buckets keep
  padding to one bucket step) with small CPU batches; base / large on the medium / large corpus, or real data
  of up to 35 s, with accelerator-sized batches.
  """
  config = default_config()
  config.builtin_size = config_lib.by_size(size, smoke="tiny", tiny="small", base="medium", large="large")
  config.bucket_boundaries_seconds = config_lib.by_size(
      size, tiny=(2.0, 3.0, 4.0, 6.0, 8.0, 11.0), base=(3.0, 5.0, 7.0, 10.0, 14.0, 20.0, 35.0),
      large=(3.0, 5.0, 7.0, 10.0, 14.0, 20.0, 35.0))
  config.max_batch_seconds = config_lib.by_size(size, smoke=40.0, tiny=80.0, base=600.0, large=600.0)
  return config


def dataset_path(config: ml_collections.ConfigDict) -> pathlib.Path:
  """The dataset of `config.corpus`, building the built-in corpus first if it is not cached.

  Raises:
    IncompleteDatasetError: `config.corpus` is a path that holds no complete dataset.
  """
  if config.corpus == "builtin":
    return synth.build_builtin_corpus(config.data_dir, size=config.builtin_size, seed=config.builtin_seed)
  path = pathlib.Path(config.corpus).expanduser()
  if not storage.is_complete(path):
    raise storage.IncompleteDatasetError(
        f"config.data.corpus={config.corpus!r} is not a complete dataset; write one with speechfuse-prepare")
  return path


def open_split(config: ml_collections.ConfigDict, split: str) -> storage.SplitSource:
  """Random access to `split` of the config's dataset; the error for a missing split lists those present."""
  path = dataset_path(config)
  splits = storage.dataset_info(path)["splits"]
  if split not in splits:
    raise ValueError(f"dataset {path} has no split {split!r}; it has {sorted(splits)}")
  return storage.open_split(path, split)


class Subset:
  """The records `indices` of a random-access source, with its `metadata()` cut to them (for planning).

  Pickles as the source and the indices, so grain workers reopen the source as it pickles itself.
  """

  def __init__(self, source: storage.SplitSource, indices: np.ndarray):
    self.source = source
    self.indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict:
    return self.source[int(self.indices[index])]

  def metadata(self) -> dict:
    metadata = self.source.metadata()
    return {"id": [metadata["id"][i] for i in self.indices], "num_samples": metadata["num_samples"][self.indices],
            "text": [metadata["text"][i] for i in self.indices]}


def train_source(config: ml_collections.ConfigDict) -> storage.SplitSource | Subset:
  """The training records: the train split, or its fixed random `train_fraction` (at least one utterance).

  The subset depends only on the split's size, the fraction and train_subset_seed, so every run (and every
  row of a comparison) trains on the same utterances; they keep the split's order.
  """
  source = open_split(config, config.train_split)
  if not 0.0 < config.train_fraction <= 1.0:
    raise ValueError(f"config.data.train_fraction must be in (0, 1], got {config.train_fraction}")
  if config.train_fraction == 1.0:
    return source
  count = max(1, round(config.train_fraction * len(source)))
  chosen = np.random.default_rng(config.train_subset_seed).permutation(len(source))[:count]
  return Subset(source, np.sort(chosen))


def feature_stats(source: storage.SplitSource, *, num_mel_bins: int = 80, max_utterances: int | None = 2000,
                  batch_size: int = 16, seed: int = 0) -> normalize.CMVNStats:
  """Global mean/variance statistics of log-mel features over `max_utterances` utterances of `source`.

  The utterances are a seeded random sample (all of them when the split is not larger): storage order groups
  speakers and recording conditions, so its first utterances would be a biased sample. Utterances are padded to
  a multiple of one second and batched so the jitted front end compiles for a handful of shapes only; padding
  frames do not enter the statistics.
  """
  count = len(source) if max_utterances is None else min(len(source), max_utterances)
  chosen = np.sort(np.random.default_rng(seed).permutation(len(source))[:count])
  stats = normalize.CMVNStats.empty(num_mel_bins)
  for start in range(0, count, batch_size):
    records = [source[int(i)] for i in chosen[start:start + batch_size]]
    rate = records[0]["sample_rate"]
    lengths = np.array([len(r["audio"]) for r in records], np.int32)
    padded = -(-lengths.max() // rate) * rate
    audio = np.zeros((len(records), padded), np.float32)
    for row, record in enumerate(records):
      audio[row, :len(record["audio"])] = record["audio"]
    feats, frame_lengths = features.fbank(audio, rate, num_mel_bins, lengths=lengths)
    stats = normalize.accumulate(stats, np.asarray(feats), np.asarray(frame_lengths))
  return stats
