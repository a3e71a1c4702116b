"""Tests of the grain pipelines on a synthetic in-memory source (8 kHz, 0.3-3.4 s utterances)."""

from __future__ import annotations

import functools
import itertools
import json

import numpy as np
import pytest

from speechfuse.audio.augment import speed_perturbed_length
from speechfuse.data import pipeline, storage
from speechfuse.text.chars import CharTokenizer

SAMPLE_RATE = 8000
NUM_EXAMPLES = 90
WORDS = ("the", "cat", "sat", "on", "a", "mat", "speech", "fusion", "model", "hello")


def make_source(num_examples: int = NUM_EXAMPLES, seed: int = 0) -> list[dict]:
  """Random-length utterances; the last one has far too many words for its length."""
  rng = np.random.default_rng(seed)
  source = []
  for i in range(num_examples):
    num_samples = int(rng.uniform(0.3, 3.4) * SAMPLE_RATE)
    num_words = 1 + int(rng.integers(6)) if i < num_examples - 1 else 40
    text = " ".join(rng.choice(WORDS, num_words))
    source.append({
        "id": f"utt{i:03d}", "audio": rng.integers(-3000, 3000, num_samples).astype(np.int16),
        "sample_rate": SAMPLE_RATE, "text": text, "speaker": f"spk{i % 4}",
        "duration": num_samples / SAMPLE_RATE,
    })
  return source


def make_config(**overrides):
  config = pipeline.default_config()
  config.sample_rate = SAMPLE_RATE
  config.bucket_boundaries_seconds = (1.0, 2.0, 3.0)
  config.max_batch_seconds = 8.0
  config.max_tokens_per_second = 15.0
  config.read_threads = 0
  config.update(overrides)
  return config


SOURCE = make_source()
TOKENIZER = CharTokenizer()


def fits_some_bucket(record: dict, config) -> bool:
  num_labels = len(TOKENIZER.encode(record["text"]))
  return any(len(record["audio"]) <= samples and num_labels <= labels
             for _, samples, labels in pipeline.bucket_shapes(config))


class CountingSource:
  """A list source with `metadata()`, as a stored split's, that counts the records it is asked for."""

  def __init__(self, records: list[dict]):
    self.records, self.reads = records, []

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    self.reads.append(index)
    return self.records[index]

  def metadata(self) -> dict:
    return {"id": [r["id"] for r in self.records], "num_samples": np.array([len(r["audio"]) for r in self.records]),
            "text": [r["text"] for r in self.records]}


def take(iterator, count: int) -> list[dict]:
  return list(itertools.islice(iterator, count))


def assert_same_batches(batches, expected):
  assert len(batches) == len(expected)
  for batch, want in zip(batches, expected):
    assert batch.keys() == want.keys()
    for key in want:
      np.testing.assert_array_equal(batch[key], want[key], err_msg=key)


def real_ids(batches) -> list[str]:
  return [i for batch in batches for i, m in zip(batch["ids"], batch["mask"]) if m]


def test_bucket_shapes_follow_the_config():
  config = make_config(batch_multiple=2, max_batch_seconds=9.0)
  assert pipeline.bucket_shapes(config) == [(8, 8000, 15), (4, 16000, 30), (2, 24000, 45)]


@pytest.mark.parametrize("overrides, key", [
    ({"bucket_boundaries_seconds": (2.0, 1.0)}, "bucket_boundaries_seconds"),
    ({"max_batch_seconds": 2.0}, "max_batch_seconds"),
    ({"batch_multiple": 0}, "batch_multiple"),
    ({"num_epochs": 0}, "num_epochs"),
    ({"worker_count": -1}, "worker_count"),
    ({"read_buffer_size": -1}, "read_buffer_size"),
])
def test_invalid_config_names_the_key(overrides, key):
  with pytest.raises(ValueError, match=key):
    pipeline.bucket_shapes(make_config(**overrides))


