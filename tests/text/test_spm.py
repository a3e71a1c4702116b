"""Tests for speechfuse.text.spm: in-process training, id layout, round trips, unk counting, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from speechfuse.text import base
from speechfuse.text.normalize import TextNormalizer
from speechfuse.text.spm import SentencePieceTokenizer


def _sentences(seed: int, count: int) -> list[str]:
  """Upper-case transcripts over a 300-word synthetic lexicon, like LibriSpeech's."""
  rng = np.random.default_rng(0)
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz'"))
  weights = np.r_[np.full(26, 1.0), 0.2] / 26.2
  lexicon = ["".join(rng.choice(letters, size=rng.integers(2, 9), p=weights)).strip("'") or "a"
             for _ in range(300)]
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(lexicon, size=rng.integers(3, 15))).upper() + "." for _ in range(count)]


@pytest.fixture(scope="module")
def train_texts():
  return _sentences(seed=1, count=400)


@pytest.mark.parametrize("model_type, vocab_size", [("bpe", 120), ("bpe", 300), ("unigram", 150)])
def test_trains_requested_size_and_round_trips(train_texts, model_type, vocab_size):
  tokenizer = SentencePieceTokenizer.train(train_texts, vocab_size, model_type=model_type)
  assert tokenizer.vocab_size == vocab_size
  assert (tokenizer.blank_id, tokenizer.pad_id, tokenizer.unk_id) == (0, 0, 1)
  assert isinstance(tokenizer, base.Tokenizer)
  normalizer = TextNormalizer()
  for text in _sentences(seed=2, count=50):  # unseen sentences over the same characters
    ids = tokenizer.encode(text)
    assert ids and min(ids) >= 2 and max(ids) < vocab_size, "never blank or unk for in-vocabulary text"
    assert tokenizer.decode(ids) == normalizer(text)
  assert not tokenizer.oov_counts


def test_bpe_uses_fewer_tokens_with_more_pieces(train_texts):
  small = SentencePieceTokenizer.train(train_texts, 60)
  large = SentencePieceTokenizer.train(train_texts, 400)
  lengths = [sum(len(t.encode(text)) for text in train_texts[:100]) for t in (small, large)]
  assert lengths[1] < lengths[0]


def test_training_is_deterministic(train_texts):
  first = SentencePieceTokenizer.train(train_texts, 150)
  second = SentencePieceTokenizer.train(list(train_texts), 150)
  assert first.model_proto == second.model_proto


def test_unknown_characters_map_to_unk_and_are_counted(train_texts):
  tokenizer = SentencePieceTokenizer.train(train_texts, 100)
  ids = tokenizer.encode("ÇA ÉTÉ ÜBER")
  assert ids.count(tokenizer.unk_id) >= 3
  assert tokenizer.oov_counts == {"ç": 1, "é": 2, "ü": 1}
  assert "⁇" in tokenizer.decode(ids)
  assert tokenizer.decode([0, *tokenizer.encode("ab"), 0, 0]) == "ab"


def test_save_load_gives_same_encodings(train_texts, tmp_path):
  normalizer = TextNormalizer(digits="keep")
  tokenizer = SentencePieceTokenizer.train(train_texts, 120, normalizer=normalizer, out_dir=tmp_path / "run")
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["tokenizer.json", "tokenizer.model"]
  loaded = base.load_tokenizer(tmp_path / "run")
  assert isinstance(loaded, SentencePieceTokenizer)
  assert loaded.normalizer == normalizer and loaded.model_proto == tokenizer.model_proto
  for text in train_texts[:20] + ["room 101 é"]:
    assert loaded.encode(text) == tokenizer.encode(text)


def test_errors_name_the_problem(train_texts, tmp_path):
  with pytest.raises(ValueError, match="vocabulary of 100000"):
    SentencePieceTokenizer.train(train_texts[:5], 100000)
  with pytest.raises(ValueError, match="model_type"):
    SentencePieceTokenizer.train(train_texts, 100, model_type="word")
  SentencePieceTokenizer.train(train_texts, 80).save(tmp_path)
  (tmp_path / "tokenizer.model").write_bytes(b"not a model")
  with pytest.raises(ValueError, match="tokenizer.model"):
    base.load_tokenizer(tmp_path)
  (tmp_path / "tokenizer.model").unlink()
  with pytest.raises(FileNotFoundError, match="tokenizer.model"):
    base.load_tokenizer(tmp_path)
