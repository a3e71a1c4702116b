"""Tests for speechfuse.text.ngram: modified Kneser-Ney against hand computation, normalisation through NgramLM
(the independent check: the ARPA file read back must give every history a distribution), and the ARPA round trip."""

from __future__ import annotations

import collections
import itertools
import math

import numpy as np
import pytest

from speechfuse.decoding import NgramLM
from speechfuse.text import ngram

CORPUS = ["the cat sat on the mat", "the dog sat", "a cat and a dog", "the cat", "on the mat the cat sat",
          "a dog sat on a cat", "the mat", "cat"]


def _random_corpus():
  """60 sentences of 1-6 words drawn unevenly from 8: the trigrams' counts-of-counts give in-range discounts."""
  rng = np.random.default_rng(0)
  words = [f"w{i}" for i in range(8)]
  return [" ".join(rng.choice(words, size=rng.integers(1, 7), p=np.arange(1, 9) / 36)) for _ in range(60)]


def test_discounts_closed_form():
  # t = (10, 4, 2, 1): Y = 10 / 18 = 5/9, D1 = 1 - 2 Y 4/10 = 5/9, D2 = 2 - 3 Y 2/4 = 7/6, D3+ = 3 - 4 Y 1/2 = 17/9.
  np.testing.assert_allclose(ngram.discounts([10, 4, 2, 1]), [5 / 9, 7 / 6, 17 / 9])
  assert ngram.discounts([3, 1, 0, 0]) == ngram.FALLBACK_DISCOUNTS  # some count-of-counts is 0
  assert ngram.discounts([1, 1, 9, 1]) == ngram.FALLBACK_DISCOUNTS  # D2 = 2 - 3 (1/3) 9 < 0


def test_bigram_model_hand_computed():
  # "<s> a b </s>", "<s> b </s>". Bigrams (raw counts, the highest order): <s> a 1, <s> b 1, a b 1, b </s> 2;
  # unigram continuation counts: a 1, b 2 (after a and <s>), </s> 1; every count-of-counts has zeros, so the
  # fallback discounts (0.5, 1, 1.5). Unigrams: total 4, freed 0.5 + 1 + 0.5 = 2, gamma = 1/2 over the uniform
  # 1/4 (a, b, </s>, <unk>): p(a) = 0.5/4 + 1/8, p(b) = 1/4 + 1/8, p(</s>) = 1/4, p(<unk>) = 1/8.
  # Bigrams: gamma(<s>) = 1/2, p(a|<s>) = 1/4 + p(a)/2 = 3/8, p(b|<s>) = 1/4 + 3/16; gamma(a) = 1/2,
  # p(b|a) = 1/2 + 3/16; gamma(b) = 1/2, p(</s>|b) = 1/2 + 1/8.
  tables = ngram.estimate(["a b", "b"], order=2)
  expected = [{("a",): (0.25, 0.5), ("b",): (0.375, 0.5), ("</s>",): (0.25, 1.0), ("<unk>",): (0.125, 1.0)},
              {("<s>", "a"): (0.375, 1.0), ("<s>", "b"): (0.4375, 1.0), ("a", "b"): (0.6875, 1.0),
               ("b", "</s>"): (0.625, 1.0)}]
  assert tables[0].pop(("<s>",)) == (ngram.BOS_LOG10, pytest.approx(math.log10(0.5)))
  for table, want in zip(tables, expected):
    assert table.keys() == want.keys()
    for gram, (p, backoff) in want.items():
      np.testing.assert_allclose(table[gram], (math.log10(p), math.log10(backoff)), atol=1e-12, err_msg=str(gram))


@pytest.mark.parametrize("corpus, order", [(CORPUS, 1), (CORPUS, 2), (CORPUS, 3), (CORPUS, 4), ("random", 3)])
def test_every_history_sums_to_one_through_ngram_lm(corpus, order, tmp_path):
  corpus = _random_corpus() if corpus == "random" else corpus
  path = ngram.train_arpa(corpus, tmp_path / "lm.arpa", order=order)
  lm = NgramLM.from_arpa(path)
  vocabulary = sorted({w for s in corpus for w in s.split()}) + ["</s>", "<unk>"]
  assert lm.order == order and all(w in lm for w in vocabulary)
  # Every history of up to order - 1 words (seen or not, unknown words included), sentence starts too.
  words = [w for w in vocabulary if w != "</s>"] + ["zebra"]
  histories = [list(h) for n in range(order) for h in itertools.product(words, repeat=n)]
  histories += [["<s>", *h] for h in histories if len(h) < order - 1]
  for history in histories:
    total = sum(math.exp(lm.score(history, w)) for w in vocabulary)
    assert total == pytest.approx(1.0, abs=1e-5), history


def test_the_random_corpus_exercises_the_discount_formula():
  trigrams = ngram._adjusted_counts(_random_corpus(), 3)[2]  # pylint: disable=protected-access
  counts_of_counts = collections.Counter(min(count, 4) for count in trigrams.values())
  assert ngram.discounts([counts_of_counts[k] for k in (1, 2, 3, 4)]) != ngram.FALLBACK_DISCOUNTS


def test_arpa_round_trip_and_sentence_scores(tmp_path):
  tables = ngram.estimate(CORPUS, order=3)
  read = NgramLM.from_arpa(ngram.write_arpa(tables, tmp_path / "lm.arpa"))
  direct = NgramLM(tables)
  for sentence in [*CORPUS, "the zebra sat on a mat", ""]:
    assert read.sentence_score(sentence.split()) == pytest.approx(direct.sentence_score(sentence.split()), abs=1e-5)
  # The training sentences are far likelier than their shuffles.
  assert read.sentence_score("the cat sat on the mat".split()) > read.sentence_score("mat the on sat cat the".split())
  # Seen trigram: its own probability, interpolated with the lower orders, exceeds the bigram's share.
  assert read.score(["<s>", "the"], "cat") > read.score(["dog"], "cat")


def test_bad_input_is_named(tmp_path):
  with pytest.raises(ValueError, match="reserved token"):
    ngram.estimate(["a <s> b"])
  with pytest.raises(ValueError, match="at least one sentence"):
    ngram.estimate([])
  with pytest.raises(ValueError, match="order >= 1"):
    ngram.estimate(CORPUS, order=0)
