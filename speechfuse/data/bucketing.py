"""Batch planning by length: a stream of examples → batches of a few fixed padded shapes, from lengths alone.

Nothing here reads audio: plans are computed from the examples' audio and label lengths (a dataset's
index, `storage.SplitSource.metadata`), so every host of a multi-host run computes the same global plan
cheaply and then loads only its own rows of each batch (`speechfuse.data.pipeline`).

`plan_batches` buckets one pass over a stream (as Lhotse's DynamicBucketingSampler, with shapes fixed in
advance so that jit compiles once per bucket): an example goes to the smallest bucket whose padded audio
and label lengths both hold it, and a bucket's batch is emitted as soon as it is full. When the stream
ends, every partially filled bucket is emitted once, smallest first, to be topped up with padding rows
(`mask` 0), so no example is lost and no new shape appears. An example that fits no bucket is dropped
and counted, or, with `keep_overlong`, emitted at once in a batch of its own.

`StreamPlan` strings epochs of such passes together. Epoch e shuffles the examples with a generator
seeded by (seed, e) and draws every example's speed perturbation factor from the same generator, so
the perturbed lengths are known before any audio is read. Each epoch is planned on its own (its
partial batches end it), so batch i of the whole stream is found by planning epochs in order, and an
iterator's position in the stream is a single batch index.
"""

from __future__ import annotations

import bisect
import sys
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from speechfuse.audio.augment import speed_perturbed_length
from speechfuse.data.schema import TEXT_FIELDS

DROP_REASONS = ("audio_too_long", "labels_too_long")


class BucketShape(NamedTuple):
  """One bucket's padded batch shape: audio [batch_size, num_samples], labels [batch_size, num_labels]."""
  batch_size: int
  num_samples: int
  num_labels: int


class PlannedBatch(NamedTuple):
  """One global batch of a plan: its padded shape and, per real row in row order, what to load.

  Rows past len(indices), up to shape.batch_size, are padding.
  """
  shape: BucketShape
  indices: np.ndarray  # int64 [rows]: the examples' indices in the source
  factors: np.ndarray  # float64 [rows]: speed perturbation factors; 1.0 leaves the audio as it is