def test_batch_format_shapes_and_padding():
  config = make_config(num_epochs=1)
  shapes = set(pipeline.bucket_shapes(config))
  by_id = {record["id"]: record for record in SOURCE}
  batches = list(pipeline.make_train_iterator(SOURCE, TOKENIZER, config, seed=0, shard_index=0, shard_count=1))
  assert {(len(b["mask"]), *b["audio"].shape[1:], b["labels"].shape[1]) for b in batches} <= shapes
  for batch in batches:
    assert {k: v.dtype.kind + str(v.dtype.itemsize) for k, v in batch.items() if k != "ids"} == {
        "audio": "i2", "audio_lengths": "i4", "labels": "i4", "label_lengths": "i4", "mask": "f4"}
    assert batch["ids"].dtype.kind == "U"
    batch_size, num_samples = batch["audio"].shape
    assert batch_size * num_samples <= config.max_batch_seconds * SAMPLE_RATE
    for row in range(batch_size):
      length, label_length = batch["audio_lengths"][row], batch["label_lengths"][row]
      assert not batch["audio"][row, length:].any()
      assert (batch["labels"][row, label_length:] == TOKENIZER.pad_id).all()
      if batch["mask"][row]:
        record = by_id[batch["ids"][row]]
        np.testing.assert_array_equal(batch["audio"][row, :length], record["audio"])
        assert batch["labels"][row, :label_length].tolist() == TOKENIZER.encode(record["text"])
      else:
        assert length == label_length == 0 and batch["ids"][row] == ""


def test_same_seed_same_batches_other_seed_other_batches():
  config = make_config()
  first = take(pipeline.make_train_iterator(SOURCE, TOKENIZER, config, seed=3, shard_index=0, shard_count=1), 12)
  again = take(pipeline.make_train_iterator(SOURCE, TOKENIZER, config, seed=3, shard_index=0, shard_count=1), 12)
  other = take(pipeline.make_train_iterator(SOURCE, TOKENIZER, config, seed=4, shard_index=0, shard_count=1), 12)
  assert_same_batches(again, first)
  assert real_ids(other) != real_ids(first)


def test_epochs_are_reshuffled_and_each_holds_every_kept_example_once():
  config = make_config(num_epochs=2)
  batches = list(pipeline.make_train_iterator(SOURCE, TOKENIZER, config, seed=0, shard_index=0, shard_count=1))
  kept = sorted(r["id"] for r in SOURCE if fits_some_bucket(r, config))
  ids = real_ids(batches)
  assert sorted(ids[:len(kept)]) == sorted(ids[len(kept):]) == kept
  assert ids[:len(kept)] != ids[len(kept):]


def test_one_epoch_shards_are_disjoint_and_cover_the_kept_examples():
  config = make_config(num_epochs=1, batch_multiple=3, max_batch_seconds=9.0)
  shard_ids = []
  too_long = sum(len(r["audio"]) > 3 * SAMPLE_RATE for r in SOURCE)
  assert too_long > 0
  for shard_index in range(3):
    iterator = pipeline.make_train_iterator(
        SOURCE, TOKENIZER, config, seed=1, shard_index=shard_index, shard_count=3)
    shard_ids.append(real_ids(list(iterator)))
    # The plan is global: every host counts every drop.
    assert pipeline.dropped_counts(iterator.get_state()) == {
        "audio_too_long": too_long, "labels_too_long": 1}  # the last, wordy example
  all_ids = [i for ids in shard_ids for i in ids]
  assert len(all_ids) == len(set(all_ids))
  assert sorted(all_ids) == sorted(r["id"] for r in SOURCE if fits_some_bucket(r, config))


@pytest.mark.parametrize("shard_count", [2, 4])
def test_hosts_agree_on_every_shape_and_together_give_the_single_host_batch(shard_count):
  config = make_config(num_epochs=2, batch_multiple=4, max_batch_seconds=12.0, speed_perturb=True)
  make = lambda index, count: list(pipeline.make_train_iterator(
      SOURCE, TOKENIZER, config, seed=2, shard_index=index, shard_count=count))
  single = make(0, 1)
  hosts = [make(index, shard_count) for index in range(shard_count)]
  assert all(len(batches) == len(single) for batches in hosts)
  shapes = set(pipeline.bucket_shapes(config))
  for step, global_batch in enumerate(single):
    parts = [batches[step] for batches in hosts]
    assert len({(part["audio"].shape, part["labels"].shape) for part in parts}) == 1, step
    rows, num_samples = parts[0]["audio"].shape
    assert (rows * shard_count, num_samples, parts[0]["labels"].shape[1]) in shapes
    for key, value in global_batch.items():
      np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), value, err_msg=key)

  # The state is a position in the global plan: a single-host checkpoint resumes on any number of hosts.
  single_host = pipeline.make_train_iterator(SOURCE, TOKENIZER, config, seed=2, shard_index=0, shard_count=1)
  take(single_host, 7)
  resharded = pipeline.make_train_iterator(
      SOURCE, TOKENIZER, config, seed=2, shard_index=shard_count - 1, shard_count=shard_count)
  resharded.set_state(single_host.get_state())
  assert_same_batches(list(resharded), hosts[-1][7:])


