"""Tests for speechfuse.text.chars."""

from __future__ import annotations

import string

from speechfuse.text import base
from speechfuse.text.chars import CharTokenizer
from speechfuse.text.normalize import TextNormalizer


def test_default_vocabulary_layout():
  tokenizer = CharTokenizer()
  assert (tokenizer.blank_id, tokenizer.pad_id, tokenizer.unk_id) == (0, 0, 1)
  assert tokenizer.alphabet == tuple(" '" + string.ascii_lowercase)
  assert tokenizer.vocab_size == 30
  assert tokenizer.encode("a b'") == [4, 2, 5, 3]
  assert isinstance(tokenizer, base.Tokenizer)


def test_round_trip_is_normalised_text():
  tokenizer = CharTokenizer()
  for text in ("HE HOPED THERE WOULD BE STEW", "Don't   stop, O'Hara!", "", "x"):
    ids = tokenizer.encode(text)
    assert 0 not in ids and tokenizer.unk_id not in ids
    assert tokenizer.decode(ids) == TextNormalizer()(text)
  assert not tokenizer.oov_counts


def test_out_of_vocabulary_maps_to_unk_and_is_counted():
  tokenizer = CharTokenizer()
  ids = tokenizer.encode("café über ß")
  assert ids.count(tokenizer.unk_id) == 3 and len(ids) == len("café über ß")
  assert tokenizer.oov_counts == {"é": 1, "ü": 1, "ß": 1}
  tokenizer.encode("née, née")
  assert tokenizer.oov_counts["é"] == 3
  assert tokenizer.decode(tokenizer.encode("ça")) == "⁇a"


def test_decode_skips_blank_and_collapses_spaces():
  tokenizer = CharTokenizer()
  a, space = tokenizer.encode("a")[0], tokenizer.encode("a b")[1]
  assert tokenizer.decode([0, space, a, 0, space, space, a, space, 0]) == "a a"


def test_alphabet_follows_normaliser():
  upper = CharTokenizer(normalizer=TextNormalizer(case="upper", digits="keep"))
  assert upper.decode(upper.encode("Room 101")) == "ROOM 101"
  assert not upper.oov_counts


def test_from_texts_is_sorted_and_deterministic(tmp_path):
  texts = ["Zebra crossing", "über alles", "a zebra"]
  tokenizer = CharTokenizer.from_texts(texts)
  assert tokenizer.alphabet == tuple(" abcegilnorszü")
  assert CharTokenizer.from_texts(reversed(texts)).alphabet == tokenizer.alphabet
  rare = CharTokenizer.from_texts(texts, min_count=2)
  assert "ü" not in rare.alphabet and "z" in rare.alphabet
  for text in texts:
    assert tokenizer.decode(tokenizer.encode(text)) == TextNormalizer()(text)


def test_save_load_gives_same_encodings(tmp_path):
  tokenizer = CharTokenizer.from_texts(["ÀB c'd"], normalizer=TextNormalizer(digits="keep"))
  path = tokenizer.save(tmp_path / "tok")
  loaded = base.load_tokenizer(tmp_path / "tok")
  assert isinstance(loaded, CharTokenizer)
  assert loaded.alphabet == tokenizer.alphabet and loaded.normalizer == tokenizer.normalizer
  for text in ("àb c'd 1", "dcba", "x y z"):
    assert loaded.encode(text) == tokenizer.encode(text)
  assert base.load_tokenizer(path).alphabet == tokenizer.alphabet
