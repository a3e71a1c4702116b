"""ARPA n-gram LM on a hand-written model, and CTC + LM shallow fusion against brute force."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from decoding_testlib import ctc_labellings, hypotheses, prefix_beam_search
from speechfuse.decoding import NgramLM, ctc_prefix_beam_search, token_pieces
from speechfuse.text import CharTokenizer, SentencePieceTokenizer

LN10 = math.log(10.0)

ARPA = """Comments before \\data\\ are allowed.

\\data\\
ngram 1=6
ngram 2=5
ngram 3=1

\\1-grams:
-1.0 <unk>
-99 <s> -0.5
-0.6 </s>
-0.4 a -0.3
-0.7 b -0.2
-0.9 ab

\\2-grams:
-0.2 <s> a -0.1
-0.3 a b
-0.5 b </s>
-0.4 a a
-0.25 b a

\\3-grams:
-0.1 <s> a b

\\end\\
"""


@pytest.fixture
def lm(tmp_path):
  path = tmp_path / "lm.arpa"
  path.write_text(ARPA)
  return NgramLM.from_arpa(path)


@pytest.mark.parametrize("history, word, log10_p", [
    (["<s>", "a"], "b", -0.1),  # the trigram itself
    (["a", "a"], "b", -0.3),  # no (a a b), (a a) has no backoff: p(b | a)
    (["x", "<s>", "a"], "b", -0.1),  # only the last order - 1 words count
    (["b"], "b", -0.2 - 0.7),  # backoff(b) * p(b)
    (["<s>", "b"], "a", -0.25),  # (<s> b) not stored: p(a | b)
    (["<s>", "a"], "a", -0.1 - 0.4),  # backoff(<s> a) * p(a | a)
    (["a"], "zzz", -0.3 - 1.0),  # an unknown word is <unk>: backoff(a) * p(<unk>)
    (["zzz"], "a", -0.4),  # an unknown history is <unk>, which has no bigrams or backoff
    ([], "ab", -0.9),
    (["a", "b"], "</s>", -0.5),
])
def test_scores_hand_computed(lm, history, word, log10_p):
  assert lm.order == 3 and "ab" in lm and "zzz" not in lm
  assert lm.score(history, word) == pytest.approx(log10_p * LN10)


def test_sentence_score_adds_sentence_boundaries(lm):
  # p(a | <s>) p(b | <s> a) p(</s> | a b) = -0.2 - 0.1 + (0 backoff of (a b)) - 0.5
  assert lm.sentence_score(["a", "b"]) == pytest.approx(-0.8 * LN10)
  assert lm.sentence_score([]) == pytest.approx((-0.5 - 0.6) * LN10)  # backoff(<s>) p(</s>)


def test_unknown_words_without_unk_get_the_floor(tmp_path):
  text = ARPA.replace("ngram 1=6", "ngram 1=5").replace("-1.0 <unk>\n", "")
  (tmp_path / "lm.arpa").write_text(text)
  lm = NgramLM.from_arpa(tmp_path / "lm.arpa", unk_log10=-7.0)
  assert lm.score(["a"], "zzz") == pytest.approx(-7.0 * LN10)
  assert lm.score(["zzz"], "b") == pytest.approx(-0.7 * LN10), "an unknown history matches nothing"


@pytest.mark.parametrize("change, message", [
    (("ngram 2=5", "ngram 2=4"), "announces 4 2-grams"),
    (("-0.3 a b\n", "-0.3 a\n"), "lm.arpa:18"),
    (("\\end\\\n", ""), "no \\\\end"),
    (("ngram 3=1\n", ""), "no 'ngram 3='"),
])
def test_malformed_files_are_named(tmp_path, change, message):
  (tmp_path / "lm.arpa").write_text(ARPA.replace(*change))
  with pytest.raises(ValueError, match=message):
    NgramLM.from_arpa(tmp_path / "lm.arpa")


def _fused_brute_force(log_probs, pieces, lm, lm_weight, word_insertion):
  """Eq. 3 for every labelling: log p_CTC + lm_weight * log p_LM(words) + word_insertion * |words|."""
  out = {}
  for labelling, ctc in ctc_labellings(log_probs).items():
    words = "".join(pieces[token] for token in labelling).split()
    out[labelling] = ctc + lm_weight * lm.sentence_score(words) + word_insertion * len(words)
  return out


@pytest.mark.parametrize("pieces, frames", [
    (["", " ", "a", "b"], 4),  # characters, the space separating words
    (["", "\u2047", " a", " b", "b"], 3),  # SentencePiece-like: a leading space starts a word
])
@pytest.mark.parametrize("lm_weight, word_insertion", [(0.0, 0.0), (0.8, 0.0), (1.5, 2.0), (0.5, -1.0)])
def test_fused_search_with_a_full_beam_is_exact(lm, pieces, frames, lm_weight, word_insertion):
  vocab = len(pieces)
  rng = np.random.default_rng(7)
  log_probs = np.asarray(jax.nn.log_softmax(2.0 * rng.standard_normal((2, frames, vocab)), axis=-1))
  lengths = np.array([frames, frames - 1])
  beam = sum((vocab - 1) ** n for n in range(frames + 1))  # every labelling: no pruning
  result = ctc_prefix_beam_search(log_probs, lengths, beam=beam, lm=lm, lm_weight=lm_weight,
                                  word_insertion=word_insertion, pieces=pieces)
  for b, length in enumerate(lengths):
    exact = _fused_brute_force(log_probs[b, :length], pieces, lm, lm_weight, word_insertion)
    found = hypotheses(result.tokens[b], result.lengths[b], result.scores[b])
    assert found.keys() == exact.keys()
    np.testing.assert_allclose([found[y] for y in exact], list(exact.values()), rtol=1e-6)
    assert next(iter(found)) == max(exact, key=exact.get)


@pytest.mark.parametrize("lm_weight, word_insertion", [(0.8, 1.5), (0.3, -0.5)])
def test_pruned_fused_search_matches_the_textbook_search(lm, lm_weight, word_insertion):
  # A small beam on longer input: the search prunes, and skips extensions by its bound.
  pieces = ["", " ", "a", "b", "c"]
  rng = np.random.default_rng(3)
  log_probs = np.asarray(jax.nn.log_softmax(3.0 * rng.standard_normal((2, 12, 5)), axis=-1))

  def prior(prefix, final=False):
    """Eq. 3's LM and word terms: words closed by a space during the search, all of them at the end."""
    text = "".join(pieces[token] for token in prefix)
    words = text.split() if final else [w for w in text.split(" ")[:-1] if w]
    history, lm_score = ["<s>"], 0.0
    for word in [*words, "</s>"] if final else words:
      lm_score += lm.score(history, word)
      history.append(word)
    return lm_weight * lm_score + word_insertion * len(words)

  result = ctc_prefix_beam_search(log_probs, np.array([12, 10]), beam=4, lm=lm, lm_weight=lm_weight,
                                  word_insertion=word_insertion, pieces=pieces)
  for b, length in enumerate([12, 10]):
    expected = prefix_beam_search(log_probs[b, :length], 4, prior, lambda p: prior(p, final=True))
    found = hypotheses(result.tokens[b], result.lengths[b], result.scores[b])
    assert list(found) == [prefix for prefix, _ in expected]
    np.testing.assert_allclose(list(found.values()), [score for _, score in expected], rtol=1e-6)