def pad_batch(examples: Sequence[dict[str, Any]], shape: BucketShape, pad_id: int, fields: Sequence[str] = (),
              sample_rate: int = 16000) -> dict[str, np.ndarray]:
  """Stacks `examples` into one batch of `shape`, padding rows past len(examples) with `mask` 0.

  Args:
    examples: at most `shape.batch_size` dicts with `id` str, `audio` int16 [samples <= num_samples],
      `labels` int [tokens <= num_labels], and the record fields `fields`.
    shape: the padded batch shape.
    pad_id: fills `labels` past each example's length and the rows of padding examples.
    fields: record fields to carry (speechfuse.data.pipeline's `fields`): text fields as host strings [batch];
      timings [batch, num_labels, 2] float32 with <field>_lengths; video [batch, frames, height, width(, 3)]
      uint8 with video_lengths, frames = the bucket's duration at the records' frame rate.
    sample_rate: Hz of the audio, for the video capacity.

  Returns:
    The batch dict of the pipeline's batch format.

  Raises:
    ValueError: an example's timings or video do not fit the bucket (named by its id).
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
  for field in fields:
    batch.update(_pad_field(field, examples, shape, sample_rate))
  return batch


def _pad_field(field: str, examples: Sequence[dict[str, Any]], shape: BucketShape,
               sample_rate: int) -> dict[str, np.ndarray]:
  """One record field of a batch (pad_batch's `fields`), padded to the bucket's capacity."""
  rows = shape.batch_size
  if field in TEXT_FIELDS:
    return {field: np.asarray([str(e[field]) for e in examples] + [""] * (rows - len(examples)), dtype=str)}
  values = [np.asarray(e[field]) for e in examples]
  if field == "video":
    fps = {float(e["video_fps"]) for e in examples}
    if len(fps) > 1:
      raise ValueError(f"one batch holds videos at {sorted(fps)} frames per second; a dataset has one rate")
    capacity = int(np.ceil(shape.num_samples / sample_rate * fps.pop())) if examples else 0
    frame_shape = values[0].shape[1:] if values else (0, 0)
    out = np.zeros((rows, capacity, *frame_shape), np.uint8)
  else:  # timings: one [start, end] row per phone or word, at most the bucket's label capacity
    capacity = shape.num_labels
    out = np.zeros((rows, capacity, 2), np.float32)
  lengths = np.zeros((rows,), np.int32)
  for row, (example, value) in enumerate(zip(examples, values)):
    if len(value) > capacity or value.shape[1:] != out.shape[2:]:
      raise ValueError(f"example {example['id']!r}: its {field} {value.shape} does not fit the bucket's "
                       f"{out.shape[1:]}")
    out[row, :len(value)] = value
    lengths[row] = len(value)
  return {field: out, f"{field}_lengths": lengths}


def plan_batches(
    num_samples: np.ndarray,
    num_labels: np.ndarray,
    shapes: Sequence[BucketShape],
    *,
    keep_overlong: bool = False,
    overlong_batch_size: int = 1,
) -> tuple[list[tuple[BucketShape, np.ndarray]], dict[str, int]]:
  """Buckets one pass over a stream, as the module docstring describes, from its lengths.

  Args:
    num_samples: int [M], each example's audio length in stream order.
    num_labels: int [M], each example's label length.
    shapes: bucket shapes, in increasing num_samples and num_labels.
    keep_overlong: emit an example that fits no bucket in a batch of its own, `overlong_batch_size`
      rows with audio and labels padded up to multiples of the largest bucket's lengths (one extra
      shape per distinct rounded length), instead of dropping it.
    overlong_batch_size: rows of such a batch.

  Returns:
    The batches in emission order as (shape, int64 [rows] stream positions of its examples in row order),
    and the dropped examples per reason: {"audio_too_long": n, "labels_too_long": m}.
  """
  num_samples, num_labels = np.asarray(num_samples), np.asarray(num_labels)
  stream_length = len(num_samples)
  bucket = np.full(stream_length, -1)
  for k in reversed(range(len(shapes))):  # largest first, so that the smallest fitting bucket wins
    bucket[(num_samples <= shapes[k].num_samples) & (num_labels <= shapes[k].num_labels)] = k
  # Sorting by the moment each batch is emitted replays the one-example-at-a-time bucketing: a full
  # batch leaves when its last example arrives, partial ones after the stream, smallest bucket first.
  keyed = []
  for k, shape in enumerate(shapes):
    positions = np.flatnonzero(bucket == k)
    for start in range(0, len(positions), shape.batch_size):
      rows = positions[start:start + shape.batch_size]
      key = (int(rows[-1]), 0) if len(rows) == shape.batch_size else (stream_length, k)
      keyed.append((key, shape, rows))
  overlong = np.flatnonzero(bucket < 0)
  largest = shapes[-1]
  dropped = dict.fromkeys(DROP_REASONS, 0)
  if keep_overlong:
    for position in overlong:
      shape = BucketShape(overlong_batch_size, _round_up(int(num_samples[position]), largest.num_samples),
                          _round_up(int(num_labels[position]), largest.num_labels))
      keyed.append(((int(position), 0), shape, np.array([position])))
  else:
    dropped["audio_too_long"] = int((num_samples[overlong] > largest.num_samples).sum())
    dropped["labels_too_long"] = len(overlong) - dropped["audio_too_long"]
  keyed.sort(key=lambda item: item[0])
  return [(shape, rows) for _, shape, rows in keyed], dropped


class StreamPlan:
  """The global batches of `num_epochs` epochs over N examples, by batch index: `plan[i]` → PlannedBatch.

  Random access plans epochs in order as far as needed and keeps the batch counts and drops of every
  planned epoch and the batches of the last one, so that reading in increasing order plans each epoch
  once. Thread-safe (the pipeline's read threads share one plan); pickles for worker processes.
  """

  def __init__(
      self,
      num_samples: np.ndarray,
      num_labels: np.ndarray,
      shapes: Sequence[BucketShape],
      *,
      seed: int,
      shuffle: bool,
      num_epochs: int | None,
      speed_factors: Sequence[float] = (),
      sample_rate: int,
      keep_overlong: bool = False,
      overlong_batch_size: int = 1,
  ):
    """Args:
      num_samples: int [N], each example's audio length before speed perturbation.
      num_labels: int [N], each example's label length.
      shapes: the global bucket shapes, in increasing num_samples and num_labels.
      seed: non-negative; drives the shuffle and the speed perturbation factors.
      shuffle: a new order every epoch; otherwise every epoch is in source order.
      num_epochs: None for an endless stream.
      speed_factors: each example's factor per epoch is drawn uniformly from these; () for none.
      sample_rate: of the audio, for the perturbed lengths.
      keep_overlong, overlong_batch_size: as `plan_batches`.
    """
    if seed < 0:
      raise ValueError(f"the pipeline seed must be non-negative, got {seed}")
    self.num_samples = np.asarray(num_samples, np.int64)
    self.num_labels = np.asarray(num_labels, np.int64)
    self.shapes = tuple(BucketShape(*shape) for shape in shapes)
    self._seed, self._shuffle, self._num_epochs = seed, shuffle, num_epochs
    self._speed_factors = np.asarray(speed_factors, np.float64)
    self._sample_rate = sample_rate
    self._keep_overlong, self._overlong_batch_size = keep_overlong, overlong_batch_size
    self._ends: list[int] = []  # batches in epochs 0..e, for every planned epoch e
    self._dropped: list[dict[str, int]] = []  # per planned epoch
    self._last: tuple[int, list[PlannedBatch]] = (-1, [])  # the last planned epoch's batches
    self._lock = threading.Lock()

  def __len__(self) -> int:
    """Batches in the stream; sys.maxsize for an endless one."""
    if self._num_epochs is None:
      return sys.maxsize
    with self._lock:
      while len(self._ends) < self._num_epochs:
        self._plan_next_epoch()
    return self._ends[-1]

  def __getitem__(self, index: int) -> PlannedBatch:
    with self._lock:
      epoch, offset = self._locate(index)
      if self._last[0] != epoch:
        self._last = (epoch, self._plan_epoch(epoch)[0])
      return self._last[1][offset]

  def epoch_audio(self, epoch: int = 0) -> tuple[int, float]:
    """(batches, seconds of audio in their real rows, speed perturbation included) of epoch `epoch`."""
    batches, _ = self._plan_epoch(epoch)
    samples = sum(float(np.sum(self.num_samples[b.indices] / b.factors)) for b in batches)
    return len(batches), samples / self._sample_rate

  def dropped_before(self, position: int) -> dict[str, int]:
    """Examples dropped for fitting no bucket in the epochs that batches [0, position) reach into."""
    totals = dict.fromkeys(DROP_REASONS, 0)
    if position == 0:
      return totals
    with self._lock:
      epoch, _ = self._locate(position - 1)
      for dropped in self._dropped[:epoch + 1]:
        for reason, count in dropped.items():
          totals[reason] += count
    return totals

  def _locate(self, index: int) -> tuple[int, int]:
    """(epoch, batch within the epoch) of stream batch `index`, planning epochs up to it."""
    while not self._ends or index >= self._ends[-1]:
      if self._num_epochs is not None and len(self._ends) == self._num_epochs:
        raise IndexError(f"batch {index} is past the end of the stream ({self._ends[-1]} batches)")
      self._plan_next_epoch()
    epoch = bisect.bisect_right(self._ends, index)
    return epoch, index - (self._ends[epoch - 1] if epoch else 0)

  def _plan_next_epoch(self) -> None:
    epoch = len(self._ends)
    batches, dropped = self._plan_epoch(epoch)
    if not batches:
      raise ValueError(f"epoch {epoch} of the stream has no batch: none of its {len(self.num_samples)} "
                       f"examples fits a bucket ({dropped}); check the bucket and token limits")
    self._ends.append((self._ends[-1] if self._ends else 0) + len(batches))
    self._dropped.append(dropped)
    self._last = (epoch, batches)

  def _plan_epoch(self, epoch: int) -> tuple[list[PlannedBatch], dict[str, int]]:
    count = len(self.num_samples)
    rng = np.random.default_rng((self._seed, epoch))
    order = rng.permutation(count) if self._shuffle else np.arange(count)
    factors = np.ones(count)
    num_samples = self.num_samples[order]
    if len(self._speed_factors):
      factors = self._speed_factors[rng.integers(len(self._speed_factors), size=count)]
      for factor in np.unique(factors):
        chosen = factors == factor
        num_samples[chosen] = speed_perturbed_length(num_samples[chosen], self._sample_rate, float(factor))
    batches, dropped = plan_batches(num_samples, self.num_labels[order], self.shapes,
                                    keep_overlong=self._keep_overlong,
                                    overlong_batch_size=self._overlong_batch_size)
    return [PlannedBatch(shape, order[rows], factors[rows]) for shape, rows in batches], dropped

  def __getstate__(self) -> dict[str, Any]:
    return {key: value for key, value in self.__dict__.items() if key != "_lock"}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()


def _round_up(value: int, multiple: int) -> int:
  return max(1, -(-value // multiple)) * multiple
