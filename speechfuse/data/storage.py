"""Datasets on disk: written once through tfds as ArrayRecord files, read back by random access.

Layout of a dataset `ROOT/NAME/` (the path `write_dataset` returns and the readers take):

  NAME/1.0.0/                  tfds directory: dataset_info.json, features.json and
                               NAME-<split>.array_record-<shard>-of-<shards> per split
  NAME/index/<split>.npz       per record, in record order: id, num_samples, text (`SplitSource.metadata`):
                               what a pipeline plans batches from without reading any audio
  NAME/report.json             summary (splits with examples, hours, speakers, skipped records per
                               reason) and every skipped record as {id, split, reason}
  NAME/report.md               the same for people
  NAME/COMPLETE.json           {"fingerprint": ...}; written last

A dataset is built in a hidden sibling `ROOT/.NAME.partial-*` and renamed to `ROOT/NAME` only once
complete, so a preparation killed half-way leaves nothing that `is_complete` or `open_split`
accepts; the next `write_dataset` of that name deletes the leftover. A lock file `ROOT/.NAME.lock`
keeps two processes from building the same dataset at once.

Records follow `speechfuse.data.schema`. Reading imports neither TensorFlow nor the builder module.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from speechfuse.data import schema

VERSION_DIR = "1.0.0"  # = tfds_builder.VERSION, repeated so that reading does not import the builder.
MARKER = "COMPLETE.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
INDEX_DIR = "index"

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # What tfds accepts as a dataset directory name.
_SPLIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # Split names become part of file names.


class BadRecord(NamedTuple):
  """What a split generator yields instead of a record it could not produce (e.g. unreadable audio)."""
  id: str
  reason: str  # "<kind>" or "<kind>: <detail>", as schema.check_example


class BadRecordError(ValueError):
  """A bad record met while skipping is disabled; the message names the record, split and reason."""


class IncompleteDatasetError(FileNotFoundError):
  """A path that holds no complete dataset (missing, or its preparation never finished)."""


@dataclasses.dataclass
class _SplitStats:
  """Running totals of one split while it is written."""
  num_examples: int = 0
  seconds: float = 0.0
  speakers: set[str] = dataclasses.field(default_factory=set)
  skipped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
  bad_records: list[dict[str, str]] = dataclasses.field(default_factory=list)
  # The split's index (see `SplitSource.metadata`), one entry per written record, in record order.
  ids: list[str] = dataclasses.field(default_factory=list)
  num_samples: list[int] = dataclasses.field(default_factory=list)
  texts: list[str] = dataclasses.field(default_factory=list)

  def summary(self) -> dict[str, Any]:
    return {
        "num_examples": self.num_examples,
        "hours": self.seconds / 3600,
        "speakers": len(self.speakers),
        "skipped": dict(sorted(self.skipped.items())),
    }


def write_dataset(
    root: str | os.PathLike,
    name: str,
    splits: Mapping[str, Callable[[], Iterable[dict[str, Any] | BadRecord]]],
    *,
    optional_fields: Sequence[str] = (),
    video_channels: int = 1,
    expected_sample_rate: int = 16000,
    min_duration: float = 0.1,
    max_duration: float = 30.0,
    skip_bad: bool = True,
    fingerprint: str | None = None,
    description: str = "",
    sources: Mapping[str, str] | None = None,
) -> pathlib.Path:
  """Writes a dataset to `root/name`, replacing any previous one of that name; returns that path.

  Args:
    root: the data directory; created if missing.
    name: dataset name, lower_snake_case.
    splits: split name -> callable returning an iterable of records (dicts of the schema with the
      declared optional fields) or `BadRecord`s. Each is called once and drained before the next,
      in the order of `splits`; records keep their order.
    optional_fields: optional schema fields every record of this dataset carries.
    video_channels: 1 (grayscale) or 3 (RGB), when "video" is among `optional_fields`.
    expected_sample_rate, min_duration, max_duration: records outside these are bad.
    skip_bad: skip bad records (counted per reason and listed in the report); if False, the first
      bad record raises `BadRecordError` and nothing is written.
    fingerprint: stored in the completion marker for `is_complete(path, fingerprint)`.
    description: stored in the tfds dataset info.
    sources: split -> where its records come from (a manifest file), named in errors.

  Raises:
    BadRecordError: a bad record while `skip_bad` is False.
    ValueError: an invalid name, split name or field declaration; a split left without records (the message
      names the split's source and its first bad record, and `root/<name>.rejected.md` lists every one; nothing
      of the dataset is written).
  """
  if not _NAME.match(name):
    raise ValueError(f"dataset name {name!r} must be lower_snake_case (a-z, 0-9, _), starting with a letter")
  if not splits:
    raise ValueError(f"dataset {name!r}: no splits given")
  for split in splits:
    if not _SPLIT.match(split):
      raise ValueError(f"dataset {name!r}: split name {split!r} may hold only letters, digits, '_' and '-'")
  optional_fields = schema.check_optional_fields(optional_fields, video_channels)
  features = schema.features(optional_fields, video_channels)
  stats = {split: _SplitStats() for split in splits}

  def checked(split: str) -> Iterator[dict[str, Any]]:
    """The valid records of one split; bad ones are counted, or raise when not skipped."""
    split_stats, seen_ids = stats[split], set()
    for index, item in enumerate(splits[split]()):
      if isinstance(item, BadRecord):
        record_id, reason = item
      else:
        record_id = str(item.get("id", f"<record {index}>"))
        reason = schema.check_example(
            item, expected_sample_rate=expected_sample_rate, min_duration=min_duration,
            max_duration=max_duration, optional_fields=optional_fields, video_channels=video_channels)
        if reason is None and record_id in seen_ids:
          reason = "duplicate id"
      if reason is not None:
        if not skip_bad:
          raise BadRecordError(f"dataset {name!r}, split {split!r}: bad record {record_id!r}: {reason}")
        split_stats.skipped[schema.reason_kind(reason)] += 1
        split_stats.bad_records.append({"id": record_id, "split": split, "reason": reason})
        continue
      seen_ids.add(record_id)
      split_stats.num_examples += 1
      split_stats.seconds += float(item["duration"])
      split_stats.speakers.add(item["speaker"])
      split_stats.ids.append(record_id)
      split_stats.num_samples.append(len(item["audio"]))
      split_stats.texts.append(item["text"])
      yield item
    if not split_stats.num_examples:
      source = f" (from {sources[split]})" if sources and split in sources else ""
      if not split_stats.bad_records:
        raise ValueError(f"dataset {name!r}, split {split!r}{source}: no records")
      report = _write_rejection(pathlib.Path(root), name, split_stats.bad_records)
      first = split_stats.bad_records[0]
      raise ValueError(f"dataset {name!r}, split {split!r}{source}: no valid records; all "
                       f"{len(split_stats.bad_records)} skipped ({dict(split_stats.skipped)}), the first, "
                       f"{first['id']!r}: {first['reason']}; every one is listed in {report}")

  # Imported here: readers of a dataset must not need the builder module.
  from speechfuse.data import tfds_builder  # pylint: disable=g-import-not-at-top

  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  final = root / name
  with _build_lock(root, name):
    _remove_leftovers(root, name)
    if final.exists() and not (final / MARKER).exists():
      raise FileExistsError(f"refusing to replace {final}: it exists but is not a speechfuse dataset")
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root))
    try:
      builder = tfds_builder.make_builder(
          name, data_dir=os.fspath(staging), features=features, description=description,
          splits={split: lambda split=split: checked(split) for split in splits})
      builder.download_and_prepare()
      built = staging / name
      for split, split_stats in stats.items():
        _write_index(built, split, split_stats, builder.info.splits[split].num_examples)
      report = {
          "name": name,
          "fingerprint": fingerprint,
          "description": description,
          "sample_rate": expected_sample_rate,
          "min_duration": min_duration,
          "max_duration": max_duration,
          "optional_fields": list(optional_fields),
          "video_channels": video_channels if "video" in optional_fields else None,
          "splits": {split: s.summary() for split, s in stats.items()},
          "total_hours": sum(s.seconds for s in stats.values()) / 3600,
          "speakers": len(set().union(*(s.speakers for s in stats.values()))),
          "bad_records": [bad for s in stats.values() for bad in s.bad_records],
      }
      (built / REPORT_JSON).write_text(json.dumps(report, indent=1) + "\n")
      (built / REPORT_MD).write_text(_report_markdown(report))
      (built / MARKER).write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
      _swap_into_place(built, final)
    finally:
      shutil.rmtree(staging, ignore_errors=True)
  return final


def is_complete(path: str | os.PathLike, fingerprint: str | None = None) -> bool:
  """Whether `path` holds a finished dataset (built from `fingerprint`, when one is given)."""
  marker = pathlib.Path(path) / MARKER
  if not marker.is_file():
    return False
  return fingerprint is None or json.loads(marker.read_text()).get("fingerprint") == fingerprint


def dataset_info(path: str | os.PathLike) -> dict[str, Any]:
  """Summary of a dataset: name, fingerprint, sample_rate, optional_fields, total_hours, speakers
  (distinct over all splits) and splits: {split: {num_examples, hours, speakers, skipped: {kind: n}}}.
  """
  path = _require_complete(path)
  report = json.loads((path / REPORT_JSON).read_text())
  del report["bad_records"]
  return {**report, "path": os.fspath(path), "report": os.fspath(path / REPORT_MD)}


def bad_records(path: str | os.PathLike) -> list[dict[str, str]]:
  """Every record skipped while writing the dataset, as {"id", "split", "reason"}."""
  return json.loads((_require_complete(path) / REPORT_JSON).read_text())["bad_records"]


class SplitSource:
  """Random access to one split: `len(source)`, `source[i]` -> record dict.

  Text fields come back as str, arrays as numpy (audio int16 [samples]), scalars as numbers.
  Implements grain's RandomAccessDataSource protocol and pickles as (path, split): each grain
  worker process reopens the files itself.
  """

  def __init__(self, path: str | os.PathLike, split: str):
    self.path = _require_complete(path)
    self.split = split
    self._source, self._text_fields = _open_tfds_split(self.path, split)

  def __len__(self) -> int:
    return len(self._source)

  def metadata(self) -> dict[str, Any]:
    """The split's index, read from one small file without touching the audio records.

    Returns:
      {"id": list[str], "num_samples": int64 [N], "text": list[str]}, entry i describing `self[i]`.

    Raises:
      FileNotFoundError: the dataset was written before datasets stored an index.
    """
    index_path = self.path / INDEX_DIR / f"{self.split}.npz"
    if not index_path.is_file():
      # A fallback that reads every record would cost a silent pass over the audio on every host at every
      # start; writing the dataset again is a one-off, and explicit.
      raise FileNotFoundError(
          f"dataset {self.path} has no index {index_path}: it was written before datasets stored one; write "
          f"it again with speechfuse-prepare (the built-in corpus rebuilds itself)")
    with np.load(index_path, allow_pickle=False) as index:
      return {"id": _unpack_strings(index["id_bytes"], index["id_offsets"]),
              "num_samples": index["num_samples"],
              "text": _unpack_strings(index["text_bytes"], index["text_offsets"])}

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self._source[index]
    for field in self._text_fields:
      record[field] = record[field].decode("utf-8")
    return record

  def __getstate__(self) -> dict[str, Any]:
    return {"path": self.path, "split": self.split}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.path, self.split = state["path"], state["split"]
    self._source, self._text_fields = _open_tfds_split(self.path, self.split)

  def __repr__(self) -> str:
    return f"SplitSource(path={os.fspath(self.path)!r}, split={self.split!r})"


def open_split(path: str | os.PathLike, split: str) -> SplitSource:
  """Opens one split of the dataset at `path` (as returned by `write_dataset`) for random access."""
  return SplitSource(path, split)


def _write_index(built: pathlib.Path, split: str, stats: _SplitStats, num_written: int) -> None:
  """Writes `built/index/<split>.npz`: num_samples int64 [N], ids and texts as UTF-8 bytes + offsets.

  Strings are packed rather than stored as a numpy str array, whose fixed width (4 bytes per character
  of the longest transcript, for every row) would blow up for long utterances.
  """
  if len(stats.ids) != num_written:
    raise RuntimeError(f"split {split!r}: tfds wrote {num_written} records, the index holds {len(stats.ids)}")
  id_bytes, id_offsets = _pack_strings(stats.ids)
  text_bytes, text_offsets = _pack_strings(stats.texts)
  (built / INDEX_DIR).mkdir(exist_ok=True)
  np.savez(built / INDEX_DIR / f"{split}.npz", num_samples=np.asarray(stats.num_samples, np.int64),
           id_bytes=id_bytes, id_offsets=id_offsets, text_bytes=text_bytes, text_offsets=text_offsets)


def _pack_strings(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """strings → (uint8 [total bytes] UTF-8, int64 [len + 1] offsets): string i is bytes[offsets[i]:offsets[i+1]]."""
  encoded = [string.encode("utf-8") for string in strings]
  offsets = np.zeros(len(encoded) + 1, np.int64)
  np.cumsum([len(b) for b in encoded], out=offsets[1:])
  return np.frombuffer(b"".join(encoded), np.uint8), offsets


def _unpack_strings(data: np.ndarray, offsets: np.ndarray) -> list[str]:
  raw = data.tobytes()
  return [raw[start:end].decode("utf-8") for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def _open_tfds_split(path: pathlib.Path, split: str) -> tuple[Any, list[str]]:
  """The tfds random-access source of one split, and the names of its text (bytes) features."""
  builder = tfds.builder_from_directory(os.fspath(path / VERSION_DIR))
  if split not in builder.info.splits:
    raise KeyError(f"dataset {path} has no split {split!r}; it has {sorted(builder.info.splits)}")
  text_fields = [k for k, f in builder.info.features.items() if isinstance(f, tfds.features.Text)]
  return builder.as_data_source(split=split), text_fields


def _require_complete(path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  if not is_complete(path):
    reason = "does not exist" if not path.exists() else f"has no {MARKER} (its preparation did not finish)"
    raise IncompleteDatasetError(f"no complete speechfuse dataset at {path}: it {reason}; prepare it again")
  return path


@contextlib.contextmanager
def _build_lock(root: pathlib.Path, name: str) -> Iterator[None]:
  """Holds an exclusive lock on `root/.name.lock`; the OS releases it if the process dies."""
  with open(root / f".{name}.lock", "w") as lock_file:
    fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock_file, fcntl.LOCK_UN)


def _remove_leftovers(root: pathlib.Path, name: str) -> None:
  """Deletes staging directories of killed preparations (safe: we hold the build lock)."""
  for leftover in root.glob(f".{name}.partial-*"):
    shutil.rmtree(leftover, ignore_errors=True)


def _swap_into_place(built: pathlib.Path, final: pathlib.Path) -> None:
  """Renames `built` to `final`, first moving a previous dataset aside and then deleting it."""
  old = final.with_name(f".{final.name}.partial-old-{uuid.uuid4().hex}")
  if final.exists():
    os.rename(final, old)
  os.rename(built, final)
  shutil.rmtree(old, ignore_errors=True)


def _write_rejection(root: pathlib.Path, name: str, bad: Sequence[Mapping[str, str]]) -> pathlib.Path:
  """`root/<name>.rejected.md`: the records of a dataset that could not be written, and why."""
  root.mkdir(parents=True, exist_ok=True)
  path = root / f"{name}.rejected.md"
  lines = [f"# Dataset `{name}` was not written: a split has no valid record", "", "| split | record | reason |",
           "|---|---|---|"] + [f"| {b['split']} | {b['id']} | {b['reason']} |" for b in bad]
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("\n".join(lines) + "\n")
  os.replace(tmp, path)
  return path


def _report_markdown(report: dict[str, Any]) -> str:
  """report.json as a page: a table per split, then every skipped record."""
  lines = [
      f"# Dataset `{report['name']}`", "",
      f"fingerprint: `{report['fingerprint']}`; sample rate {report['sample_rate']} Hz; "
      f"durations kept in [{report['min_duration']}, {report['max_duration']}] s; "
      f"optional fields: {', '.join(report['optional_fields']) or 'none'}", "",
      "| split | examples | hours | speakers | skipped |", "|---|---:|---:|---:|---:|",
  ]
  for split, s in report["splits"].items():
    lines.append(f"| {split} | {s['num_examples']} | {s['hours']:.3f} | {s['speakers']} | "
                 f"{sum(s['skipped'].values())} |")
  lines += ["", f"Total: {report['total_hours']:.3f} hours, {report['speakers']} speakers.", ""]
  bad = report["bad_records"]
  if not bad:
    return "\n".join(lines + ["No records were skipped.", ""])
  kinds = collections.Counter(schema.reason_kind(b["reason"]) for b in bad)
  lines += ["## Skipped records", "", "| reason | count |", "|---|---:|"]
  lines += [f"| {kind} | {count} |" for kind, count in kinds.most_common()]
  lines += ["", "| split | id | reason |", "|---|---|---|"]
  lines += [f"| {b['split']} | `{b['id']}` | {b['reason'].replace('|', '/')} |" for b in bad]
  return "\n".join(lines + [""])
