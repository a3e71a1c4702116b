"""Character tokenizer: one id per character, the space standing for the word boundary."""

from __future__ import annotations

import collections
import os
import string
from collections.abc import Iterable, Sequence
from typing import Any

from speechfuse.text import base
from speechfuse.text.normalize import TextNormalizer

UNK_TEXT = "\u2047"  # "⁇", as SentencePiece decodes unk


def default_alphabet(normalizer: TextNormalizer) -> str:
  """What `normalizer` can emit for English: space, apostrophe (if kept), a-z in its case, digits (if kept)."""
  letters = string.ascii_uppercase if normalizer.case == "upper" else string.ascii_lowercase
  apostrophe = "'" if normalizer.keep_apostrophes else ""
  digits = string.digits if normalizer.digits == "keep" else ""
  return " " + apostrophe + letters + digits


@base.register("char")
class CharTokenizer:
  """Characters as ids: 0 blank (and pad), 1 unk, then `alphabet` in order from id 2.

  The alphabet's space (" ") is the word-boundary symbol, so decoding is a plain join.
  """

  blank_id = base.BLANK_ID
  pad_id = base.BLANK_ID
  unk_id = base.UNK_ID

  def __init__(self, alphabet: Sequence[str] | None = None, normalizer: TextNormalizer | None = None):
    """Builds the vocabulary.

    Args:
      alphabet: single characters, each once; None for `default_alphabet(normalizer)`.
      normalizer: applied by `encode`; TextNormalizer() if None.
    """
    self.normalizer = normalizer or TextNormalizer()
    alphabet = tuple(default_alphabet(self.normalizer) if alphabet is None else alphabet)
    if any(len(char) != 1 for char in alphabet) or len(set(alphabet)) != len(alphabet):
      raise ValueError(f"a character alphabet holds distinct single characters, got {alphabet!r}")
    self.alphabet = alphabet
    self._ids = {char: index + 2 for index, char in enumerate(alphabet)}
    self.oov_counts: collections.Counter[str] = collections.Counter()

  @classmethod
  def from_texts(
      cls, texts: Iterable[str], normalizer: TextNormalizer | None = None, min_count: int = 1
  ) -> CharTokenizer:
    """A tokenizer whose alphabet is what the normalised `texts` use.

    The space comes first, then every character seen at least `min_count` times, sorted, so the same
    transcripts always give the same ids whatever their order.
    """
    normalizer = normalizer or TextNormalizer()
    counts = collections.Counter()
    for text in texts:
      counts.update(normalizer(text))
    kept = sorted(char for char, count in counts.items() if count >= min_count and char != " ")
    return cls([" ", *kept], normalizer)

  @property
  def vocab_size(self) -> int:
    return len(self.alphabet) + 2

  def encode(self, text: str) -> list[int]:
    ids = []
    for char in self.normalizer(text):
      index = self._ids.get(char)
      if index is None:
        self.oov_counts[char] += 1
        index = self.unk_id
      ids.append(index)
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    chars = []
    for index in ids:
      index = int(index)
      if index == self.unk_id:
        chars.append(UNK_TEXT)
      elif index >= 2:
        chars.append(self.alphabet[index - 2])
    return " ".join("".join(chars).split())

  def save(self, directory: str | os.PathLike) -> str:
    return base.write_descriptor(directory, "char", alphabet="".join(self.alphabet),
                                 normalizer=self.normalizer.to_dict())

  @classmethod
  def from_descriptor(cls, directory: str, descriptor: dict[str, Any]) -> CharTokenizer:
    del directory  # the descriptor holds the whole vocabulary
    return cls(descriptor["alphabet"], TextNormalizer.from_dict(descriptor["normalizer"]))
