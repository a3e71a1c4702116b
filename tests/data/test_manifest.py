"""Tests of speechfuse.data.manifest: JSONL / TSV / AV-HuBERT manifests and the LibriSpeech layout."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from speechfuse.data import manifest, storage

RATE = 16000


def _pcm(seed: int, seconds: float = 0.3) -> np.ndarray:
  return np.random.default_rng(seed).integers(-20000, 20000, size=round(seconds * RATE), dtype=np.int16)


def _write_audio(path: pathlib.Path, pcm: np.ndarray, rate: int = RATE) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  soundfile.write(path, pcm, rate, subtype="PCM_16")
  return path


def _write_lines(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines) + "\n")
  return path


def _records(entries, **kwargs) -> dict[str, dict | storage.BadRecord]:
  return {item[0] if isinstance(item, storage.BadRecord) else item["id"]: item
          for item in manifest.load_examples(entries, **kwargs)}


def test_jsonl_manifest_reads_audio_exactly_and_reports_bad_lines(tmp_path):
  pcm = _pcm(0)
  _write_audio(tmp_path / "audio" / "a.flac", pcm)
  _write_audio(tmp_path / "audio" / "low.wav", _pcm(1), rate=8000)
  (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF not really")
  rows = [
      {"id": "a", "audio": "audio/a.flac", "text": "hello world", "speaker": "s1", "translation": "hallo welt"},
      {"id": "low", "audio": "audio/low.wav", "text": "low rate", "speaker": "s2", "translation": "x"},
      {"id": "broken", "audio": "audio/broken.wav", "text": "broken", "speaker": "s1", "translation": "x"},
      {"id": "nospeaker", "audio": "audio/a.flac", "text": "who"},
  ]
  lines = [json.dumps(r) for r in rows] + ["{not json"]
  entries = manifest.read_manifest(_write_lines(tmp_path / "train.jsonl", lines))
  assert entries[3] == storage.BadRecord("nospeaker", "bad manifest line: missing speaker")
  assert entries[4].id == "train.jsonl:5" and entries[4].reason.startswith("bad manifest line:")
  assert manifest.present_fields(entries) == ("translation",)

  records = _records(entries, optional_fields=("translation",))
  np.testing.assert_array_equal(records["a"]["audio"], pcm)
  assert records["a"]["translation"] == "hallo welt"
  assert records["a"]["duration"] == pytest.approx(0.3)
  assert records["low"]["sample_rate"] == 8000  # rejected later by write_dataset
  assert records["broken"].reason.startswith("unreadable audio: cannot read audio file")
  assert "broken.wav" in records["broken"].reason

  path = storage.write_dataset(
      tmp_path / "data", "jsonl", {"train": lambda: manifest.load_examples(
          entries, optional_fields=("translation",))}, optional_fields=("translation",))
  reasons = {b["id"]: b["reason"] for b in storage.bad_records(path)}
  assert reasons["low"] == "unexpected sample rate: 8000 Hz, expected 16000 Hz"
  assert set(reasons) == {"low", "broken", "nospeaker", "train.jsonl:5"}
  record = storage.open_split(path, "train")[0]
  np.testing.assert_array_equal(record["audio"], pcm)
  assert (record["id"], record["text"], record["translation"]) == ("a", "hello world", "hallo welt")


def test_resampling_only_when_asked(tmp_path):
  _write_audio(tmp_path / "low.wav", _pcm(1, seconds=0.25), rate=8000)  # 4000 samples: 0.5 s at 8 kHz
  entries = manifest.read_manifest(_write_lines(tmp_path / "m.jsonl", [json.dumps(
      {"id": "low", "audio": "low.wav", "text": "t", "speaker": "s"})]))
  record = _records(entries, resample=True)["low"]
  assert record["sample_rate"] == RATE and record["audio"].shape == (8000,)
  assert record["duration"] == pytest.approx(0.5)


def test_tsv_manifest_with_segments_of_one_file(tmp_path):
  talk = _pcm(2, seconds=2.0)
  _write_audio(tmp_path / "wav" / "talk.wav", talk)
  lines = ["id\taudio\ttext\tspeaker\toffset\tduration\ttranslation",
           "t_0\twav/talk.wav\tfirst part\tspk\t0.0\t0.5\terster Teil",
           "t_1\twav/talk.wav\tsecond \"quoted\" part\tspk\t0.5\t1.0\tzweiter Teil",
           "t_2\twav/talk.wav\t\tspk\t1.5\t0.5\tdritter",
           "t_3\twav/talk.wav\tpast the end\tspk\t1.8\t0.5\tx",
           "t_4\twav/talk.wav\ttoo few cells"]
  entries = manifest.read_manifest(_write_lines(tmp_path / "dev.tsv", lines))
  assert entries[4] == storage.BadRecord("t_4", "bad manifest line: 3 cells for 7 columns")
  records = _records(entries, optional_fields=("translation",))
  np.testing.assert_array_equal(records["t_0"]["audio"], talk[:8000])
  np.testing.assert_array_equal(records["t_1"]["audio"], talk[8000:24000])
  assert records["t_1"]["text"] == 'second "quoted" part'
  assert records["t_2"]["text"] == ""  # an empty transcript, which write_dataset rejects as such
  assert records["t_3"].reason.startswith("segment outside audio")

  path = storage.write_dataset(tmp_path / "data", "tsv", {
      "dev": lambda: manifest.load_examples(entries, optional_fields=("translation",))},
                               optional_fields=("translation",))
  assert storage.dataset_info(path)["splits"]["dev"]["skipped"] == {
      "bad manifest line": 1, "empty transcript": 1, "segment outside audio": 1}


def test_tsv_header_errors_name_the_file_and_column(tmp_path):
  bad_column = _write_lines(tmp_path / "a.tsv", ["id\taudio\ttext\tspeaker\tlanguage", "x\ty\tz\tw\ten"])
  with pytest.raises(manifest.ManifestError, match=r"a\.tsv:1: unknown columns \['language'\]"):
    manifest.read_manifest(bad_column)
  no_speaker = _write_lines(tmp_path / "b.tsv", ["id\taudio\ttext", "x\ty\tz"])
  with pytest.raises(manifest.ManifestError, match=r"b\.tsv: header lacks required columns \['speaker'\]"):
    manifest.read_manifest(no_speaker)


def test_avhubert_tsv_with_transcripts_and_video(tmp_path):
  root = tmp_path / "lrs3"
  pcm = _pcm(3)
  _write_audio(root / "audio" / "trainval" / "vidA" / "00001.wav", pcm)
  _write_audio(root / "audio" / "trainval" / "vidB" / "00002.wav", _pcm(4))
  frames = np.random.default_rng(5).integers(0, 256, size=(8, 11, 11), dtype=np.uint8)
  (root / "video" / "trainval" / "vidA").mkdir(parents=True)
  np.save(root / "video" / "trainval" / "vidA" / "00001.npy", frames)
  tsv = _write_lines(tmp_path / "train.tsv", [
      "lrs3",
      "trainval/vidA/00001\tvideo/trainval/vidA/00001.npy\taudio/trainval/vidA/00001.wav\t8\t4800",
      "trainval/vidB/00002\tvideo/trainval/vidB/00002.mp4\taudio/trainval/vidB/00002.wav\t8\t4800",
      "trainval/vidC/00003\tvideo/c.npy\taudio/c.wav\t8\t4800"])
  with pytest.raises(manifest.ManifestError, match="transcripts"):
    manifest.read_manifest(tsv)
  transcripts = _write_lines(tmp_path / "train.txt", ["trainval/vidA/00001 HELLO THERE",
                                                      "trainval/vidB/00002 GOOD MORNING"])
  entries = manifest.read_manifest(tsv, transcripts=transcripts)
  assert entries[0].speaker == "vidA" and entries[0].text == "HELLO THERE"
  assert entries[2].reason.startswith("missing transcript")

  audio_only = _records(entries)
  np.testing.assert_array_equal(audio_only["trainval/vidA/00001"]["audio"], pcm)
  assert "video" not in audio_only["trainval/vidA/00001"]
  with_video = _records(entries, optional_fields=("video",))
  np.testing.assert_array_equal(with_video["trainval/vidA/00001"]["video"], frames)
  assert with_video["trainval/vidA/00001"]["video_fps"] == manifest.LRS3_VIDEO_FPS
  assert with_video["trainval/vidB/00002"].reason.startswith("unreadable video: cannot decode")


def _fake_librispeech(root: pathlib.Path) -> dict[str, np.ndarray]:
  """dev-clean with speakers 84 and 174, one chapter each; a missing .flac and an unlisted one."""
  audio = {}
  for speaker, chapter, count in (("84", "121123", 2), ("174", "50561", 3)):
    chapter_dir = root / "dev-clean" / speaker / chapter
    ids = [f"{speaker}-{chapter}-{i:04d}" for i in range(count)]
    _write_lines(chapter_dir / f"{speaker}-{chapter}.trans.txt", [f"{i} WORDS OF {i[-1]}" for i in ids])
    for n, utterance_id in enumerate(ids):
      if utterance_id != "174-50561-0002":
        audio[utterance_id] = _pcm(int(speaker) + n, seconds=0.2 + 0.1 * n)
        _write_audio(chapter_dir / f"{utterance_id}.flac", audio[utterance_id])
  _write_audio(root / "dev-clean" / "84" / "121123" / "84-121123-0009.flac", _pcm(9))
  (root / "not-a-split").mkdir()
  return audio


def test_librispeech_layout(tmp_path):
  audio = _fake_librispeech(tmp_path)
  assert manifest.librispeech_splits(tmp_path) == ["dev-clean"]
  entries = manifest.read_librispeech(tmp_path, "dev-clean")
  good = [e for e in entries if isinstance(e, manifest.Entry)]
  assert [e.id for e in good] == ["174-50561-0000", "174-50561-0001", "174-50561-0002",
                                  "84-121123-0000", "84-121123-0001"]
  assert good[3].speaker == "84" and good[3].text == "WORDS OF 0"
  assert storage.BadRecord("84-121123-0009", "missing transcript: not in 84-121123.trans.txt") in entries

  records = _records(entries)
  for utterance_id, pcm in audio.items():
    np.testing.assert_array_equal(records[utterance_id]["audio"], pcm)
  assert records["174-50561-0002"].reason.startswith("unreadable audio")
  with pytest.raises(FileNotFoundError, match="test-clean"):
    manifest.read_librispeech(tmp_path, "test-clean")


def test_decoding_in_worker_processes_keeps_order(tmp_path):
  audio = _fake_librispeech(tmp_path)
  entries = manifest.read_librispeech(tmp_path, "dev-clean")
  serial = list(manifest.load_examples(entries))
  parallel = list(manifest.load_examples(entries, num_workers=1))
  assert [type(r) for r in parallel] == [type(r) for r in serial]
  for a, b in zip(serial, parallel):
    if isinstance(a, dict):
      assert a["id"] == b["id"]
      np.testing.assert_array_equal(a["audio"], b["audio"])
    else:
      assert a == b
  assert len(audio) == sum(isinstance(r, dict) for r in parallel)


def test_a_manifest_whose_records_are_all_bad_names_its_file_the_record_and_the_report(tmp_path):
  """speechfuse-prepare on a manifest of one missing audio file: one line naming the manifest, the record, the
  missing file (not found, not "System error"), and a written list of the rejected records; no dataset."""
  manifest_path = _write_lines(tmp_path / "test.jsonl", [json.dumps(
      {"id": "u1", "audio": "audio/missing.wav", "text": "hello", "speaker": "s1"})])
  prepare = pathlib.Path(sys.executable).parent / "speechfuse-prepare"
  result = subprocess.run([str(prepare), "manifest", f"{manifest_path}:test",
                           "--name", "mine", "--out", str(tmp_path / "data")], capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  error = result.stderr.strip().splitlines()
  assert len(error) == 1 and error[0].startswith("speechfuse-prepare: error:")
  assert str(manifest_path) in error[0] and "'u1'" in error[0]
  assert "missing.wav' not found" in error[0]
  report = tmp_path / "data" / "mine.rejected.md"
  assert str(report) in error[0] and "| test | u1 | unreadable audio:" in report.read_text()
  assert not (tmp_path / "data" / "mine").exists()
  assert not list((tmp_path / "data").glob(".mine.partial-*"))  # no half-written build
