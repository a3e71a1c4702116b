"""Frame-level labels stored with a dataset (k-means targets of masked-prediction pre-training): layout, reading.

Labels `NAME` of the dataset at ROOT (a dataset rebuilt in place takes its labels with it):

  ROOT/labels/NAME/codebook.npz   centers [k, D] float32, the codebook the labels were made with
  ROOT/labels/NAME/<split>.npz    ids [n] str, labels [sum T] int16 (int32 for k > 32768) concatenated in
                                  record order, offsets [n + 1] int64, codebook (its `fingerprint`)
  ROOT/labels/NAME/info.json      k, features, grids, sample rate, fit settings, splits, codebook fingerprint;
                                  written last, so it names only labels that are complete

Labels are written by speechfuse.ssl.targets; tasks read them here. Every file is written atomically; a reader
refuses a split whose codebook is not the one info.json names (labels of one run mixed with another's codebook).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

LABELS_DIR = "labels"
CODEBOOK = "codebook.npz"
INFO = "info.json"


def labels_dir(dataset: str | os.PathLike, name: str) -> pathlib.Path:
  return pathlib.Path(dataset) / LABELS_DIR / name


def fingerprint(centers: np.ndarray) -> str:
  """sha256 of a codebook's float32 centres [k, D]: names the codebook in label files."""
  centers = np.ascontiguousarray(centers, np.float32)
  return hashlib.sha256(repr(centers.shape).encode() + centers.tobytes()).hexdigest()


def read_centers(path: str | os.PathLike) -> np.ndarray:
  """The centres [k, D] float32 of a codebook file."""
  with np.load(path, allow_pickle=False) as data:
    if "centers" not in data or data["centers"].ndim != 2:
      raise ValueError(f"{path} is not a k-means codebook: it needs a 2-D array 'centers'")
    return data["centers"].astype(np.float32)


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
  """np.savez to a temporary sibling, then renamed: readers see the old file or the whole new one."""
  path = os.fspath(path)
  tmp = f"{path}.tmp-{uuid.uuid4().hex}"
  try:
    with open(tmp, "wb") as f:  # A file object, so that numpy does not append ".npz" to the name.
      np.savez(f, **arrays)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_info(directory: pathlib.Path, info: Mapping[str, Any]) -> None:
  """Writes `directory`/info.json atomically."""
  path = directory / INFO
  tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
  tmp.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
  os.replace(tmp, path)


def read_info(directory: pathlib.Path) -> dict[str, Any]:
  return json.loads((directory / INFO).read_text())


def label_dtype(k: int) -> type:
  """The integer type labels of k classes are stored in."""
  return np.int16 if k <= np.iinfo(np.int16).max + 1 else np.int32


def labels_info(dataset: str | os.PathLike, name: str) -> dict[str, Any]:
  """info.json of the labels `name` of `dataset`, checked against its codebook file.

  Raises:
    FileNotFoundError: the dataset has no such labels.
    ValueError: the codebook is not the one info.json names (an interrupted labelling).
  """
  directory = labels_dir(dataset, name)
  if not (directory / INFO).is_file():
    raise FileNotFoundError(f"no labels {name!r} for dataset {dataset}: {directory / INFO} is missing")
  info = read_info(directory)
  if fingerprint(read_centers(directory / CODEBOOK)) != info["codebook"]:
    raise ValueError(f"{directory / CODEBOOK} is not the codebook {directory / INFO} names (a labelling "
                     "was interrupted); run it again")
  return info


def has_labels(dataset: str | os.PathLike, name: str, splits: tuple[str, ...]) -> bool:
  """Whether the labels `name` of `dataset` exist and cover `splits`."""
  if not (labels_dir(dataset, name) / INFO).is_file():
    return False
  return set(splits) <= set(labels_info(dataset, name)["splits"])


class Labels(Mapping[str, np.ndarray]):
  """One split's labels, by record id: `labels[id]` -> int [T] on the target grid; `labels.info` is info.json.

  Loads the split's labels into memory (2 bytes a frame) and pickles as its path, so that every grain worker
  reopens it.

  Raises (on opening):
    FileNotFoundError: no such labels or split.
    ValueError: the split was labelled with a codebook other than the one info.json names.
  """

  def __init__(self, dataset: str | os.PathLike, name: str, split: str):
    self._args = (dataset, name, split)
    directory = labels_dir(dataset, name)
    self.info = labels_info(dataset, name)
    path = directory / f"{split}.npz"
    if split not in self.info["splits"] or not path.is_file():
      raise FileNotFoundError(f"labels {directory} have no split {split!r} (labelled: {self.info['splits']})")
    with np.load(path, allow_pickle=False) as data:
      if str(data["codebook"]) != self.info["codebook"]:
        raise ValueError(f"{path} was labelled with codebook {str(data['codebook'])[:12]}, not the "
                         f"{self.info['codebook'][:12]} of {directory / INFO}; label the split again")
      self._labels, self._offsets = data["labels"], data["offsets"]
      self._rows = {record_id: row for row, record_id in enumerate(data["ids"].tolist())}

  def __getitem__(self, record_id: str) -> np.ndarray:
    row = self._rows[record_id]
    return self._labels[self._offsets[row]:self._offsets[row + 1]]

  def __len__(self) -> int:
    return len(self._rows)

  def __iter__(self) -> Iterator[str]:
    return iter(self._rows)

  def __reduce__(self):
    return Labels, self._args


def open_labels(dataset: str | os.PathLike, name: str, split: str) -> Labels:
  """Random access to the labels `name` of one split of `dataset`."""
  return Labels(dataset, name, split)
