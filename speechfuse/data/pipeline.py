"""Grain input pipelines: utterances → padded batches of a few fixed shapes, for training and evaluation.

The trainer calls `make_train_iterator` / `make_eval_iterator` with a random-access source (anything with
`len` and `__getitem__` returning the record dict of `speechfuse.data.storage`: `id` str, `audio` int16
[samples], `sample_rate` int, `text` str, ...; a list of such dicts works), a tokenizer (anything with
`encode(text) -> list[int]` and `pad_id`, as `speechfuse.text` tokenizers) and the `data` ConfigDict of
`default_config()`. Tokenizers count unknown characters per instance, so per worker; the trainer can
count unk ids in `labels` instead.

Training: seeded global shuffle (reshuffled every epoch) → repeat → this host's shard (every
shard_count-th example of the shuffled stream, so the shards of one epoch are disjoint and cover it) →
per example on the host: check, optional speed perturbation (its factor drawn from a generator seeded by
the pipeline seed and the example's position, so a run replays and resumes exactly), tokenisation →
bucketing by length into padded batches → prefetch. With `worker_count` > 0, reading, preparation and
bucketing run in worker processes, each on every worker_count-th example, and whole batches come back
(each worker keeps `worker_buffer_size` ahead); without workers a thread keeps `prefetch_batches` ahead.

Bucketing (as Lhotse's DynamicBucketingSampler, with shapes fixed in advance so that jit compiles once
per bucket): `bucket_boundaries_seconds` are the buckets' upper edges. Bucket k pads audio to its edge
in samples, labels to ceil(edge * max_tokens_per_second) tokens, and holds
floor(max_batch_seconds / edge) examples, rounded down to a multiple of `batch_multiple` (the data-parallel
device count): every batch's padded duration is at most max_batch_seconds. An example goes to the smallest
bucket that holds both its (speed-perturbed) audio and its labels. In training an example that fits no
bucket — longer than the largest edge, or with more tokens than max_tokens_per_second allows for the
largest edge — is dropped and counted: `dropped_counts(iterator.get_state())`. When a finite stream ends,
each partially filled bucket is emitted once, padded with mask-0 rows.

Evaluation: no shuffle, no perturbation, no drop. Each host takes every shard_count-th example, so the
union over hosts holds every example exactly once; a bucket's last batch is padded with mask-0 rows, and an
example that fits no bucket gets a batch of its own (`batch_multiple` rows, lengths rounded up to
multiples of the largest bucket's: an extra shape, so size the buckets to cover the evaluation data).

Batch format — the contract with the trainer and the models — a dict of numpy arrays:
  audio:          int16 [batch, samples], zero past each example's length.
  audio_lengths:  int32 [batch], valid samples per row.
  labels:         int32 [batch, max_labels], tokenizer.pad_id past each example's length.
  label_lengths:  int32 [batch].
  mask:           float32 [batch], 1 for a real example, 0 for a padding row (all lengths 0, id "").
  ids:            str [batch], the examples' ids; host-only (`HOST_ONLY_KEYS`): the trainer drops it
                  before sending the batch to the devices.
(batch, samples, max_labels) is always one of `bucket_shapes(config)` (evaluation's overlong batches
aside).

Checkpointing: the iterators' `get_state()` is a small JSON-serialisable dict and `set_state()` makes a
fresh iterator built with the same arguments (worker_count included) continue with the next unseen
batch, nothing repeated, nothing skipped; the state records the bucket shapes and refuses a pipeline
whose shapes differ. Batch order is deterministic for a given seed, config and shard, but changes with
`worker_count` (grain deals examples to workers round-robin).

Multi-host caveat: each host buckets its own shard, so at a given step hosts may produce batches of
different shapes or, in evaluation, different numbers of batches; a trainer that assembles one global
array per step from per-host batches needs the hosts to agree on the shape.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from absl import flags
import grain
import jax
import ml_collections
import numpy as np

from speechfuse.audio.augment import random_speed_perturb
from speechfuse.data.bucketing import BucketIterDataset, BucketShape, bucketing_states, dropped_counts
from speechfuse.text.base import Tokenizer

__all__ = [
    "HOST_ONLY_KEYS",
    "BucketShape",
    "bucket_shapes",
    "bucketing_states",
    "default_config",
    "dropped_counts",
    "make_eval_iterator",
    "make_train_iterator",
    "validate_config",
]

# Batch keys that stay on the host: the trainer removes them before device_put.
HOST_ONLY_KEYS = ("ids",)


def default_config() -> ml_collections.ConfigDict:
  """The `data` pipeline config; recipes override fields."""
  config = ml_collections.ConfigDict()
  config.sample_rate = 16000  # every example must have this rate; checked per example
  # Buckets' upper edges in seconds, increasing; audio longer than the last is dropped in training.
  config.bucket_boundaries_seconds = (3.0, 5.0, 7.0, 10.0, 14.0, 20.0)
  # Bound on a batch's padded duration: bucket k holds floor(max_batch_seconds / edge_k) examples.
  config.max_batch_seconds = 240.0
  # Label padding: bucket k holds ceil(edge_k * max_tokens_per_second) tokens. English read speech runs
  # about 15 characters a second; 25 leaves room for fast speakers and for speed perturbation at 1.1.
  config.max_tokens_per_second = 25.0
  config.batch_multiple = 1  # batch sizes are rounded down to a multiple of this (data-parallel devices)
  config.shuffle = True  # training only: global shuffle, a new order every epoch
  config.num_epochs = ml_collections.config_dict.placeholder(int)  # None: repeat forever (training only)
  config.speed_perturb = False  # training only: random speed perturbation (Ko et al. 2015)
  config.speed_perturb_factors = (0.9, 1.0, 1.1)
  config.worker_count = 0  # worker processes preparing and batching examples; 0: all in this process
  config.worker_buffer_size = 2  # batches each worker keeps ahead
  config.read_threads = 2  # threads per process reading and preparing examples; 0 reads inline
  config.read_buffer_size = 32  # examples each process reads ahead with its threads
  config.prefetch_batches = 2  # without workers: batches a background thread keeps ahead; 0 disables
  return config


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first key of `config` (a `default_config()`) that is invalid."""
  if config.sample_rate <= 0:
    raise ValueError(f"config.sample_rate must be positive, got {config.sample_rate}")
  edges = tuple(config.bucket_boundaries_seconds)
  if not edges or any(edge <= 0 for edge in edges) or any(a >= b for a, b in zip(edges, edges[1:])):
    raise ValueError(f"config.bucket_boundaries_seconds must be positive and increasing, got {edges}")
  if config.max_tokens_per_second <= 0:
    raise ValueError(f"config.max_tokens_per_second must be positive, got {config.max_tokens_per_second}")
  if config.batch_multiple < 1:
    raise ValueError(f"config.batch_multiple must be at least 1, got {config.batch_multiple}")
  # In samples, as bucket_shapes computes batch sizes, so that every bucket's batch is at least 1 (and a
  # multiple of batch_multiple) exactly when this passes.
  largest_samples = round(edges[-1] * config.sample_rate)
  if int(config.max_batch_seconds * config.sample_rate) < largest_samples * config.batch_multiple:
    raise ValueError(
        f"config.max_batch_seconds={config.max_batch_seconds} cannot hold batch_multiple="
        f"{config.batch_multiple} examples of the largest bucket ({edges[-1]} s)")
  if config.num_epochs is not None and config.num_epochs < 1:
    raise ValueError(f"config.num_epochs must be None (forever) or at least 1, got {config.num_epochs}")
  if config.speed_perturb and (not config.speed_perturb_factors
                               or any(f <= 0 for f in config.speed_perturb_factors)):
    raise ValueError(f"config.speed_perturb_factors must be positive, got {config.speed_perturb_factors}")
  for key in ("worker_count", "worker_buffer_size", "read_threads", "read_buffer_size", "prefetch_batches"):
    if config[key] < 0:
      raise ValueError(f"config.{key} must be non-negative, got {config[key]}")
  if config.worker_count and config.worker_buffer_size < 1:
    raise ValueError("config.worker_buffer_size must be at least 1 when config.worker_count > 0")