def test_each_host_reads_only_its_rows_and_plans_from_metadata():
  config = make_config(batch_multiple=2)
  source = CountingSource(SOURCE)
  iterator = pipeline.make_train_iterator(source, TOKENIZER, config, seed=0, shard_index=1, shard_count=2)
  assert not source.reads
  batch = next(iterator)
  assert [SOURCE[i]["id"] for i in source.reads] == real_ids([batch])


def test_stale_metadata_names_the_example():
  source = CountingSource(make_source(num_examples=4))
  metadata = source.metadata()
  source.records[2] = {**source.records[2], "audio": source.records[2]["audio"][:-1]}  # after indexing
  source.metadata = lambda: metadata
  with pytest.raises(ValueError, match="utt002.*stale"):
    list(pipeline.make_train_iterator(source, TOKENIZER, make_config(num_epochs=1), seed=0,
                                      shard_index=0, shard_count=1))


def test_batch_multiple_must_split_evenly_over_the_hosts():
  with pytest.raises(ValueError, match="batch_multiple=2 must be a multiple of shard_count=4"):
    pipeline.make_train_iterator(SOURCE, TOKENIZER, make_config(batch_multiple=2), seed=0,
                                 shard_index=0, shard_count=4)
  with pytest.raises(ValueError, match="batch_multiple"):
    pipeline.make_eval_iterator(SOURCE, TOKENIZER, make_config(), shard_index=0, shard_count=2)


def test_speed_perturbation_is_seeded_and_changes_lengths():
  config = make_config(speed_perturb=True, speed_perturb_factors=(0.9, 1.1), num_epochs=1)
  batches = list(pipeline.make_train_iterator(SOURCE, TOKENIZER, config, seed=0, shard_index=0, shard_count=1))
  again = list(pipeline.make_train_iterator(SOURCE, TOKENIZER, config, seed=0, shard_index=0, shard_count=1))
  assert_same_batches(again, batches)
  original = {r["id"]: len(r["audio"]) for r in SOURCE}
  for batch in batches:
    for i, length in zip(batch["ids"][batch["mask"] > 0], batch["audio_lengths"][batch["mask"] > 0]):
      assert length in {speed_perturbed_length(original[i], SAMPLE_RATE, f) for f in (0.9, 1.1)}


def test_epoch_audio_counts_the_batches_and_seconds_an_epoch_delivers():
  config = make_config(speed_perturb=True, speed_perturb_factors=(0.9, 1.1), num_epochs=1)
  iterator = pipeline.make_train_iterator(SOURCE, TOKENIZER, config, seed=0, shard_index=0, shard_count=1)
  batches, seconds = iterator.epoch_audio()  # before any batch is read: the trainer's eden epoch comes from it
  delivered = list(iterator)
  assert batches == len(delivered)
  real = sum(int(b["audio_lengths"][b["mask"] > 0].sum()) for b in delivered) / SAMPLE_RATE
  assert seconds == pytest.approx(real, rel=1e-4)  # n / factor against the resampled lengths' rounding


@pytest.mark.parametrize("overrides", [
    {},
    {"speed_perturb": True, "read_threads": 2, "read_buffer_size": 3},
    {"speed_perturb": True, "worker_count": 1},
    {"worker_count": 2, "read_threads": 2},
], ids=["plain", "speed_perturb_threads", "speed_perturb_one_worker", "two_workers_threads"])
def test_resume_mid_run_continues_with_the_next_unseen_batch(overrides):
  # Two epochs run to their end, so that the comparison crosses the epoch boundary and reaches the
  # final flush. The saving iterator runs on undisturbed and gives the reference (a fresh one per case
  # costs a worker start); it must also equal the stream read inline: workers and threads load batches,
  # they do not change them.
  config = make_config(num_epochs=2, batch_multiple=2, **overrides)
  make = lambda config: pipeline.make_train_iterator(
      SOURCE, TOKENIZER, config, seed=5, shard_index=1, shard_count=2)
  seen = 9
  running = make(config)
  take(running, seen)
  state = json.loads(json.dumps(running.get_state()))
  expected = list(running)
  expected_dropped = pipeline.dropped_counts(running.get_state())
  running.close()
  assert len(expected) > seen
  assert state["position"] == seen
  inline = make(make_config(num_epochs=2, batch_multiple=2, speed_perturb=config.speed_perturb))
  assert_same_batches(list(inline)[seen:], expected)

  restored = make(config)
  restored.set_state(state)
  assert_same_batches(list(restored), expected)
  assert pipeline.dropped_counts(restored.get_state()) == expected_dropped
  assert expected_dropped["audio_too_long"] > 0
  restored.close()


