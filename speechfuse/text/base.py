"""The tokenizer protocol, its on-disk descriptor, and `load_tokenizer` for any saved kind.

Id convention, shared by every tokenizer (CTC and transducer losses rely on it):
- id 0 is the blank, and label batches are padded with it too (pad_id == blank_id). Padding is never
  read as a label because label lengths / masks carry the truth, and one reserved id keeps the output
  layer free of a class that is never a target.
- id 1 is unk: text the vocabulary cannot express becomes a real, trainable symbol distinct from blank.
  Every tokenizer counts what it mapped to unk in `oov_counts` (per instance, so per pipeline worker),
  for the pipeline to report; encoding never raises on unknown text.

On disk a tokenizer is a directory holding `tokenizer.json` ({"kind": <registered kind>, ...}) plus any
files its kind needs (the SentencePiece model), so it can live next to the run that uses it.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

from speechfuse.text.normalize import TextNormalizer

DESCRIPTOR = "tokenizer.json"
BLANK_ID = 0
UNK_ID = 1


@runtime_checkable
class Tokenizer(Protocol):
  """Text ⇄ label ids. `encode` normalises first, so decode(encode(x)) == normalizer(x) in vocabulary."""

  blank_id: int
  pad_id: int
  unk_id: int
  normalizer: TextNormalizer
  oov_counts: collections.Counter[str]

  @property
  def vocab_size(self) -> int:
    """Number of ids, blank and unk included: the size of the model's output layer."""

  def encode(self, text: str) -> list[int]:
    """Normalised `text` as label ids (never blank); unknown characters become unk and are counted."""

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`, skipping blank / pad, whitespace runs collapsed; unk shows as "⁇"."""

  def save(self, directory: str | os.PathLike) -> str:
    """Writes the descriptor (and model files) into `directory`; returns the descriptor's path."""


_KINDS: dict[str, Callable[[str, dict[str, Any]], Tokenizer]] = {}


def register(kind: str):
  """Class decorator: `load_tokenizer` builds descriptors of `kind` with `cls.from_descriptor`."""

  def decorator(cls):
    _KINDS[kind] = cls.from_descriptor
    return cls

  return decorator


def write_descriptor(directory: str | os.PathLike, kind: str, **fields: Any) -> str:
  """Writes `directory/tokenizer.json` = {"kind": kind, **fields} atomically; returns its path."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(os.fspath(directory), DESCRIPTOR)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"kind": kind, **fields}, f, indent=2, ensure_ascii=False)
    f.write("\n")
  os.replace(path + ".tmp", path)
  return path


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """Loads the tokenizer saved in directory `path` (or whose descriptor file is `path`), of any kind.

  Raises:
    FileNotFoundError / ValueError naming the descriptor when it is missing, not JSON, of an unknown
    kind, or lacks what its kind needs.
  """
  path = os.fspath(path)
  descriptor_path = path if os.path.isfile(path) else os.path.join(path, DESCRIPTOR)
  if not os.path.isfile(descriptor_path):
    raise FileNotFoundError(f"no tokenizer descriptor {descriptor_path!r}")
  try:
    with open(descriptor_path, encoding="utf-8") as f:
      descriptor = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"tokenizer descriptor {descriptor_path!r} is not valid JSON: {e}") from e
  kind = descriptor.pop("kind", None) if isinstance(descriptor, dict) else None
  if kind not in _KINDS:
    raise ValueError(f"tokenizer descriptor {descriptor_path!r} has kind {kind!r}; known: {sorted(_KINDS)}")
  try:
    return _KINDS[kind](os.path.dirname(descriptor_path), descriptor)
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"tokenizer descriptor {descriptor_path!r} is invalid: {e!r}") from e
