"""Grain input pipelines: utterances → padded batches of a few fixed shapes, for training and evaluation.

The trainer calls `make_train_iterator` / `make_eval_iterator` with a random-access source (anything with
`len` and `__getitem__` returning the record dict of `speechfuse.data.storage`: `id` str, `audio` int16
[samples], `sample_rate` int, `text` str, ...; a list of such dicts works), a tokenizer (anything with
`encode(text) -> list[int]` and `pad_id`, as `speechfuse.text` tokenizers) and the `data` ConfigDict of
`default_config()`.

Multi-host runs assemble one global array per step from the hosts' batches
(`jax.make_array_from_process_local_data`), so every host must emit a batch of the same shape at every
step, and in evaluation the same number of batches. Hence batches are planned globally and loaded
locally:
1. Plan (`bucketing.StreamPlan`), from lengths alone: the source's `metadata()` (a dataset's index,
   `storage.SplitSource.metadata`; a source without one, such as a list, is read once) gives every
   example's audio length and text, tokenised here for the label length. Every host runs the same seeded
   shuffle over all examples (a new order every epoch), draws the same speed perturbation factors (a
   function of seed, epoch and position, so the perturbed lengths are known before loading) and buckets
   the same stream into the same global batches.
2. Load: host `shard_index` takes rows [shard_index * b, (shard_index + 1) * b) of every global batch of
   batch_size rows, b = batch_size / shard_count, reads, perturbs and tokenises only those examples and
   pads them to (b, num_samples, num_labels). Hosts therefore emit the same shapes in the same order; the
   hosts' rows of a step, concatenated in shard order, are the single-host batch of that step; padding
   rows (mask 0) sit at the end of the global batch.
Batches are loaded by `read_threads` threads per process, `read_buffer_size` batches ahead, and with
`worker_count` > 0 in worker processes (batch i in worker i % worker_count; grain returns them in order,
so the stream does not depend on worker_count).

Bucketing (as Lhotse's DynamicBucketingSampler, with shapes fixed in advance so that jit compiles once
per bucket): `bucket_boundaries_seconds` are the buckets' upper edges. Bucket k pads audio to its edge
in samples, labels to ceil(edge * max_tokens_per_second) tokens, and holds floor(max_batch_seconds /
edge) examples over all hosts, rounded down to a multiple of `batch_multiple` (the data-parallel device
count, which must be a multiple of the host count): every global batch's padded duration is at most
max_batch_seconds. An example goes to the smallest bucket that holds both its (speed-perturbed) audio and
its labels. In training an example that fits no bucket — longer than the largest edge, or with more
tokens than max_tokens_per_second allows for the largest edge — is dropped and counted:
`dropped_counts(iterator.get_state())`. Each epoch ends with the partially filled buckets' batches,
padded with mask-0 rows, so every epoch holds every kept example exactly once.

Evaluation: source order, no perturbation, no drop, one pass; every example once over all hosts. A
bucket's last batch is padded with mask-0 rows, and an example that fits no bucket gets a global batch of
its own (`batch_multiple` rows, lengths rounded up to multiples of the largest bucket's: an extra shape,
so size the buckets to cover the evaluation data).

Batch format — the contract with the trainer and the models — a dict of numpy arrays, one host's rows:
  audio:          int16 [batch, samples], zero past each example's length.
  audio_lengths:  int32 [batch], valid samples per row.
  labels:         int32 [batch, max_labels], tokenizer.pad_id past each example's length.
  label_lengths:  int32 [batch].
  mask:           float32 [batch], 1 for a real example, 0 for a padding row (all lengths 0, id "").
  ids:            str [batch], the examples' ids; host-only (`HOST_ONLY_KEYS`): the trainer drops it
                  before sending the batch to the devices.
  and, for each record field named in `fields` (a task asks for what it needs: speaker, text, phonemes,
  translation as host strings [batch]; phoneme_timings / word_timings float32 [batch, max_labels, 2] with
  <field>_lengths; video uint8 [batch, frames, height, width(, 3)] with video_lengths, frames = the bucket's
  duration at the videos' frame rate; bucketing.pad_batch).
(batch * shard_count, samples, max_labels) is always one of `bucket_shapes(config)` (evaluation's
overlong batches aside).

Training may add noise (`noise`): with probability noise.prob an utterance gets a noise recording (from the
dataset noise.corpus, or generated white / pink / brown noise) at an SNR uniform in noise.snr_db, drawn from the
batch's position in the stream, so a resumed run adds the same noise.

Checkpointing: the iterators' `get_state()` is a small JSON-serialisable dict — the position of the next
batch in the global plan, the drops so far and the bucket shapes — and `set_state()` makes a fresh
iterator built with the same source, tokenizer, config and seed continue with the next unseen batch,
nothing repeated, nothing skipped, whatever its worker_count (and, the plan being global, its
shard_count). It refuses a state saved with other bucket shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from absl import flags
import grain
import jax
import ml_collections
import numpy as np

from speechfuse.audio.augment import random_add_noise, speed_perturb
from speechfuse.data import noise as noise_lib, schema
from speechfuse.data.bucketing import DROP_REASONS, BucketShape, PlannedBatch, StreamPlan, pad_batch
from speechfuse.text.base import Tokenizer

__all__ = [
    "HOST_ONLY_KEYS",
    "BucketShape",
    "bucket_shapes",
    "default_config",
    "dropped_counts",
    "make_eval_iterator",
    "make_train_iterator",
    "validate_config",
]

# Batch keys that stay on the host: the trainer removes them before device_put.
HOST_ONLY_KEYS = ("ids",)
# Record fields a batch may carry (`fields`): every schema field but the audio and its bookkeeping.
FIELDS = ("text", "speaker") + schema.OPTIONAL_FIELDS


def default_config() -> ml_collections.ConfigDict:
  """The `data` pipeline config; recipes override fields."""
  config = ml_collections.ConfigDict()
  config.sample_rate = 16000  # every example must have this rate; checked per example
  # Buckets' upper edges in seconds, increasing; audio longer than the last is dropped in training.
  config.bucket_boundaries_seconds = (3.0, 5.0, 7.0, 10.0, 14.0, 20.0)
  # Bound on a global batch's padded duration: bucket k holds floor(max_batch_seconds / edge_k) examples.
  config.max_batch_seconds = 240.0
  # Label padding: bucket k holds ceil(edge_k * max_tokens_per_second) tokens. English read speech runs
  # about 15 characters a second; 25 leaves room for fast speakers and for speed perturbation at 1.1.
  config.max_tokens_per_second = 25.0
  # Global batch sizes are rounded down to a multiple of this: the data-parallel device count, a multiple
  # of the number of hosts (each host gets batch_size / host count rows of every batch).
  config.batch_multiple = 1
  config.shuffle = True  # training only: global shuffle, a new order every epoch
  config.num_epochs = ml_collections.config_dict.placeholder(int)  # None: repeat forever (training only)
  config.speed_perturb = False  # training only: random speed perturbation (Ko et al. 2015)
  config.speed_perturb_factors = (0.9, 1.0, 1.1)
  # Training only: additive noise (Ko et al. 2017 style augmentation) on a share `prob` of the utterances.
  config.noise = ml_collections.ConfigDict({
      "prob": 0.0,  # 0 disables
      "snr_db": (5.0, 20.0),  # SNR drawn uniformly in this range
      "corpus": "",  # a dataset of noise recordings (speechfuse-prepare manifest); "" generates coloured noise
      "split": "train",  # its split
  })
  # Record fields the batches carry besides audio and labels (schema.record_fields; tasks add what they need).
  config.fields = ()
  config.worker_count = 0  # worker processes loading batches; 0: all in this process
  config.worker_buffer_size = 2  # batches each worker keeps ahead
  config.read_threads = 2  # threads per process loading batches; 0 (or read_buffer_size 0) loads inline
  config.read_buffer_size = 2  # batches each process's threads load ahead
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
  for key in ("worker_count", "worker_buffer_size", "read_threads", "read_buffer_size"):
    if config[key] < 0:
      raise ValueError(f"config.{key} must be non-negative, got {config[key]}")
  if config.worker_count and config.worker_buffer_size < 1:
    raise ValueError("config.worker_buffer_size must be at least 1 when config.worker_count > 0")
  unknown = sorted(set(config.fields) - set(FIELDS))
  if unknown:
    raise ValueError(f"config.fields has {unknown}, which no record carries; choose from {FIELDS}")
  timed = sorted(set(config.fields) & {"phoneme_timings", "word_timings", "video"})
  if config.speed_perturb and timed:
    raise ValueError(f"config.speed_perturb must be False with config.fields {timed}: perturbed audio no longer lines "
                     "up with them")
  low, high = config.noise.snr_db
  if not 0.0 <= config.noise.prob <= 1.0 or low > high:
    raise ValueError(f"config.noise.prob={config.noise.prob} must be in [0, 1] and config.noise.snr_db={low, high} "
                     "a (low, high) range")


def bucket_shapes(config: ml_collections.ConfigDict) -> list[BucketShape]:
  """The global padded batch shapes, one per bucket, smallest first: (batch_size, num_samples, num_labels).

  Each of shard_count hosts emits batch_size // shard_count rows of every global batch.
  """
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
  """This host's rows of the global training batches (format in the module docstring), shuffled with `seed`.

  Args:
    source: random-access records, with `metadata()` as `storage.SplitSource` or read once to plan.
    tokenizer: turns `text` into label ids; its `pad_id` pads `labels`.
    config: a `default_config()`.
    seed: non-negative; drives the shuffle and the speed perturbation; the same on every host.
    shard_index: this host's shard; defaults to jax.process_index().
    shard_count: number of shards; defaults to jax.process_count().

  Returns:
    A checkpointable iterator (`get_state` / `set_state`); infinite unless config.num_epochs is set.
  """
  validate_config(config)
  shard_index, shard_count = _shard(shard_index, shard_count, config, len(source))
  num_samples, num_labels = _lengths(source, tokenizer)
  speed_factors = tuple(config.speed_perturb_factors) if config.speed_perturb else ()
  plan = StreamPlan(num_samples, num_labels, bucket_shapes(config), seed=seed, shuffle=config.shuffle,
                    num_epochs=config.num_epochs, speed_factors=speed_factors, sample_rate=config.sample_rate)
  noise = noise_lib.NoiseBank.from_config(config.noise, config.sample_rate) if config.noise.prob > 0 else None
  loader = _BatchLoader(source, tokenizer, plan, config, shard_index, shard_count, noise=noise, seed=seed)
  return _PlannedIterator(plan, loader, config)


def make_eval_iterator(
    source: Sequence[dict[str, Any]],
    tokenizer: Tokenizer,
    config: ml_collections.ConfigDict,
    *,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.DatasetIterator:
  """This host's rows of the evaluation batches: source order, every example once, padding rows masked.

  Ignores config.shuffle, num_epochs and speed_perturb. Every host gets the same number of batches.
  Arguments as `make_train_iterator`.

  Returns:
    A finite checkpointable iterator.
  """
  validate_config(config)
  shard_index, shard_count = _shard(shard_index, shard_count, config, len(source))
  num_samples, num_labels = _lengths(source, tokenizer)
  plan = StreamPlan(num_samples, num_labels, bucket_shapes(config), seed=0, shuffle=False, num_epochs=1,
                    sample_rate=config.sample_rate, keep_overlong=True,
                    overlong_batch_size=config.batch_multiple)
  return _PlannedIterator(plan, _BatchLoader(source, tokenizer, plan, config, shard_index, shard_count), config)


def dropped_counts(state: dict[str, Any]) -> dict[str, int]:
  """Examples dropped for fitting no bucket, by reason, from an iterator's `get_state()`.

  Counted over all hosts (the plan is global) and over the epochs the iterator has reached.

  Returns:
    {"audio_too_long": n, "labels_too_long": m}: longer audio than the largest bucket, or more tokens
    than any bucket long enough for the audio holds.
  """
  return {reason: int(state["dropped"][reason]) for reason in DROP_REASONS}


class _BatchLoader:
  """Global batch index → this host's rows of it, loaded, perturbed, tokenised and padded.

  Runs in the pipeline's read threads and worker processes; pickles with its source, tokenizer and plan.
  """

  def __init__(self, source: Sequence[dict[str, Any]], tokenizer: Tokenizer, plan: StreamPlan,
               config: ml_collections.ConfigDict, shard_index: int, shard_count: int, *,
               noise: noise_lib.NoiseBank | None = None, seed: int = 0):
    self._source, self._tokenizer, self._plan = source, tokenizer, plan
    self._sample_rate, self._fields = config.sample_rate, tuple(config.fields)
    self._noise, self._noise_prob, self._snr_db = noise, config.noise.prob, tuple(config.noise.snr_db)
    self._seed = seed
    self._shard_index, self._shard_count = shard_index, shard_count

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    planned: PlannedBatch = self._plan[index]
    rows = planned.shape.batch_size // self._shard_count
    first = self._shard_index * rows
    mine = slice(first, first + rows)
    examples = [self._load(int(i), float(f), (index, first + row))
                for row, (i, f) in enumerate(zip(planned.indices[mine], planned.factors[mine]))]
    return pad_batch(examples, planned.shape._replace(batch_size=rows), self._tokenizer.pad_id, self._fields,
                     self._sample_rate)

  def _load(self, index: int, factor: float, position: tuple[int, int]) -> dict[str, Any]:
    """Source record `index` (at global batch and row `position`) → {"id": str, "audio": int16 [samples], "labels":
    int32 [tokens], and the requested fields}, checked against the lengths it was planned with."""
    record = self._source[index]
    example_id = str(record["id"])
    if record["sample_rate"] != self._sample_rate:
      raise ValueError(
          f"example {example_id!r} has sample rate {record['sample_rate']}, the data config's "
          f"sample_rate is {self._sample_rate}")
    audio = np.asarray(record["audio"])
    if audio.dtype != np.int16 or audio.ndim != 1:
      raise ValueError(f"example {example_id!r} has audio {audio.dtype} {audio.shape}, expected int16 [samples]")
    labels = np.asarray(self._tokenizer.encode(record["text"]), np.int32)
    if (len(audio), len(labels)) != (self._plan.num_samples[index], self._plan.num_labels[index]):
      raise ValueError(
          f"example {example_id!r} has {len(audio)} samples and {len(labels)} tokens, its metadata says "
          f"{self._plan.num_samples[index]} and {self._plan.num_labels[index]}: the source's index is stale")
    missing = [field for field in self._fields if field not in record]
    if missing:
      raise ValueError(f"example {example_id!r} has no field {missing[0]!r}: its dataset does not store it")
    if factor != 1.0:
      perturbed = speed_perturb(audio, self._sample_rate, factor)  # float, int16 scale
      audio = np.clip(np.rint(perturbed), -32768, 32767).astype(np.int16)
    if self._noise is not None:
      rng = np.random.default_rng((self._seed, *position))  # a function of the stream position: resumable
      if rng.uniform() < self._noise_prob:
        noisy = random_add_noise(rng, audio.astype(np.float64), self._noise.noises, self._snr_db)
        audio = np.clip(np.rint(noisy), -32768, 32767).astype(np.int16)
    extra = {field: record[field] for field in self._fields}
    if "video" in self._fields:
      extra["video_fps"] = record["video_fps"]
    return {"id": example_id, "audio": audio, "labels": labels, **extra}


class _PlannedIterator(grain.DatasetIterator):
  """This host's batches of a `StreamPlan`, from a position on; its state is that position.

  The grain pipeline (threads, worker processes) behind it starts at the first `next` and is rebuilt
  from the new position by `set_state`, so a restored iterator never replays what the old one read ahead.
  """

  def __init__(self, plan: StreamPlan, loader: _BatchLoader, config: ml_collections.ConfigDict):
    super().__init__()
    self._plan, self._loader = plan, loader
    self._read_options = grain.ReadOptions(num_threads=config.read_threads,
                                           prefetch_buffer_size=config.read_buffer_size)
    self._worker_count, self._worker_buffer_size = config.worker_count, config.worker_buffer_size
    self._position = 0
    self._batches: grain.DatasetIterator | None = None

  def __next__(self) -> dict[str, np.ndarray]:
    self._assert_not_closed()
    if self._batches is None:
      self._batches = iter(self._dataset(self._position))
    batch = next(self._batches)
    self._position += 1
    return batch

  def _dataset(self, start: int) -> grain.IterDataset:
    batches = grain.MapDataset.range(start, len(self._plan)).map(self._loader).to_iter_dataset(self._read_options)
    if not self._worker_count:
      return batches
    if not flags.FLAGS.is_parsed():
      # grain 0.2.18 reads an absl flag when it starts workers and fails if flags are unparsed, as they
      # are outside absl.app (tests, notebooks); google/grain#1355, fixed upstream. Keep the defaults.
      flags.FLAGS.mark_as_parsed()
    # Whole padded batches, not examples, cross the process boundary: a few large messages (grain pays
    # per message), and padding runs in parallel. The workers' buffers are the prefetch.
    return batches.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=self._worker_count, per_worker_buffer_size=self._worker_buffer_size))

  def epoch_audio(self) -> tuple[int, float]:
    """(global batches, seconds of audio) in the stream's first epoch: StreamPlan.epoch_audio."""
    return self._plan.epoch_audio(0)

  def get_state(self) -> dict[str, Any]:
    return {
        "position": self._position,
        "dropped": self._plan.dropped_before(self._position),
        "bucket_shapes": [list(shape) for shape in self._plan.shapes],
    }

  def set_state(self, state: dict[str, Any]) -> None:
    shapes = [list(shape) for shape in self._plan.shapes]
    if state["bucket_shapes"] != shapes:
      raise ValueError(
          f"the iterator state was saved with bucket shapes {state['bucket_shapes']}, but this pipeline "
          f"has {shapes}: the data config changed since the checkpoint")
    self._close_batches()
    self._position = int(state["position"])

  def close(self) -> None:
    self._close_batches()
    super().close()

  def _close_batches(self) -> None:
    if self._batches is not None:
      self._batches.close()
      self._batches = None

  def __str__(self) -> str:
    return f"_PlannedIterator(position={self._position}, shapes={list(self._plan.shapes)})"


