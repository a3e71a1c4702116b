"""Tests of the grain pipelines on a synthetic in-memory source (8 kHz, 0.3-3.4 s utterances)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from speechfuse.audio.augment import speed_perturbed_length
from speechfuse.data import pipeline
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
  config.prefetch_batches = 0
  config.update(overrides)
  return config


SOURCE = make_source()
TOKENIZER = CharTokenizer()


def fits_some_bucket(record: dict, config) -> bool:
  num_labels = len(TOKENIZER.encode(record["text"]))
  return any(len(record["audio"]) <= samples and num_labels <= labels
             for _, samples, labels in pipeline.bucket_shapes(config))


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


def test_epochs_are_reshuffled_and_complete():
  config = make_config(num_epochs=2)
  batches = list(pipeline.make_train_iterator(SOURCE, TOKENIZER, config, seed=0, shard_index=0, shard_count=1))
  kept = sorted(r["id"] for r in SOURCE if fits_some_bucket(r, config))
  ids = real_ids(batches)
  assert sorted(ids) == sorted(kept * 2)
  assert ids[:len(kept)] != ids[len(kept):]


def test_one_epoch_shards_are_disjoint_and_cover_the_kept_examples():
  config = make_config(num_epochs=1)
  shard_ids, dropped = [], []
  for shard_index in range(3):
    iterator = pipeline.make_train_iterator(
        SOURCE, TOKENIZER, config, seed=1, shard_index=shard_index, shard_count=3)
    shard_ids.append(real_ids(list(iterator)))
    dropped.append(pipeline.dropped_counts(iterator.get_state()))
  all_ids = [i for ids in shard_ids for i in ids]
  assert len(all_ids) == len(set(all_ids))
  assert sorted(all_ids) == sorted(r["id"] for r in SOURCE if fits_some_bucket(r, config))
  too_long = sum(len(r["audio"]) > 3 * SAMPLE_RATE for r in SOURCE)
  assert too_long > 0
  assert sum(d["audio_too_long"] for d in dropped) == too_long
  assert sum(d["labels_too_long"] for d in dropped) == 1  # the last, wordy example


def test_speed_perturbation_is_seeded_and_changes_lengths():
  config = make_config(speed_perturb=True, speed_perturb_factors=(0.9, 1.1), num_epochs=1)
  batches = list(pipeline.make_train_iterator(SOURCE, TOKENIZER, config, seed=0, shard_index=0, shard_count=1))
  again = list(pipeline.make_train_iterator(SOURCE, TOKENIZER, config, seed=0, shard_index=0, shard_count=1))
  assert_same_batches(again, batches)
  original = {r["id"]: len(r["audio"]) for r in SOURCE}
  for batch in batches:
    for i, length in zip(batch["ids"][batch["mask"] > 0], batch["audio_lengths"][batch["mask"] > 0]):
      assert length in {speed_perturbed_length(original[i], SAMPLE_RATE, f) for f in (0.9, 1.1)}


@pytest.mark.parametrize("overrides", [
    {},
    {"speed_perturb": True, "read_threads": 2, "prefetch_batches": 2},
    {"speed_perturb": True, "worker_count": 1},
    {"worker_count": 2, "read_threads": 2},
], ids=["plain", "speed_perturb_threads_prefetch", "speed_perturb_one_worker", "two_workers_threads"])
def test_resume_mid_run_continues_with_the_next_unseen_batch(overrides):
  # Two epochs run to their end, so that the comparison reaches every example that was waiting in a
  # bucket at the checkpoint, across the epoch boundary and through the final flush. The saving
  # iterator runs on undisturbed and gives the reference (a fresh one per case costs a worker start).
  config = make_config(num_epochs=2, **overrides)
  make = lambda: pipeline.make_train_iterator(SOURCE, TOKENIZER, config, seed=5, shard_index=1, shard_count=2)
  seen = 9
  running = make()
  take(running, seen)
  state = json.loads(json.dumps(running.get_state()))
  expected = list(running)
  expected_dropped = pipeline.dropped_counts(running.get_state())
  running.close()
  assert len(expected) > seen
  assert any(any(s["pending_indices"]) for s in pipeline.bucketing_states(state)), (
      "the test should restore partially filled buckets")

  restored = make()
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


def test_eval_keeps_every_example_once_in_source_order():
  config = make_config(shuffle=True, speed_perturb=True, batch_multiple=2)
  shapes = set(pipeline.bucket_shapes(config))
  shard_ids = []
  for shard_index in range(2):
    batches = list(pipeline.make_eval_iterator(SOURCE, TOKENIZER, config, shard_index=shard_index, shard_count=2))
    again = list(pipeline.make_eval_iterator(SOURCE, TOKENIZER, config, shard_index=shard_index, shard_count=2))
    assert_same_batches(again, batches)
    for batch in batches:
      assert len(batch["mask"]) % 2 == 0
      assert ((batch["audio_lengths"] > 0) == (batch["mask"] > 0)).all()
      shape = (len(batch["mask"]), batch["audio"].shape[1], batch["labels"].shape[1])
      real = batch["ids"][batch["mask"] > 0]
      overlong = [r for r in SOURCE if r["id"] in real and not fits_some_bucket(r, config)]
      assert shape in shapes or len(real) == len(overlong) == 1
    ids = real_ids(batches)
    shard_ids.append(ids)
    # Within a bucket, examples keep the source order.
    assert all(sorted(b["ids"][b["mask"] > 0]) == list(b["ids"][b["mask"] > 0]) for b in batches)
  all_ids = shard_ids[0] + shard_ids[1]
  assert sorted(all_ids) == sorted(r["id"] for r in SOURCE)
  assert not set(shard_ids[0]) & set(shard_ids[1])


def test_wrong_sample_rate_names_the_example():
  source = make_source(num_examples=3)
  source[1]["sample_rate"] = 16000
  config = make_config(num_epochs=1, shuffle=False)
  with pytest.raises(ValueError, match="utt001"):
    list(pipeline.make_train_iterator(source, TOKENIZER, config, seed=0, shard_index=0, shard_count=1))