def bucket_shapes(config: ml_collections.ConfigDict) -> list[BucketShape]:
  """The padded batch shapes, one per bucket, smallest first: (batch_size, num_samples, num_labels)."""
  validate_config(config)
  budget_samples = int(config.max_batch_seconds * config.sample_rate)
  shapes = []
  for edge in config.bucket_boundaries_seconds:
    num_samples = round(edge * config.sample_rate)
    num_labels = int(np.ceil(edge * config.max_tokens_per_second))
    # Computed in samples so that batch_size * num_samples <= max_batch_seconds * sample_rate exactly.
    batch_size = budget_samples // num_samples // config.batch_multiple * config.batch_multiple
    shapes.append(BucketShape(batch_size, num_samples, num_labels))
  return shapes


def make_train_iterator(
    source: Sequence[dict[str, Any]],
    tokenizer: Tokenizer,
    config: ml_collections.ConfigDict,
    *,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.DatasetIterator:
  """Training batches (format in the module docstring) of this host's shard, shuffled with `seed`.

  Args:
    source: random-access records.
    tokenizer: turns `text` into label ids; its `pad_id` pads `labels`.
    config: a `default_config()`.
    seed: drives the shuffle and the speed perturbation.
    shard_index: this host's shard; defaults to jax.process_index().
    shard_count: number of shards; defaults to jax.process_count().

  Returns:
    A checkpointable iterator (`get_state` / `set_state`); infinite unless config.num_epochs is set.
  """
  validate_config(config)
  shard_index, shard_count = _shard(shard_index, shard_count, len(source))
  examples = grain.MapDataset.source(source).seed(seed)
  if config.shuffle:
    examples = examples.shuffle()
  examples = examples.repeat(config.num_epochs)[shard_index::shard_count]
  speed_factors = tuple(config.speed_perturb_factors) if config.speed_perturb else ()
  examples = examples.random_map(functools.partial(
      _prepare_example, tokenizer=tokenizer, sample_rate=config.sample_rate, speed_factors=speed_factors))
  return _batch_iterator(examples.map_with_index(_attach_index), tokenizer, config, keep_overlong=False)


def make_eval_iterator(
    source: Sequence[dict[str, Any]],
    tokenizer: Tokenizer,
    config: ml_collections.ConfigDict,
    *,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.DatasetIterator:
  """Evaluation batches of this host's shard: source order, every example once, padding rows masked.

  Ignores config.shuffle, num_epochs and speed_perturb. Arguments as `make_train_iterator`.

  Returns:
    A finite checkpointable iterator.
  """
  validate_config(config)
  shard_index, shard_count = _shard(shard_index, shard_count, len(source))
  examples = grain.MapDataset.source(source)[shard_index::shard_count]
  examples = examples.map(functools.partial(
      _prepare_example, rng=None, tokenizer=tokenizer, sample_rate=config.sample_rate, speed_factors=()))
  return _batch_iterator(examples.map_with_index(_attach_index), tokenizer, config, keep_overlong=True)


def _batch_iterator(
    examples: grain.MapDataset, tokenizer: Tokenizer, config: ml_collections.ConfigDict, *, keep_overlong: bool
) -> grain.DatasetIterator:
  """Reads `examples` with threads, buckets them into batches (in worker processes if any), prefetches."""
  stream = examples.to_iter_dataset(grain.ReadOptions(
      num_threads=config.read_threads, prefetch_buffer_size=config.read_buffer_size))
  batches = BucketIterDataset(
      stream, examples, bucket_shapes(config), pad_id=tokenizer.pad_id,
      keep_overlong=keep_overlong, overlong_batch_size=config.batch_multiple)
  if config.worker_count:
    if not flags.FLAGS.is_parsed():
      # grain 0.2.18 reads an absl flag when it starts workers and fails if flags are unparsed, as they
      # are outside absl.app (tests, notebooks); google/grain#1355, fixed upstream. Keep the defaults.
      flags.FLAGS.mark_as_parsed()
    # Each worker reads every worker_count-th example and buckets it; whole batches, not examples, cross
    # the process boundary (a few large messages: grain pays per message), and padding runs in parallel.
    # The workers' buffers are the prefetch: a thread prefetching on top of them slowed 2 workers 3x.
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size))
  elif config.prefetch_batches:
    batches = grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=config.prefetch_batches)
  return iter(batches)


