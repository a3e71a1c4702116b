"""`speechfuse-prepare lm`: the ARPA LM of a split's transcripts, normalised as the tokenizer normalises labels."""

from __future__ import annotations

import numpy as np
import pytest

from speechfuse.data import prepare, storage
from speechfuse.decoding import NgramLM
from speechfuse.text import CharTokenizer, TextNormalizer, ngram

TEXTS = ["The cat sat.", "A cat, a DOG!", "the dog sat on 3 mats"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  def records(split):
    for i, text in enumerate(TEXTS if split == "train" else TEXTS[:1]):
      yield {"id": f"{split}-{i}", "audio": np.zeros(1600, np.int16), "sample_rate": 16000, "text": text,
             "speaker": "s", "duration": 0.1}

  return storage.write_dataset(tmp_path_factory.mktemp("data"), "texts",
                               {split: (lambda s=split: records(s)) for split in ("train", "dev")})


def test_lm_of_the_normalised_train_transcripts(dataset, tmp_path, capsys):
  out = tmp_path / "lm.arpa"
  assert prepare.main(["lm", "--dataset", str(dataset), "--split", "train", "--order", "2", "--out", str(out)]) == 0
  assert capsys.readouterr().out.strip() == f"{out}: 2-gram LM of 3 transcripts of train (1-grams 10, 2-grams 14)"
  expected = NgramLM(ngram.estimate(["the cat sat", "a cat a dog", "the dog sat on mats"], order=2))
  lm = NgramLM.from_arpa(out)
  for words in (["the", "cat", "sat"], ["a", "dog", "sat", "on", "mats"], ["the", "mats"]):
    assert lm.sentence_score(words) == pytest.approx(expected.sentence_score(words), abs=1e-5)


def test_the_tokenizer_normaliser_is_applied(dataset, tmp_path, capsys):
  CharTokenizer(normalizer=TextNormalizer(case="upper", digits="keep")).save(tmp_path / "tokenizer")
  prepare.main(["lm", "--dataset", str(dataset), "--out", str(tmp_path / "lm.arpa"), "--order", "1",
                "--tokenizer", str(tmp_path / "tokenizer")])
  lm = NgramLM.from_arpa(tmp_path / "lm.arpa")
  assert "DOG" in lm and "3" in lm and "dog" not in lm
  assert "1-grams 11" in capsys.readouterr().out  # 8 words, <s>, </s>, <unk>


def test_a_missing_split_is_named(dataset, tmp_path, capsys):
  with pytest.raises(SystemExit):
    prepare.main(["lm", "--dataset", str(dataset), "--split", "test", "--out", str(tmp_path / "lm.arpa")])
  assert "has no split 'test'" in capsys.readouterr().err
