"""Tests of the speechfuse-prepare command line."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import soundfile

from speechfuse.data import prepare, storage

RATE = 16000


def _write_audio(path: pathlib.Path, seconds: float, rate: int = RATE) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  pcm = np.random.default_rng(len(path.name)).integers(-9000, 9000, size=round(seconds * rate), dtype=np.int16)
  soundfile.write(path, pcm, rate, subtype="PCM_16")


def _librispeech(root: pathlib.Path) -> None:
  for split, speaker in (("dev-clean", "84"), ("test-clean", "121")):
    chapter_dir = root / split / speaker / "1000"
    lines = []
    for n in range(3):
      utterance_id = f"{speaker}-1000-{n:04d}"
      lines.append(f"{utterance_id} SOME WORDS")
      # The last utterance of test-clean is 8 kHz: a bad record unless resampled.
      _write_audio(chapter_dir / f"{utterance_id}.flac", 0.5, 8000 if split == "test-clean" and n == 2 else RATE)
    (chapter_dir / f"{speaker}-1000.trans.txt").write_text("\n".join(lines) + "\n")


def test_librispeech_command_prints_the_summary(tmp_path, capsys):
  _librispeech(tmp_path / "LibriSpeech")
  assert prepare.main(["librispeech", str(tmp_path / "LibriSpeech"), "--out", str(tmp_path / "data")]) == 0
  out = capsys.readouterr().out
  table = [line.split() for line in out.splitlines()]
  assert ["dev-clean", "3", "0.000", "1", "0"] in table
  assert ["test-clean", "2", "0.000", "1", "1"] in table
  assert f"report: {tmp_path / 'data' / 'librispeech' / 'report.md'}" in out
  bad = storage.bad_records(tmp_path / "data" / "librispeech")
  assert bad == [{"id": "121-1000-0002", "split": "test-clean",
                  "reason": "unexpected sample rate: 8000 Hz, expected 16000 Hz"}]

  prepare.main(["librispeech", str(tmp_path / "LibriSpeech"), "--out", str(tmp_path / "data"),
                "--name", "libri_resampled", "--splits", "test-clean", "--resample"])
  info = storage.dataset_info(tmp_path / "data" / "libri_resampled")
  assert list(info["splits"]) == ["test-clean"] and info["splits"]["test-clean"]["num_examples"] == 3


def test_no_skip_bad_stops_with_the_record_named(tmp_path, capsys):
  _librispeech(tmp_path / "LibriSpeech")
  with pytest.raises(SystemExit) as exit_info:
    prepare.main(["librispeech", str(tmp_path / "LibriSpeech"), "--out", str(tmp_path / "data"),
                  "--no-skip-bad"])
  assert exit_info.value.code == 1
  assert "bad record '121-1000-0002': unexpected sample rate" in capsys.readouterr().err
  assert not storage.is_complete(tmp_path / "data" / "librispeech")


def test_manifest_command_names_splits_and_keeps_translations(tmp_path, capsys):
  _write_audio(tmp_path / "a.wav", 0.4)
  _write_audio(tmp_path / "bb.wav", 0.6)
  row = {"id": "a", "audio": "a.wav", "text": "hi", "speaker": "s", "translation": "salut"}
  (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
  (tmp_path / "eval.tsv").write_text("id\taudio\ttext\tspeaker\ttranslation\nb\tbb.wav\tyo\tt\tyo\n")
  prepare.main(["manifest", str(tmp_path / "train.jsonl"), f"{tmp_path / 'eval.tsv'}:dev",
                "--name", "mustc_like", "--out", str(tmp_path / "data")])
  assert "report:" in capsys.readouterr().out
  path = tmp_path / "data" / "mustc_like"
  assert storage.dataset_info(path)["optional_fields"] == ["translation"]
  assert storage.open_split(path, "dev")[0]["translation"] == "yo"
  assert storage.open_split(path, "train")[0]["translation"] == "salut"

  with pytest.raises(SystemExit):
    prepare.main(["manifest", str(tmp_path / "train.jsonl"), f"{tmp_path / 'eval.tsv'}:train",
                  "--name", "twice", "--out", str(tmp_path / "data")])
  assert "split 'train' named twice" in capsys.readouterr().err