def test_the_lm_changes_the_decision(lm):
  # The acoustics favour "ab" (one word, unlikely under the LM) over "a b".
  p = np.array([[.05, .05, .85, .05], [.45, .4, .1, .05], [.05, .05, .05, .85]])
  pieces = ["", " ", "a", "b"]
  plain = ctc_prefix_beam_search(np.log(p)[None], np.array([3]), beam=8)
  fused = ctc_prefix_beam_search(np.log(p)[None], np.array([3]), beam=8, lm=lm, lm_weight=1.0,
                                 pieces=pieces)
  decode = lambda r: "".join(pieces[t] for t in np.asarray(r.tokens)[0, 0, :int(r.lengths[0, 0])])
  assert (decode(plain), decode(fused)) == ("ab", "a b")


def test_needs_pieces_with_an_lm(lm):
  with pytest.raises(ValueError, match="pieces"):
    ctc_prefix_beam_search(np.zeros((1, 2, 4)), np.array([2]), lm=lm)


def test_token_pieces_mark_word_boundaries_with_spaces():
  chars = CharTokenizer([" ", "a", "b"])
  assert token_pieces(chars) == ["", "\u2047", " ", "a", "b"]
  texts = ["the cat sat on the mat", "a cat and a hat", "that hat is the cat's"] * 20
  spm = SentencePieceTokenizer.train(texts, 30)
  pieces = token_pieces(spm)
  assert len(pieces) == spm.vocab_size and pieces[:2] == ["", "\u2047"]
  ids = spm.encode("the cat sat")
  assert "".join(pieces[i] for i in ids).split() == ["the", "cat", "sat"]


