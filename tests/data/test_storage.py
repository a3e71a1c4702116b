"""Tests of speechfuse.data.storage: round trips, bad records, atomicity, fresh-process reads."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

from absl import flags
import grain
import numpy as np
import pytest

from speechfuse.data import schema, storage

RATE = 16000


def _record(i: int, *, seconds: float = 0.25, **overrides) -> dict:
  rng = np.random.default_rng(i)
  audio = rng.integers(-32768, 32768, size=round(seconds * RATE), dtype=np.int16)
  record = {"id": f"utt{i:03d}", "audio": audio, "sample_rate": RATE, "text": f"word{i} two three",
            "speaker": f"spk{i % 3}", "duration": audio.size / RATE}
  return {**record, **overrides}


def _full_record(i: int) -> dict:
  record = _record(i)
  return {
      **record,
      "phonemes": "w er d",
      "phoneme_timings": np.array([[0.0, 0.05], [0.05, 0.1], [0.1, 0.2]], np.float32),
      "word_timings": np.array([[0.0, 0.1], [0.1, 0.15], [0.15, 0.25]], np.float32),
      "translation": f"Wort{i} zwei drei ü",
      "video": np.random.default_rng(i).integers(0, 256, size=(6, 8, 7), dtype=np.uint8),
      "video_fps": 25.0,
  }


def _splits(**records_per_split):
  return {split: (lambda records=records: iter(records)) for split, records in records_per_split.items()}


def test_round_trip_of_every_field(tmp_path):
  records = [_full_record(i) for i in range(4)]
  path = storage.write_dataset(tmp_path, "full", _splits(train=records, dev=records[:1]),
                               optional_fields=schema.OPTIONAL_FIELDS, fingerprint="fp1")
  assert path == tmp_path / "full"
  source = storage.open_split(path, "train")
  assert len(source) == 4
  for i, expected in enumerate(records):
    got = source[i]
    assert set(got) == set(expected)
    for field in schema.TEXT_FIELDS:
      assert got[field] == expected[field] and isinstance(got[field], str)
    np.testing.assert_array_equal(got["audio"], expected["audio"])
    assert got["audio"].dtype == np.int16
    for field in ("phoneme_timings", "word_timings", "video"):
      np.testing.assert_array_equal(got[field], expected[field])
      assert got[field].dtype == expected[field].dtype
    assert got["sample_rate"] == RATE
    assert got["duration"] == pytest.approx(expected["duration"])
    assert got["video_fps"] == 25.0
  info = storage.dataset_info(path)
  assert info["fingerprint"] == "fp1"
  assert info["optional_fields"] == list(schema.OPTIONAL_FIELDS)
  assert info["splits"]["train"] == {"num_examples": 4, "hours": pytest.approx(1 / 3600),
                                     "speakers": 3, "skipped": {}}
  assert info["splits"]["dev"]["num_examples"] == 1
  assert info["speakers"] == 3


def test_index_lists_every_record_in_order_without_reading_audio(tmp_path):
  records = [_record(i, seconds=0.1 + 0.05 * i, text=f"wörd{i} ü") for i in range(5)]
  path = storage.write_dataset(tmp_path, "indexed", _splits(train=records, dev=records[:2]))
  source = storage.open_split(path, "train")
  source._source = None  # Reading any record now fails: the index must come from its own file.
  metadata = source.metadata()
  assert metadata["id"] == [r["id"] for r in records]
  assert metadata["text"] == [r["text"] for r in records]
  assert metadata["num_samples"].dtype == np.int64
  assert metadata["num_samples"].tolist() == [len(r["audio"]) for r in records]
  assert storage.open_split(path, "dev").metadata()["id"] == ["utt000", "utt001"]
  assert pickle.loads(pickle.dumps(storage.open_split(path, "dev"))).metadata()["id"] == ["utt000", "utt001"]


def test_a_dataset_without_index_says_to_write_it_again(tmp_path):
  path = storage.write_dataset(tmp_path, "old", _splits(train=[_record(0)]))
  (path / storage.INDEX_DIR / "train.npz").unlink()  # as written before datasets stored an index
  source = storage.open_split(path, "train")
  assert source[0]["id"] == "utt000"
  with pytest.raises(FileNotFoundError, match=r"no index .*train\.npz.*write it again"):
    source.metadata()


def test_required_fields_only_and_rgb_video(tmp_path):
  plain = storage.write_dataset(tmp_path, "plain", _splits(train=[_record(0), _record(1)]))
  assert set(storage.open_split(plain, "train")[0]) == set(schema.REQUIRED_FIELDS)
  rgb = np.zeros((3, 4, 5, 3), np.uint8)
  rgb[1, 2, 3] = (1, 2, 3)
  path = storage.write_dataset(
      tmp_path, "rgb", _splits(train=[{**_record(0), "video": rgb, "video_fps": 30.0}]),
      optional_fields=("video",), video_channels=3)
  np.testing.assert_array_equal(storage.open_split(path, "train")[0]["video"], rgb)


def test_bad_records_are_skipped_counted_and_reported(tmp_path):
  train = [
      _record(0),
      _record(1, text="  "),
      _record(2, seconds=2.0),
      _record(3, sample_rate=8000),
      storage.BadRecord("utt004", "unreadable audio: cannot read audio file 'x.flac'"),
      _record(0),  # the same id again
      _record(5, audio=np.zeros(4000, np.float32)),
      _record(6, extra="field"),
      _record(7),
  ]
  path = storage.write_dataset(tmp_path, "bad", _splits(train=train, dev=[_record(8)]), max_duration=1.0)
  assert [storage.open_split(path, "train")[i]["id"] for i in range(2)] == ["utt000", "utt007"]
  assert storage.dataset_info(path)["splits"]["train"]["skipped"] == {
      "duplicate id": 1, "duration outside limits": 1, "empty transcript": 1, "unexpected field": 1,
      "unexpected sample rate": 1, "unreadable audio": 1, "wrong audio type": 1}
  reasons = {(b["id"], b["split"]): b["reason"] for b in storage.bad_records(path)}
  assert reasons[("utt001", "train")] == "empty transcript"
  assert reasons[("utt002", "train")].startswith("duration outside limits: 2.00 s")
  assert reasons[("utt003", "train")] == "unexpected sample rate: 8000 Hz, expected 16000 Hz"
  assert reasons[("utt004", "train")].startswith("unreadable audio: cannot read")
  report = json.loads((path / storage.REPORT_JSON).read_text())
  assert len(report["bad_records"]) == 7
  markdown = (path / storage.REPORT_MD).read_text()
  assert "| train | 2 |" in markdown and "`utt002`" in markdown and "unreadable audio" in markdown


def test_bad_record_stops_preparation_when_not_skipping(tmp_path):
  with pytest.raises(storage.BadRecordError, match=r"split 'train': bad record 'utt001': empty transcript"):
    storage.write_dataset(tmp_path, "strict", _splits(train=[_record(0), _record(1, text="")]),
                          skip_bad=False)
  assert not storage.is_complete(tmp_path / "strict")
  assert not any(p.name.startswith(".strict.partial") for p in tmp_path.iterdir())


def test_split_without_valid_records_is_an_error(tmp_path):
  with pytest.raises(ValueError, match=r"split 'dev': no valid records; .*'utt001': empty transcript"):
    storage.write_dataset(tmp_path, "empty", _splits(train=[_record(0)], dev=[_record(1, text="")]))


def test_invalid_declarations_are_rejected(tmp_path):
  with pytest.raises(ValueError, match="lower_snake_case"):
    storage.write_dataset(tmp_path, "Bad-Name", _splits(train=[_record(0)]))
  with pytest.raises(ValueError, match="unknown optional fields"):
    storage.write_dataset(tmp_path, "ok", _splits(train=[_record(0)]), optional_fields=("pitch",))
  (tmp_path / "mine").mkdir()
  with pytest.raises(FileExistsError, match="not a speechfuse dataset"):
    storage.write_dataset(tmp_path, "mine", _splits(train=[_record(0)]))


def test_failure_half_way_leaves_no_dataset_and_keeps_the_previous_one(tmp_path):
  def failing():
    yield _record(0)
    raise RuntimeError("preparation interrupted")

  with pytest.raises(RuntimeError, match="interrupted"):
    storage.write_dataset(tmp_path, "half", {"train": failing})
  assert not storage.is_complete(tmp_path / "half")
  with pytest.raises(storage.IncompleteDatasetError, match="does not exist"):
    storage.open_split(tmp_path / "half", "train")

  path = storage.write_dataset(tmp_path, "half", _splits(train=[_record(1)]), fingerprint="v1")
  with pytest.raises(RuntimeError, match="interrupted"):
    storage.write_dataset(tmp_path, "half", {"train": failing}, fingerprint="v2")
  assert storage.is_complete(path, "v1") and not storage.is_complete(path, "v2")
  assert storage.open_split(path, "train")[0]["id"] == "utt001"
  assert sorted(p.name for p in tmp_path.iterdir()) == [".half.lock", "half"]


_KILLED_WRITER = """
import os, signal, sys
import numpy as np
from speechfuse.data import storage