def _shard(shard_index: int | None, shard_count: int | None, num_examples: int) -> tuple[int, int]:
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} is not in [0, shard_count={shard_count})")
  if num_examples == 0:
    raise ValueError("the data source holds no examples")
  return shard_index, shard_count


def _prepare_example(
    record: dict[str, Any],
    rng: np.random.Generator | None,
    *,
    tokenizer: Tokenizer,
    sample_rate: int,
    speed_factors: Sequence[float],
) -> dict[str, Any]:
  """A source record → {"id": str, "audio": int16 [samples], "labels": int32 [tokens]}.

  `rng` draws the speed perturbation factor; it is unused (and may be None) when `speed_factors` is empty.
  """
  example_id = str(record["id"])
  if record["sample_rate"] != sample_rate:
    raise ValueError(
        f"example {example_id!r} has sample rate {record['sample_rate']}, the data config's "
        f"sample_rate is {sample_rate}")
  audio = np.asarray(record["audio"])
  if audio.dtype != np.int16 or audio.ndim != 1:
    raise ValueError(f"example {example_id!r} has audio {audio.dtype} {audio.shape}, expected int16 [samples]")
  if speed_factors:
    perturbed = random_speed_perturb(rng, audio, sample_rate, speed_factors)  # float, int16 scale
    audio = np.clip(np.rint(perturbed), -32768, 32767).astype(np.int16)
  labels = np.asarray(tokenizer.encode(record["text"]), np.int32)
  return {"id": example_id, "audio": audio, "labels": labels}


def _attach_index(index: int, example: dict[str, Any]) -> dict[str, Any]:
  """Records the example's position, by which the bucketing iterator fetches it again on restore."""
  return {**example, "index": index}
