"""Throughput of the training input pipeline: hours of audio per second with 0, 1 and 2 worker processes.

Runs `make_train_iterator` (speed perturbation on by default, as in training) for --hours of audio per
worker count and prints a Markdown table: steady-state hours of audio per second (after the
first batch) and seconds to the first batch (worker start-up included); then the number of distinct
padded shapes in one epoch next to the number of buckets. The source is a built dataset (`--corpus_dir`,
a path returned by `speechfuse.data.write_dataset`) or, by default, synthetic 2-16 s utterances in a
memory-mapped file.

  python benchmarks/data.py
  python benchmarks/data.py --corpus_dir ~/data/speechfuse_small --split train
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags
import numpy as np

from speechfuse.data import pipeline
from speechfuse.data.storage import open_split
from speechfuse.text.chars import CharTokenizer

_CORPUS_DIR = flags.DEFINE_string("corpus_dir", None, "A built dataset; synthetic utterances if unset.")
_SPLIT = flags.DEFINE_string("split", "train", "Split of --corpus_dir.")
_NUM_UTTERANCES = flags.DEFINE_integer("num_utterances", 240, "Synthetic utterances (2-16 s, 16 kHz).")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker counts to measure.")
_SPEED_PERTURB = flags.DEFINE_bool("speed_perturb", True, "Speed perturbation in the measured pipeline.")
_HOURS = flags.DEFINE_float("hours", 1.0, "Hours of audio to time per worker count (the stream repeats).")

_WORDS = ("speech", "model", "the", "of", "a", "quiet", "river", "fused", "network", "morning")


class MemmapSource:
  """Synthetic records whose audio lives in one int16 .npy file; pickles as its path, for workers.

  Has an index (`metadata`) as a stored split does, so that planning reads no audio.
  """

  def __init__(self, directory: str, num_utterances: int, seed: int = 0, sample_rate: int = 16000):
    rng = np.random.default_rng(seed)
    lengths = (rng.uniform(2.0, 16.0, num_utterances) * sample_rate).astype(np.int64)
    self.offsets = np.concatenate([[0], np.cumsum(lengths)])
    self.texts = [" ".join(rng.choice(_WORDS, int(n / sample_rate * 2.5))) for n in lengths]
    self.sample_rate = sample_rate
    self.path = os.path.join(directory, "audio.npy")
    np.save(self.path, rng.normal(0.0, 2000.0, self.offsets[-1]).astype(np.int16))
    self._audio = None

  def __len__(self) -> int:
    return len(self.texts)

  def __getitem__(self, index: int) -> dict[str, Any]:
    if self._audio is None:
      self._audio = np.load(self.path, mmap_mode="r")
    audio = np.array(self._audio[self.offsets[index]:self.offsets[index + 1]])
    return {"id": f"synthetic-{index:05d}", "audio": audio, "sample_rate": self.sample_rate,
            "text": self.texts[index], "speaker": "synthetic", "duration": len(audio) / self.sample_rate}

  def metadata(self) -> dict[str, Any]:
    """What the pipeline plans batches from, as `storage.SplitSource.metadata`, without reading audio."""
    return {"id": [f"synthetic-{index:05d}" for index in range(len(self))],
            "num_samples": np.diff(self.offsets), "text": self.texts}

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_audio": None}


def measure(source, tokenizer, config, hours: float) -> dict[str, float]:
  """Throughput over `hours` of audio of the repeating training stream, after the first batch.

  The stream repeats, as in training: at the end of a finite stream grain's worker processes take up to
  a second to report exhaustion, which would dominate a short synthetic epoch.
  """
  start = time.perf_counter()
  iterator = pipeline.make_train_iterator(source, tokenizer, config, seed=0, shard_index=0, shard_count=1)
  next(iterator)
  first_seconds = time.perf_counter() - start
  samples, start = 0, time.perf_counter()
  while samples < hours * 3600 * config.sample_rate:
    samples += int(next(iterator)["audio_lengths"].sum())
  seconds = time.perf_counter() - start
  iterator.close()
  return {"hours_per_second": samples / config.sample_rate / 3600 / seconds, "first_batch_seconds": first_seconds}


def epoch_shapes(source, tokenizer, config) -> set[tuple[int, ...]]:
  """The distinct padded (batch, samples, labels) shapes of one epoch."""
  config = config.copy_and_resolve_references()
  config.num_epochs, config.worker_count = 1, 0
  iterator = pipeline.make_train_iterator(source, tokenizer, config, seed=0, shard_index=0, shard_count=1)
  return {batch["audio"].shape + batch["labels"].shape[1:] for batch in iterator}


def main(argv: Sequence[str]) -> None:
  del argv
  config = pipeline.default_config()
  config.speed_perturb = _SPEED_PERTURB.value
  with tempfile.TemporaryDirectory() as directory:
    if _CORPUS_DIR.value:
      source, name = open_split(_CORPUS_DIR.value, _SPLIT.value), f"{_CORPUS_DIR.value} {_SPLIT.value}"
    else:
      source = MemmapSource(directory, _NUM_UTTERANCES.value)
      name = f"synthetic, {_NUM_UTTERANCES.value} utterances of 2-16 s"
    tokenizer = CharTokenizer()
    print(f"source: {name}; speed perturbation: {config.speed_perturb}; {os.cpu_count()} CPUs\n")
    print("| workers | hours of audio / s | first batch (s) |")
    print("|--:|--:|--:|")
    for workers in _WORKERS.value:
      config.worker_count = int(workers)
      result = measure(source, tokenizer, config, _HOURS.value)
      print(f"| {workers} | {result['hours_per_second']:.2f} | {result['first_batch_seconds']:.1f} |", flush=True)
    shapes = epoch_shapes(source, tokenizer, config)
    num_buckets = len(pipeline.bucket_shapes(config))
    print(f"\ndistinct padded shapes in one epoch: {len(shapes)} (buckets: {num_buckets})")


if __name__ == "__main__":
  app.run(main)
