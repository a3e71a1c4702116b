"""Bucketing by length: groups prepared examples into batches of a few fixed padded shapes.

`BucketIterDataset` reads prepared examples (dicts with `index`, `id`, `audio` int16 [samples] and
`labels` int32 [tokens]) from a grain `IterDataset`, puts each into the smallest bucket whose padded
audio and label lengths both hold it, and emits a bucket's batch as soon as it is full. When the input
ends, every partially filled bucket is emitted once, topped up with padding rows (`mask` 0), so no
example is lost and no new shape appears. The batch format is documented in `speechfuse.data.pipeline`.

Checkpoints are exact and small: the state holds the input iterator's state and the `index` of every
example waiting in a bucket; `set_state` fetches those examples again by index from the random-access
dataset they came from (its per-example randomness is seeded by index, so they come back identical).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import grain
import numpy as np


class BucketShape(NamedTuple):
  """One bucket's padded batch shape: audio [batch_size, num_samples], labels [batch_size, num_labels]."""
  batch_size: int
  num_samples: int
  num_labels: int


def pad_batch(examples: Sequence[dict[str, Any]], shape: BucketShape, pad_id: int) -> dict[str, np.ndarray]:
  """Stacks `examples` into one batch of `shape`, padding rows past len(examples) with `mask` 0.

  Args:
    examples: at most `shape.batch_size` dicts with `id` str, `audio` int16 [samples <= num_samples],
      `labels` int [tokens <= num_labels].
    shape: the padded batch shape.
    pad_id: fills `labels` past each example's length and the rows of padding examples.

  Returns:
    The batch dict of the pipeline's batch format.
  """
  batch = {
      "audio": np.zeros((shape.batch_size, shape.num_samples), np.int16),
      "audio_lengths": np.zeros((shape.batch_size,), np.int32),
      "labels": np.full((shape.batch_size, shape.num_labels), pad_id, np.int32),
      "label_lengths": np.zeros((shape.batch_size,), np.int32),
      "mask": np.zeros((shape.batch_size,), np.float32),
  }
  ids = [""] * shape.batch_size
  for row, example in enumerate(examples):
    audio, labels = example["audio"], example["labels"]
    batch["audio"][row, :audio.shape[0]] = audio
    batch["audio_lengths"][row] = audio.shape[0]
    batch["labels"][row, :len(labels)] = labels
    batch["label_lengths"][row] = len(labels)
    batch["mask"][row] = 1.0
    ids[row] = example["id"]
  batch["ids"] = np.asarray(ids, dtype=str)
  return batch


class BucketIterDataset(grain.IterDataset):
  """Batches prepared examples into the fixed `shapes`, bucketed by audio and label length.

  An example that fits no bucket is dropped and counted (`dropped_counts`), or, with
  `keep_overlong`, emitted at once in a batch of its own: `overlong_batch_size` rows, audio and labels
  padded up to multiples of the largest bucket's lengths (evaluation keeps every example; such
  batches add shapes, one per distinct rounded length).
  """

  def __init__(
      self,
      parent: grain.IterDataset,
      examples: grain.MapDataset,
      shapes: Sequence[BucketShape],
      *,
      pad_id: int,
      keep_overlong: bool = False,
      overlong_batch_size: int = 1,
  ):
    """Args:
      parent: prepared examples, each with `index` such that `examples[index]` returns it again.
      examples: the random-access dataset behind `parent`, read on `set_state` only.
      shapes: bucket shapes, in increasing num_samples and num_labels.
      pad_id: label padding id.
      keep_overlong: emit examples that fit no bucket instead of dropping them.
      overlong_batch_size: rows of a batch holding one overlong example.
    """
    super().__init__(parent)
    self._examples = examples
    self._shapes = tuple(BucketShape(*shape) for shape in shapes)
    self._pad_id = pad_id
    self._keep_overlong = keep_overlong
    self._overlong_batch_size = overlong_batch_size

  def __iter__(self) -> _BucketIterator:
    return _BucketIterator(
        self._parent.__iter__(), self._examples, self._shapes, pad_id=self._pad_id,
        keep_overlong=self._keep_overlong, overlong_batch_size=self._overlong_batch_size)

  def __str__(self) -> str:
    return f"BucketIterDataset(shapes={list(self._shapes)}, keep_overlong={self._keep_overlong})"