def records():
  for i in range(20):
    if i == 10:
      os.kill(os.getpid(), signal.SIGKILL)  # as a preempted job: no cleanup runs
    audio = np.full(1600, i, np.int16)
    yield {"id": f"u{i}", "audio": audio, "sample_rate": 16000, "text": "a b", "speaker": "s",
           "duration": 0.1}

storage.write_dataset(sys.argv[1], "killed", {"train": records}, fingerprint="f")
"""


def test_killed_preparation_reads_as_incomplete_and_a_rerun_cleans_up(tmp_path):
  result = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], capture_output=True)
  assert result.returncode == -9, result.stderr.decode()
  leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".killed.partial-")]
  assert leftovers, "the killed run should have left its staging directory"
  path = tmp_path / "killed"
  assert not storage.is_complete(path) and not storage.is_complete(path, "f")
  with pytest.raises(storage.IncompleteDatasetError):
    storage.dataset_info(path)

  storage.write_dataset(tmp_path, "killed", _splits(train=[_record(0)]), fingerprint="f")
  assert storage.is_complete(path, "f")
  assert all(not p.exists() for p in leftovers)


_FRESH_READER = """
import pickle, sys
from speechfuse.data import storage
source = storage.open_split(sys.argv[1], "train")
records = [source[i] for i in range(len(source))]
assert "tensorflow" not in sys.modules
assert "speechfuse.data.tfds_builder" not in sys.modules
sys.stdout.buffer.write(pickle.dumps(records))
"""


def test_fresh_process_reads_without_builder_or_tensorflow(tmp_path):
  records = [_record(i) for i in range(3)]
  path = storage.write_dataset(tmp_path, "fresh", _splits(train=records))
  result = subprocess.run([sys.executable, "-c", _FRESH_READER, str(path)], capture_output=True)
  assert result.returncode == 0, result.stderr.decode()
  read = pickle.loads(result.stdout)
  assert [r["id"] for r in read] == [r["id"] for r in records]
  for got, expected in zip(read, records):
    np.testing.assert_array_equal(got["audio"], expected["audio"])


def test_source_pickles_and_feeds_grain_worker_processes(tmp_path):
  records = [_record(i) for i in range(6)]
  path = storage.write_dataset(tmp_path, "grained", _splits(train=records))
  source = storage.open_split(path, "train")
  assert pickle.loads(pickle.dumps(source))[5]["id"] == "utt005"
  if not flags.FLAGS.is_parsed():
    # grain 0.2.18 reads an absl flag when it starts workers (google/grain#1355); keep the defaults.
    flags.FLAGS.mark_as_parsed()

  dataset = (grain.MapDataset.source(source).map(lambda r: r["id"]).to_iter_dataset()
             .mp_prefetch(grain.MultiprocessingOptions(num_workers=1)))
  assert list(dataset) == [r["id"] for r in records]

  loader = grain.DataLoader(
      data_source=source,
      sampler=grain.samplers.IndexSampler(len(source), shuffle=False, num_epochs=1, seed=0),
      worker_count=1)
  ids = [r["id"] for r in loader]
  assert ids == [r["id"] for r in records]


def test_unknown_split_names_the_known_ones(tmp_path):
  path = storage.write_dataset(tmp_path, "splits", _splits(train=[_record(0)]))
  with pytest.raises(KeyError, match=r"no split 'test'.*\['train'\]"):
    storage.open_split(path, "test")


def test_splits_are_generated_one_after_the_other_in_the_given_order(tmp_path):
  events = []

  def split(name):
    def records():
      events.append(f"start {name}")
      yield _record(len(events))
      events.append(f"end {name}")
    return records

  storage.write_dataset(tmp_path, "ordered", {name: split(name) for name in ("test", "train", "dev")})
  assert events == ["start test", "end test", "start train", "end train", "start dev", "end dev"]