def test_lm_words_are_its_vocabulary_without_markers(lm):
  assert lm.words() == {"a", "b", "ab"}


@pytest.mark.parametrize("pieces, frames, lexicon", [
    (["", " ", "a", "b"], 4, {"a", "ba"}),
    (["", "\u2047", " a", " b", "b"], 3, {"a", "bb"}),
])
@pytest.mark.parametrize("lm_weight, word_insertion", [(0.0, 0.0), (0.8, 1.0)])
def test_lexicon_search_with_a_full_beam_is_exact(lm, pieces, frames, lexicon, lm_weight, word_insertion):
  # Brute force over the labellings whose words are all lexicon words; the rest (those ending in an open
  # lexicon prefix) must rank after every complete one.
  vocab = len(pieces)
  rng = np.random.default_rng(5)
  log_probs = np.asarray(jax.nn.log_softmax(2.0 * rng.standard_normal((1, frames, vocab)), axis=-1))
  beam = sum((vocab - 1) ** n for n in range(frames + 1))
  result = ctc_prefix_beam_search(log_probs, np.array([frames]), beam=beam, lm=lm, lm_weight=lm_weight,
                                  word_insertion=word_insertion, pieces=pieces, lexicon=lexicon)
  text = lambda labelling: "".join(pieces[token] for token in labelling)
  exact = {labelling: score for labelling, score in
           _fused_brute_force(log_probs[0], pieces, lm, lm_weight, word_insertion).items()
           if all(word in lexicon for word in text(labelling).split())}
  found = hypotheses(result.tokens[0], result.lengths[0], result.scores[0])
  complete = [y for y in found if all(word in lexicon for word in text(y).split())]
  assert list(found)[:len(complete)] == complete, "complete hypotheses come first"
  assert set(complete) == exact.keys()
  np.testing.assert_allclose([found[y] for y in exact], list(exact.values()), rtol=1e-6)
  assert complete[0] == max(exact, key=exact.get)
  prefixes = {word[:i] for word in lexicon for i in range(len(word) + 1)}
  for y in found:
    *words, last = text(y).split(" ")
    assert all(word in lexicon for word in words if word) and last in prefixes


def test_the_lexicon_corrects_the_spelling(lm):
  # The acoustics spell "bb" (not a word); among the lexicon's words "b" is the best path.
  p = np.array([[.05, .05, .05, .85], [.6, .05, .05, .3], [.05, .05, .05, .85]])
  pieces = ["", " ", "a", "b"]
  decode = lambda r: "".join(pieces[t] for t in np.asarray(r.tokens)[0, 0, :int(r.lengths[0, 0])])
  free = ctc_prefix_beam_search(np.log(p)[None], np.array([3]), beam=4, lm=lm, lm_weight=0.0, pieces=pieces)
  constrained = ctc_prefix_beam_search(np.log(p)[None], np.array([3]), beam=4, pieces=pieces, lexicon=lm.words())
  assert (decode(free), decode(constrained)) == ("bb", "b")


def test_an_empty_lexicon_is_an_error():
  with pytest.raises(ValueError, match="lexicon is empty"):
    ctc_prefix_beam_search(np.zeros((1, 2, 4)), np.array([2]), pieces=["", " ", "a", "b"], lexicon=set())
