"""Shared by the speech task tests: recipe configs, and small corpora written as real datasets."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ml_collections
import numpy as np

from speechfuse.config import load_config
from speechfuse.data import storage

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORDS = ("one", "two", "three", "four", "five", "six")


def recipe(name: str, arg: str) -> ml_collections.ConfigDict:
  """configs/<name>.py at `arg`, as the launcher reads it."""
  return load_config(f"{ROOT / 'configs' / name}.py:{arg}")


def noise_word_records(split: str, count: int, seed: int, *, min_samples: int = 8000,
                       max_samples: int = 24000) -> Iterator[dict[str, Any]]:
  """`count` records of Gaussian noise with two-word transcripts from WORDS."""
  rng = np.random.default_rng(seed)
  for i in range(count):
    samples = int(rng.integers(min_samples, max_samples))
    yield {"id": f"{split}-{i}", "audio": (rng.normal(size=samples) * 3000).astype(np.int16), "sample_rate": 16000,
           "text": " ".join(rng.choice(WORDS, size=2)), "speaker": f"{split}-speaker", "duration": samples / 16000}


def write_corpus(root: pathlib.Path, name: str, counts: Mapping[str, int],
                 records: Callable[[str, int, int], Iterator[dict[str, Any]]]) -> pathlib.Path:
  """A dataset with `counts[split]` records per split from `records(split, count, seed=len(split))`."""
  return storage.write_dataset(root, name, {split: (lambda s=split, n=n: records(s, n, len(s)))
                                            for split, n in counts.items()})