def test_restore_refuses_a_state_from_other_buckets():
  iterator = pipeline.make_train_iterator(SOURCE, TOKENIZER, make_config(), seed=0, shard_index=0, shard_count=1)
  next(iterator)
  state = iterator.get_state()
  other = pipeline.make_train_iterator(
      SOURCE, TOKENIZER, make_config(max_batch_seconds=12.0), seed=0, shard_index=0, shard_count=1)
  with pytest.raises(ValueError, match="bucket shapes"):
    other.set_state(state)


@pytest.mark.parametrize("shard_count", [1, 2])
def test_eval_keeps_every_example_once_and_hosts_agree(shard_count):
  config = make_config(shuffle=True, speed_perturb=True, batch_multiple=2)
  shapes = set(pipeline.bucket_shapes(config))
  make = lambda index, count: list(pipeline.make_eval_iterator(
      SOURCE, TOKENIZER, config, shard_index=index, shard_count=count))
  hosts = [make(index, shard_count) for index in range(shard_count)]
  assert_same_batches(make(0, shard_count), hosts[0])
  assert len({len(batches) for batches in hosts}) == 1
  single = make(0, 1)
  for step, global_batch in enumerate(single):
    parts = [batches[step] for batches in hosts]
    for key, value in global_batch.items():
      np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), value, err_msg=key)
    assert len(global_batch["mask"]) % 2 == 0
    assert ((global_batch["audio_lengths"] > 0) == (global_batch["mask"] > 0)).all()
    shape = (len(global_batch["mask"]), global_batch["audio"].shape[1], global_batch["labels"].shape[1])
    real = global_batch["ids"][global_batch["mask"] > 0]
    overlong = [r for r in SOURCE if r["id"] in real and not fits_some_bucket(r, config)]
    assert shape in shapes or len(real) == len(overlong) == 1
    # Within a bucket, examples keep the source order, and padding rows come last.
    assert sorted(real) == list(real) and (np.diff(global_batch["mask"]) <= 0).all()
  all_ids = [i for batches in hosts for i in real_ids(batches)]
  assert sorted(all_ids) == sorted(r["id"] for r in SOURCE)


def test_a_stored_split_is_planned_from_its_index(tmp_path):
  records = SOURCE[:24]
  path = storage.write_dataset(tmp_path, "stored", {"train": lambda: iter(records)}, expected_sample_rate=SAMPLE_RATE,
                               max_duration=4.0)
  config = make_config(num_epochs=1, batch_multiple=2, speed_perturb=True)
  for make in (functools.partial(pipeline.make_train_iterator, seed=0), pipeline.make_eval_iterator):
    from_list = list(make(records, TOKENIZER, config, shard_index=1, shard_count=2))
    assert_same_batches(list(make(storage.open_split(path, "train"), TOKENIZER, config, shard_index=1,
                                  shard_count=2)), from_list)


def test_wrong_sample_rate_names_the_example():
  source = make_source(num_examples=3)
  source[1]["sample_rate"] = 16000
  config = make_config(num_epochs=1, shuffle=False)
  with pytest.raises(ValueError, match="utt001"):
    list(pipeline.make_train_iterator(source, TOKENIZER, config, seed=0, shard_index=0, shard_count=1))


def _with_fields(source, seed=0):
  """SOURCE with phonemes, timings and a video of two frames per second (made up: the pipeline only pads them)."""
  rng = np.random.default_rng(seed)
  out = []
  for record in source:
    seconds = len(record["audio"]) / SAMPLE_RATE
    words = record["text"].split()
    timings = np.sort(rng.uniform(0, seconds, (len(words), 2)), axis=1).astype(np.float32)
    video = rng.integers(0, 255, (int(2 * seconds) + 1, 4, 5)).astype(np.uint8)
    out.append({**record, "phonemes": " ".join(w[0] for w in words), "word_timings": timings, "video": video,
                "video_fps": np.float32(2.0)})
  return out


