"""Tests for speechfuse.text.normalize."""

from __future__ import annotations

import pytest

from speechfuse.text.normalize import TextNormalizer


@pytest.mark.parametrize("text, expected", [
    ("Mr. O’Brien paid $5, didn't he?", "mr o'brien paid didn't he"),
    ("HE HOPED THERE WOULD BE STEW FOR DINNER", "he hoped there would be stew for dinner"),
    ("  well-known\tfact;\n  really…  ", "well known fact really"),
    ("ＦＵＬＬ ｗｉｄｔｈ and the ﬁne ligature", "full width and the fine ligature"),
    ("Café naïve", "café naïve"),
    ("in 1990 we met R2D2", "in we met rd"),
    ("it`s", "it's"),
    ("", ""),
    ("?!.,", ""),
])
def test_default_normalisation(text, expected):
  assert TextNormalizer()(text) == expected


def test_options():
  text = "Don't stop at 42, O'Hara!"
  assert TextNormalizer(case="upper")(text) == "DON'T STOP AT O'HARA"
  assert TextNormalizer(case="keep")(text) == "Don't stop at O'Hara"
  assert TextNormalizer(digits="keep")(text) == "don't stop at 42 o'hara"
  assert TextNormalizer(keep_apostrophes=False)(text) == "don t stop at o hara"


def test_idempotent():
  normalizer = TextNormalizer()
  once = normalizer("  A “quoted”  phrase — with DASHES, 3 digits & O’Neil's hat. ")
  assert normalizer(once) == once


def test_dict_round_trip_and_validation():
  normalizer = TextNormalizer(case="upper", digits="keep", keep_apostrophes=False)
  assert TextNormalizer.from_dict(normalizer.to_dict()) == normalizer
  with pytest.raises(ValueError, match="colour"):
    TextNormalizer.from_dict({"colour": "blue"})
  with pytest.raises(ValueError, match="case"):
    TextNormalizer(case="title")
  with pytest.raises(ValueError, match="digits"):
    TextNormalizer(digits="spell")
