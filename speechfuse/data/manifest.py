"""Corpora on disk -> records of the schema: manifests (JSONL, TSV), AV-HuBERT TSVs, LibriSpeech.

A manifest lists utterances, one per line. JSONL: one object per line. TSV: a header line naming the
columns, then tab-separated values (empty cell = absent). Keys / columns:

  id               required  unique utterance id
  audio            required  audio file (anything libsndfile reads); relative paths are relative to
                             the manifest's directory
  text             required  transcript
  speaker          required  speaker label
  offset           optional  seconds into `audio` where the utterance starts (MuST-C: segments of a talk)
  duration         optional  seconds from `offset`; absent: to the end of the file
  translation      optional  target-language text (MuST-C: the .de/.es/... line of the segment)
  phonemes         optional  space-separated phone symbols
  phoneme_timings  optional  JSONL only: [[start, end], ...] seconds, one per phone
  word_timings     optional  JSONL only: [[start, end], ...] seconds, one per word of `text`
  video            optional  frames as a .npy file holding uint8 [frames, h, w] or [frames, h, w, 3]
  video_fps        optional  frames per second of `video`

This is the documented way in for MuST-C and in-house data. LRS3 prepared for AV-HuBERT is read as
it is: a TSV whose first line is a root directory, then rows `id video audio n_video_frames
n_audio_samples` (paths relative to the root), with transcripts from a separate file of `id text`
lines; the speaker is the YouTube video id (the id's second-to-last path part), video at 25 fps.
LibriSpeech is read from its own layout: `<root>/<split>/<speaker>/<chapter>/` holding
`<speaker>-<chapter>.trans.txt` (lines `<id> <TEXT>`) and `<id>.flac`.

Readers return `Entry`s (and `BadRecord`s for lines that cannot be used); `load_examples` reads the
audio and yields schema records, or a `BadRecord` with reason "unreadable audio: <error>".
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import itertools
import json
import multiprocessing
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from speechfuse.audio import io as audio_io
from speechfuse.data import schema
from speechfuse.data.storage import BadRecord

REQUIRED_COLUMNS = ("id", "audio", "text", "speaker")
OPTIONAL_COLUMNS = ("offset", "duration", "translation", "phonemes", "phoneme_timings", "word_timings",
                    "video", "video_fps")
LRS3_VIDEO_FPS = 25.0


@dataclasses.dataclass(frozen=True)
class Entry:
  """One utterance listed in a manifest, before its audio is read."""
  id: str
  audio: pathlib.Path
  text: str
  speaker: str
  offset: float = 0.0  # seconds into `audio`
  duration: float | None = None  # seconds from `offset`; None: to the end of the file
  translation: str | None = None
  phonemes: str | None = None
  phoneme_timings: list[list[float]] | None = None  # [n_phonemes, 2] start/end seconds
  word_timings: list[list[float]] | None = None  # [n_words, 2] start/end seconds
  video: pathlib.Path | None = None
  video_fps: float | None = None


class ManifestError(ValueError):
  """A manifest that cannot be read as a whole (bad header, unknown column); names the file."""


def read_manifest(path: str | os.PathLike, *, transcripts: str | os.PathLike | None = None,
                  ) -> list[Entry | BadRecord]:
  """Reads a JSONL (.jsonl / .json) or TSV (.tsv) manifest; an AV-HuBERT TSV needs `transcripts`."""
  path = pathlib.Path(path)
  if path.suffix in (".jsonl", ".json"):
    return read_jsonl(path)
  if path.suffix != ".tsv":
    raise ManifestError(f"{path}: unknown manifest format; expected .jsonl or .tsv")
  with open(path, encoding="utf-8") as f:
    first_line = f.readline().rstrip("\n")
  if "\t" in first_line:
    return read_tsv(path)
  if transcripts is None:
    raise ManifestError(f"{path} is an AV-HuBERT TSV (its first line is a root directory): "
                        "it needs a transcripts file of `id text` lines")
  return read_avhubert_tsv(path, transcripts)


def read_jsonl(path: str | os.PathLike) -> list[Entry | BadRecord]:
  """One JSON object per line with the keys of the module docstring; blank lines are ignored."""
  path = pathlib.Path(path)
  entries = []
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        entries.append(BadRecord(f"{path.name}:{line_number}", f"bad manifest line: {e}"))
        continue
      if not isinstance(row, dict):
        entries.append(BadRecord(f"{path.name}:{line_number}", "bad manifest line: not a JSON object"))
        continue
      _check_columns(row, path, line_number)
      entries.append(_entry(row, path.parent, f"{path.name}:{line_number}"))
  return entries


def read_tsv(path: str | os.PathLike) -> list[Entry | BadRecord]:
  """A header line of column names, then one tab-separated row per utterance."""
  path = pathlib.Path(path)
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    if header is None:
      raise ManifestError(f"{path}: empty manifest")
    _check_columns(dict.fromkeys(header), path, 1)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
      raise ManifestError(f"{path}: header lacks required columns {missing}; it has {header}")
    for column in ("phoneme_timings", "word_timings"):
      if column in header:
        raise ManifestError(f"{path}: column {column!r} is only read from JSONL manifests")
    entries = []
    for line_number, cells in enumerate(reader, 2):
      if not any(cells):
        continue
      where = f"{path.name}:{line_number}"
      if len(cells) != len(header):
        entries.append(BadRecord(cells[0] or where, f"bad manifest line: {len(cells)} cells for "
                                 f"{len(header)} columns"))
        continue
      # An empty cell is an absent value, except an empty transcript: that is a bad record.
      row = {column: cell for column, cell in zip(header, cells) if cell != "" or column == "text"}
      entries.append(_entry(row, path.parent, where))
  return entries


def read_transcripts(path: str | os.PathLike) -> dict[str, str]:
  """Lines `id text` (split at the first whitespace) -> {id: text}."""
  transcripts = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      parts = line.strip().split(maxsplit=1)
      if parts:
        transcripts[parts[0]] = parts[1] if len(parts) > 1 else ""
  return transcripts


def read_avhubert_tsv(path: str | os.PathLike, transcripts: str | os.PathLike) -> list[Entry | BadRecord]:
  """An AV-HuBERT TSV (root line, then `id video audio n_video_frames n_audio_samples`) + transcripts."""
  path = pathlib.Path(path)
  texts = read_transcripts(transcripts)
  entries = []
  with open(path, encoding="utf-8") as f:
    root = path.parent / f.readline().strip()
    for line_number, line in enumerate(f, 2):
      if not line.strip():
        continue
      cells = line.rstrip("\n").split("\t")
      if len(cells) != 5:
        entries.append(BadRecord(cells[0] or f"{path.name}:{line_number}",
                                 f"bad manifest line: {len(cells)} cells, expected 5"))
        continue
      utterance_id, video, audio = cells[:3]
      if utterance_id not in texts:
        entries.append(BadRecord(utterance_id, f"missing transcript: not in {transcripts}"))
        continue
      parts = utterance_id.split("/")
      entries.append(Entry(
          id=utterance_id, audio=root / audio, text=texts[utterance_id],
          speaker=parts[-2] if len(parts) > 1 else utterance_id,
          video=root / video, video_fps=LRS3_VIDEO_FPS))
  return entries


def librispeech_splits(root: str | os.PathLike) -> list[str]:
  """The split directories under a LibriSpeech root (those holding <speaker>/<chapter>/*.trans.txt)."""
  root = pathlib.Path(root)
  return sorted(d.name for d in root.iterdir() if d.is_dir() and next(d.glob("*/*/*.trans.txt"), None))


def read_librispeech(root: str | os.PathLike, split: str) -> list[Entry | BadRecord]:
  """The utterances of `root/split` in the LibriSpeech layout, ordered by speaker, chapter, utterance.

  A listed utterance whose .flac is missing becomes unreadable audio when loaded; a .flac with no
  transcript line is a BadRecord "missing transcript".
  """
  split_dir = pathlib.Path(root) / split
  if not split_dir.is_dir():
    raise FileNotFoundError(f"no LibriSpeech split directory {split_dir}")
  entries: list[Entry | BadRecord] = []
  for transcript_file in sorted(split_dir.glob("*/*/*.trans.txt")):
    chapter_dir = transcript_file.parent
    texts = read_transcripts(transcript_file)
    for utterance_id, text in texts.items():
      entries.append(Entry(id=utterance_id, audio=chapter_dir / f"{utterance_id}.flac", text=text,
                           speaker=utterance_id.split("-")[0]))
    for flac in sorted(chapter_dir.glob("*.flac")):
      if flac.stem not in texts:
        entries.append(BadRecord(flac.stem, f"missing transcript: not in {transcript_file.name}"))
  return entries


def present_fields(entries: Sequence[Entry | BadRecord]) -> tuple[str, ...]:
  """The optional schema fields that at least one entry provides (a dataset declaring them needs
  them in every record, so entries lacking one become bad records)."""
  fields = {f for e in entries if isinstance(e, Entry) for f in schema.OPTIONAL_FIELDS
            if getattr(e, f) is not None}
  return schema.check_optional_fields(sorted(fields))


def load_examples(
    entries: Sequence[Entry | BadRecord],
    *,
    sample_rate: int = 16000,
    resample: bool = False,
    optional_fields: Sequence[str] = (),
    num_workers: int = 0,
) -> Iterator[dict[str, Any] | BadRecord]:
  """Reads the audio (and video) of `entries`; yields schema records in the entries' order.

  Args:
    entries: from one of the readers; BadRecords pass through.
    sample_rate: the dataset's rate. Audio at another rate is resampled if `resample`, otherwise
      yielded as is, for `write_dataset` to reject as "unexpected sample rate".
    optional_fields: the optional fields to fill from the entries.
    num_workers: decode in this many processes (0: in this one).
  """
  # Consecutive entries on one file (segments of a talk) share one read of that file.
  groups = [list(g) for _, g in itertools.groupby(
      entries, key=lambda e: ("bad", id(e)) if isinstance(e, BadRecord) else ("audio", e.audio))]
  load = functools.partial(
      _load_group, target_rate=sample_rate if resample else None, optional_fields=tuple(optional_fields))
  if num_workers <= 0:
    for group in groups:
      yield from load(group)
    return
  # spawn, not fork: the parent may hold JAX threads, which forking deadlocks.
  with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
    for records in pool.imap(load, groups, chunksize=8):
      yield from records


def _load_group(group: list[Entry | BadRecord], target_rate: int | None,
                optional_fields: tuple[str, ...]) -> list[dict[str, Any] | BadRecord]:
  """The records of entries that all share one audio file (or one BadRecord)."""
  if isinstance(group[0], BadRecord):
    return group
  try:
    waveform, rate = audio_io.read_audio(group[0].audio, target_rate)
  except audio_io.AudioReadError as e:
    return [BadRecord(entry.id, f"unreadable audio: {e}") for entry in group]
  return [_record(entry, waveform, rate, optional_fields) for entry in group]


def _record(entry: Entry, waveform: np.ndarray, rate: int, optional_fields: tuple[str, ...],
            ) -> dict[str, Any] | BadRecord:
  """The schema record of `entry`, cutting its segment out of the file's `waveform` [samples]."""
  start = round(entry.offset * rate)
  stop = waveform.size if entry.duration is None else start + round(entry.duration * rate)
  if start < 0 or stop > waveform.size or stop <= start:
    return BadRecord(entry.id, f"segment outside audio: {entry.offset} s + {entry.duration} s > "
                     f"{waveform.size / rate:.2f} s in {entry.audio}")
  audio = schema.waveform_to_int16(waveform[start:stop])
  record: dict[str, Any] = {"id": entry.id, "audio": audio, "sample_rate": rate, "text": entry.text,
                            "speaker": entry.speaker, "duration": audio.size / rate}
  for field in ("translation", "phonemes"):
    if field in optional_fields and getattr(entry, field) is not None:
      record[field] = getattr(entry, field)
  for field in ("phoneme_timings", "word_timings"):
    if field in optional_fields and getattr(entry, field) is not None:
      record[field] = np.asarray(getattr(entry, field), dtype=np.float32)
  if "video" in optional_fields and entry.video is not None:
    try:
      record["video"] = _read_video(entry.video)
    except (OSError, ValueError) as e:
      return BadRecord(entry.id, f"unreadable video: {e}")
    if entry.video_fps is not None:
      record["video_fps"] = entry.video_fps
  return record


def _read_video(path: pathlib.Path) -> np.ndarray:
  """uint8 frames [frames, h, w] or [frames, h, w, 3] from a .npy file."""
  if path.suffix != ".npy":
    raise ValueError(f"cannot decode {os.fspath(path)!r}: video is read from .npy frame arrays "
                     "(uint8 [frames, h, w] or [frames, h, w, 3]); convert it first")
  return np.load(path, allow_pickle=False)


def _check_columns(row: Mapping[str, Any], path: pathlib.Path, line_number: int) -> None:
  unknown = sorted(set(row) - set(REQUIRED_COLUMNS) - set(OPTIONAL_COLUMNS))
  if unknown:
    raise ManifestError(f"{path}:{line_number}: unknown columns {unknown}; known: "
                        f"{list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}")


def _entry(row: Mapping[str, Any], base_dir: pathlib.Path, where: str) -> Entry | BadRecord:
  """An Entry from a manifest row (strings or JSON values), or why the row cannot be one."""
  record_id = str(row.get("id") or where)
  # An empty transcript is a bad record of its own kind, found by schema.check_example.
  missing = [c for c in REQUIRED_COLUMNS if row.get(c) is None or (c != "text" and row[c] == "")]
  if missing:
    return BadRecord(record_id, f"bad manifest line: missing {', '.join(missing)}")
  try:
    return Entry(
        id=record_id,
        audio=base_dir / str(row["audio"]),
        text=str(row["text"]),
        speaker=str(row["speaker"]),
        offset=float(row.get("offset", 0.0)),
        duration=float(row["duration"]) if row.get("duration") is not None else None,
        translation=row.get("translation"),
        phonemes=row.get("phonemes"),
        phoneme_timings=row.get("phoneme_timings"),
        word_timings=row.get("word_timings"),
        video=base_dir / str(row["video"]) if row.get("video") else None,
        video_fps=float(row["video_fps"]) if row.get("video_fps") is not None else None,
    )
  except (TypeError, ValueError) as e:
    return BadRecord(record_id, f"bad manifest line: {e}")
