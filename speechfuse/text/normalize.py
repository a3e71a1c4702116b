"""Transcript normalisation, applied identically to training labels and to evaluation references.

The default turns "Mr. O’Brien paid $5, didn't he?" into "mr o'brien paid didn't he":
1. Unicode NFKC (compatibility forms such as ligatures and full-width letters become plain letters), and
   typographic apostrophes (’ ‘ ʼ `) become "'".
2. Case: lower by default. LibriSpeech transcripts are upper case, but lower case is what most text
   corpora, language models and WER tools use; "upper" and "keep" are options.
3. Letters (any script) are kept, and so is the apostrophe (don't, o'clock) unless disabled. Digits are
   dropped by default: spoken corpora spell numbers out, and a stray digit is more often noise than a
   word; `digits="keep"` keeps them.
4. Everything else (punctuation, symbols, control characters) becomes a space, so "well-known" gives
   "well known"; runs of whitespace collapse to one space and the ends are stripped.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from typing import Any, Literal

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


@dataclasses.dataclass(frozen=True)
class TextNormalizer:
  """Callable text normaliser; see the module docstring for what each step does.

  Attributes:
    case: "lower", "upper" or "keep".
    digits: "drop" or "keep".
    keep_apostrophes: keep "'" inside and around words; if False it becomes a space like punctuation.
  """

  case: Literal["lower", "upper", "keep"] = "lower"
  digits: Literal["drop", "keep"] = "drop"
  keep_apostrophes: bool = True

  def __post_init__(self):
    if self.case not in ("lower", "upper", "keep"):
      raise ValueError(f"TextNormalizer.case must be 'lower', 'upper' or 'keep', got {self.case!r}")
    if self.digits not in ("drop", "keep"):
      raise ValueError(f"TextNormalizer.digits must be 'drop' or 'keep', got {self.digits!r}")

  def __call__(self, text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    if self.case == "lower":
      text = text.lower()
    elif self.case == "upper":
      text = text.upper()
    kept = []
    for char in text:
      category = unicodedata.category(char)
      if category.startswith("L") or category.startswith("M"):  # letters and their combining marks
        kept.append(char)
      elif char == "'" and self.keep_apostrophes:
        kept.append(char)
      elif category == "Nd":
        kept.append(char if self.digits == "keep" else "")
      else:
        kept.append(" ")
    return " ".join("".join(kept).split())

  def to_dict(self) -> dict[str, Any]:
    """The options as a JSON-serialisable dict (stored in tokenizer descriptors)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, options: dict[str, Any]) -> TextNormalizer:
    """Inverse of `to_dict`; an unknown option raises a ValueError naming it."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
      raise ValueError(f"unknown TextNormalizer options {unknown}; known: {sorted(known)}")
    return cls(**options)