class _BucketIterator(grain.DatasetIterator):
  """Iterator of `BucketIterDataset`; its state is described in the module docstring."""

  def __init__(
      self,
      parent: grain.DatasetIterator,
      examples: grain.MapDataset,
      shapes: tuple[BucketShape, ...],
      *,
      pad_id: int,
      keep_overlong: bool,
      overlong_batch_size: int,
  ):
    super().__init__(parent)
    self._examples = examples
    self._shapes = shapes
    self._pad_id = pad_id
    self._keep_overlong = keep_overlong
    self._overlong_batch_size = overlong_batch_size
    self._pending: list[list[dict[str, Any]]] = [[] for _ in shapes]
    self._input_exhausted = False
    self._dropped = {"audio_too_long": 0, "labels_too_long": 0}

  def __next__(self) -> dict[str, np.ndarray]:
    while not self._input_exhausted:
      try:
        example = next(self._parent)
      except StopIteration:
        self._input_exhausted = True
        break
      num_samples, num_labels = len(example["audio"]), len(example["labels"])
      bucket = _smallest_fitting_bucket(self._shapes, num_samples, num_labels)
      if bucket is None:
        if self._keep_overlong:
          return pad_batch([example], self._overlong_shape(num_samples, num_labels), self._pad_id)
        reason = "audio_too_long" if num_samples > self._shapes[-1].num_samples else "labels_too_long"
        self._dropped[reason] += 1
        continue
      self._pending[bucket].append(example)
      if len(self._pending[bucket]) == self._shapes[bucket].batch_size:
        return self._emit(bucket)
    # The input has ended: flush the partially filled buckets, smallest first.
    for bucket, pending in enumerate(self._pending):
      if pending:
        return self._emit(bucket)
    raise StopIteration

  def _emit(self, bucket: int) -> dict[str, np.ndarray]:
    examples, self._pending[bucket] = self._pending[bucket], []
    return pad_batch(examples, self._shapes[bucket], self._pad_id)

  def _overlong_shape(self, num_samples: int, num_labels: int) -> BucketShape:
    largest = self._shapes[-1]
    return BucketShape(
        self._overlong_batch_size,
        _round_up(num_samples, largest.num_samples),
        _round_up(num_labels, largest.num_labels))

  def get_state(self) -> dict[str, Any]:
    return {
        "input": self._parent.get_state(),
        "pending_indices": [[int(example["index"]) for example in pending] for pending in self._pending],
        "input_exhausted": int(self._input_exhausted),
        "dropped": dict(self._dropped),
        "bucket_shapes": [list(shape) for shape in self._shapes],
    }

  def set_state(self, state: dict[str, Any]) -> None:
    shapes = [list(shape) for shape in self._shapes]
    if state["bucket_shapes"] != shapes:
      raise ValueError(
          f"the iterator state was saved with bucket shapes {state['bucket_shapes']}, but this pipeline "
          f"has {shapes}: the data config changed since the checkpoint")
    self._parent.set_state(state["input"])
    self._pending = [[self._examples[index] for index in indices] for indices in state["pending_indices"]]
    self._input_exhausted = bool(state["input_exhausted"])
    self._dropped = dict(state["dropped"])

  def __str__(self) -> str:
    return f"_BucketIterator(shapes={list(self._shapes)})"


def bucketing_states(state: Any) -> list[dict[str, Any]]:
  """The bucketing iterators' states inside a pipeline iterator's state: one per worker process.

  With worker processes each worker buckets its own examples, and grain nests the workers' states in
  its interleave state; without workers the list holds the one bucketing state.
  """
  found, nodes = [], [state]
  while nodes:
    node = nodes.pop()
    if isinstance(node, dict) and "pending_indices" in node:
      found.append(node)
    elif isinstance(node, dict):
      nodes.extend(node.values())
    elif isinstance(node, list):
      nodes.extend(node)
  return found


def dropped_counts(state: Any) -> dict[str, int]:
  """Examples dropped so far for fitting no bucket, by reason, summed over workers, from a pipeline state.

  Returns:
    {"audio_too_long": n, "labels_too_long": m}: longer audio than the largest bucket, or more tokens
    than any bucket long enough for the audio holds.
  """
  totals = {"audio_too_long": 0, "labels_too_long": 0}
  for bucketing_state in bucketing_states(state):
    for reason, count in bucketing_state["dropped"].items():
      totals[reason] += count
  return totals


def _smallest_fitting_bucket(shapes: Sequence[BucketShape], num_samples: int, num_labels: int) -> int | None:
  for bucket, shape in enumerate(shapes):
    if num_samples <= shape.num_samples and num_labels <= shape.num_labels:
      return bucket
  return None


def _round_up(value: int, multiple: int) -> int:
  return max(1, -(-value // multiple)) * multiple