def _shard(shard_index: int | None, shard_count: int | None, config: ml_collections.ConfigDict,
           num_examples: int) -> tuple[int, int]:
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} is not in [0, shard_count={shard_count})")
  if config.batch_multiple % shard_count:
    raise ValueError(
        f"config.batch_multiple={config.batch_multiple} must be a multiple of shard_count={shard_count}: "
        f"every global batch is split evenly over the hosts")
  if num_examples == 0:
    raise ValueError("the data source holds no examples")
  return shard_index, shard_count


def _lengths(source: Sequence[dict[str, Any]], tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """Every example's audio length int64 [N] and label length int64 [N], for planning.

  From `source.metadata()` when the source has one (a dataset's index: no audio is read); otherwise,
  as for in-memory lists, from the records themselves.
  """
  if hasattr(source, "metadata"):
    metadata = source.metadata()
    num_samples, texts = metadata["num_samples"], metadata["text"]
  else:
    records = [source[i] for i in range(len(source))]
    num_samples, texts = [len(record["audio"]) for record in records], [record["text"] for record in records]
  if len(num_samples) != len(source) or len(texts) != len(source):
    raise ValueError(f"the source's metadata describes {len(num_samples)} examples, the source holds {len(source)}")
  return np.asarray(num_samples, np.int64), np.asarray([len(tokenizer.encode(text)) for text in texts], np.int64)