def test_batches_carry_the_record_fields_a_task_asks_for():
  source = _with_fields(SOURCE)
  config = make_config(fields=("speaker", "phonemes", "word_timings", "video"))
  for batch in itertools.islice(pipeline.make_eval_iterator(source, TOKENIZER, config, shard_index=0, shard_count=1),
                                4):
    rows = batch["mask"] > 0
    by_id = {r["id"]: r for r in source}
    edge = batch["audio"].shape[1] / SAMPLE_RATE  # the bucket's duration
    assert batch["video"].shape[1:] == (int(np.ceil(edge * 2.0)), 4, 5) and batch["video"].dtype == np.uint8
    assert batch["word_timings"].shape[1:] == (batch["labels"].shape[1], 2)
    for row in np.flatnonzero(rows):
      record = by_id[str(batch["ids"][row])]
      assert batch["speaker"][row] == record["speaker"] and batch["phonemes"][row] == record["phonemes"]
      n = batch["word_timings_lengths"][row]
      np.testing.assert_array_equal(batch["word_timings"][row, :n], record["word_timings"])
      assert not batch["word_timings"][row, n:].any()
      frames = batch["video_lengths"][row]
      np.testing.assert_array_equal(batch["video"][row, :frames], record["video"])
    assert all(s == "" for s in batch["speaker"][~rows])  # padding rows
  assert set(pipeline.FIELDS) >= {"text", "speaker", "phonemes", "phoneme_timings", "word_timings", "translation",
                                  "video"}


def test_fields_are_checked_by_name():
  with pytest.raises(ValueError, match="config.fields has \\['colour'\\]"):
    pipeline.validate_config(make_config(fields=("colour",)))
  with pytest.raises(ValueError, match="speed_perturb must be False with config.fields \\['video'\\]"):
    pipeline.validate_config(make_config(fields=("video",), speed_perturb=True))
  with pytest.raises(ValueError, match="has no field 'translation'"):
    next(pipeline.make_eval_iterator(SOURCE, TOKENIZER, make_config(fields=("translation",)), shard_index=0,
                                     shard_count=1))


def _train_batches(config, count=6, start_state=None):
  iterator = pipeline.make_train_iterator(SOURCE, TOKENIZER, config, seed=3, shard_index=0, shard_count=1)
  if start_state is not None:
    iterator.set_state(start_state)
  return [next(iterator) for _ in range(count)], iterator


def test_training_noise_is_added_at_its_snr_and_is_the_same_after_a_resume():
  clean, _ = _train_batches(make_config())
  config = make_config(noise={"prob": 1.0, "snr_db": (10.0, 10.0), "corpus": "", "split": "train"})
  noisy, _ = _train_batches(config)
  for a, b in zip(clean, noisy):
    np.testing.assert_array_equal(a["ids"], b["ids"])  # the same plan: noise changes no length
    for row in np.flatnonzero(a["mask"] > 0):
      n = a["audio_lengths"][row]
      signal, mixed = a["audio"][row, :n].astype(np.float64), b["audio"][row, :n].astype(np.float64)
      snr = 10 * np.log10(np.mean(signal ** 2) / np.mean((mixed - signal) ** 2))
      assert snr == pytest.approx(10.0, abs=0.2)  # int16 rounding and clipping aside
  # Resumed from its state after 3 batches, the pipeline adds the very same noise to batches 4-6.
  _, iterator = _train_batches(config, count=3)
  resumed, _ = _train_batches(config, count=3, start_state=json.loads(json.dumps(iterator.get_state())))
  for a, b in zip(noisy[3:], resumed):
    np.testing.assert_array_equal(a["audio"], b["audio"])
  # Evaluation never adds noise.
  evaluated = next(pipeline.make_eval_iterator(SOURCE, TOKENIZER, config, shard_index=0, shard_count=1))
  plain = next(pipeline.make_eval_iterator(SOURCE, TOKENIZER, make_config(), shard_index=0, shard_count=1))
  np.testing.assert_array_equal(evaluated["audio"], plain["audio"])
