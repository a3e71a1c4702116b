"""Host-side CTC prefix beam search with word n-gram LM shallow fusion (k2SSL, Eq. 3).

Hypotheses are ranked by
  log p_CTC(y | x) + lm_weight * log p_LM(y) + word_insertion * |y|,
the wav2letter / fairseq formulation k2SSL follows, |y| counting words. Tokens become text through
`pieces` (id -> surface text, " " at word boundaries: the character tokenizer's space, SentencePiece's
"▁"), so one search serves both tokenizers: when appending a piece closes a word, the LM scores that word
given the previous ones and the word counts once. The word still being spelled is not scored until it
closes; at the end the final partial word and `</s>` are scored, and the n-best is re-ranked.

Why on the host: the LM is a dictionary walk over word strings, with no static-shape form worth having
for the vocabularies and beam sizes we decode with. Per utterance and frame the CTC recursion runs in
numpy over the [beam, vocab] grid; prefixes are token tuples, so identical ones merge exactly. Word
states (and LM lookups) are computed only for extensions that can still enter the beam: an extension's
LM term can only fall and its word count grow by the spaces in its piece, so its fused score is bounded
above, and one bounded below the beam-th best stay is skipped without changing the result. Without an
LM it is the plain-Python reference the jitted search (speechfuse.decoding.ctc) is tested and benchmarked
against.

With a lexicon (a set of words, e.g. the LM's vocabulary: `NgramLM.words()`), the search is lexicon-
constrained as wav2letter's lexicon decoder and k2's HLG graphs are: an extension survives only while its
open word is a prefix of some lexicon word and every word it closes is one, and a hypothesis whose last
word is not a lexicon word is ranked after every hypothesis that ends in one. Spelling errors then cannot
reach the output (an out-of-lexicon word cannot either: it becomes the nearest lexicon words).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple

import numpy as np
import sentencepiece

from speechfuse.decoding.beams import BeamResult
from speechfuse.decoding.lm import BOS, EOS, NgramLM
from speechfuse.text import CharTokenizer, SentencePieceTokenizer, Tokenizer
from speechfuse.text.chars import UNK_TEXT


def token_pieces(tokenizer: Tokenizer) -> list[str]:
  """id -> surface text of every id, with " " where a word boundary is ("" for blank / control ids).

  The character tokenizer's space is its own piece " "; SentencePiece's "▁" prefix becomes a leading
  " ". Unk becomes "⁇", so a word holding it is out of the LM's vocabulary.
  """
  if isinstance(tokenizer, CharTokenizer):
    return ["", UNK_TEXT, *tokenizer.alphabet]
  if isinstance(tokenizer, SentencePieceTokenizer):
    processor = sentencepiece.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    pieces = []
    for index in range(processor.get_piece_size()):
      if processor.is_unknown(index):
        pieces.append(UNK_TEXT)
      elif processor.is_control(index):
        pieces.append("")
      else:
        pieces.append(processor.id_to_piece(index).replace("\u2581", " "))
    return pieces
  raise TypeError(f"token_pieces knows CharTokenizer and SentencePieceTokenizer, got {type(tokenizer)!r}")


class _Words(NamedTuple):
  """A prefix's word-level state: LM history (last order-1 words), open word, LM log-prob, word count."""

  history: tuple[str, ...]
  partial: str
  lm_score: float
  count: int


def _close_word(lm: NgramLM | None, words: _Words, word: str) -> _Words:
  lm_score = words.lm_score + (lm.score(words.history, word) if lm is not None else 0.0)
  keep = lm.order - 1 if lm is not None else 0
  history = (*words.history, word)[-keep:] if keep else ()
  return _Words(history, words.partial, lm_score, words.count + 1)


def _append(lm: NgramLM | None, words: _Words, piece: str) -> _Words:
  """The state after appending `piece`: every word it closes is scored."""
  *closed, partial = (words.partial + piece).split(" ")
  for word in closed:
    if word:
      words = _close_word(lm, words, word)
  return words._replace(partial=partial)


def _finish(lm: NgramLM | None, words: _Words) -> _Words:
  """The state at the utterance's end: the open word closes, then `</s>`."""
  if words.partial:
    words = _close_word(lm, words, words.partial)._replace(partial="")
  if lm is not None:
    words = words._replace(lm_score=words.lm_score + lm.score(words.history, EOS))
  return words


class _Lexicon:
  """Words and every prefix of them, to test an extension's text in O(word length)."""

  def __init__(self, words: Collection[str]):
    self.words = frozenset(words)
    self.prefixes = frozenset(word[:i] for word in self.words for i in range(len(word) + 1))

  def allows(self, words: _Words, piece: str) -> bool:
    """Whether appending `piece` closes only lexicon words and leaves a lexicon prefix open."""
    *closed, partial = (words.partial + piece).split(" ")
    return partial in self.prefixes and all(word in self.words for word in closed if word)


def _search(
    log_probs: np.ndarray, beam: int, blank_id: int, lm: NgramLM | None, lm_weight: float,
    word_insertion: float, pieces: Sequence[str] | None, lexicon: _Lexicon | None = None,
) -> list[tuple[tuple[int, ...], float]]:
  """One utterance, log_probs: [T, V] (valid frames only) -> [(tokens, score)], best first."""
  vocab = log_probs.shape[1]
  empty = _Words((BOS,) if lm is not None and lm.order > 1 else (), "", 0.0, 0)
  # Each space in a piece closes at most one word: the most an extension can add to the word count.
  closes = np.array([piece.count(" ") for piece in pieces]) if pieces is not None else np.zeros(vocab)
  prefixes, words = [()], [empty]
  p_b, p_nb = np.zeros(1), np.full(1, -np.inf)  # [K]: alignments ending in blank / in the last symbol
  for frame in log_probs:
    total = np.logaddexp(p_b, p_nb)
    last = np.array([prefix[-1] if prefix else blank_id for prefix in prefixes])
    stay_b = total + frame[blank_id]
    stay_nb = p_nb + frame[last]  # an empty prefix has p_nb = -inf
    extend = np.where(np.arange(vocab) == last[:, None], p_b[:, None], total[:, None]) + frame  # [K, V]
    extend[:, blank_id] = -np.inf
    # An extension equal to a kept prefix is that prefix: its probability joins the stay.
    index = {prefix: k for k, prefix in enumerate(prefixes)}
    for j, prefix in enumerate(prefixes):
      k = index.get(prefix[:-1]) if prefix else None
      if k is not None:
        stay_nb[j] = np.logaddexp(stay_nb[j], extend[k, prefix[-1]])
        extend[k, prefix[-1]] = -np.inf
    prior = np.array([lm_weight * w.lm_score + word_insertion * w.count for w in words])
    stay_scores = np.logaddexp(stay_b, stay_nb) + prior
    # Exact pruning: an extension's LM term can only fall and its word count grow by `closes`, so an
    # extension whose bound is below the beam-th best stay cannot enter the beam; skip its word state.
    bound = extend + prior[:, None] + max(word_insertion, 0.0) * closes
    threshold = np.sort(stay_scores)[-beam] if len(prefixes) >= beam else -np.inf
    parents, tokens = np.nonzero((bound >= threshold) & (extend > -np.inf))
    if lexicon is not None:
      allowed = np.array([lexicon.allows(words[k], pieces[v]) for k, v in zip(parents, tokens)], bool)
      parents, tokens = parents[allowed], tokens[allowed]
    grown_words = [
        _append(lm, words[k], pieces[v]) if pieces is not None else empty for k, v in zip(parents, tokens)]
    candidates = prefixes + [(*prefixes[k], int(v)) for k, v in zip(parents, tokens)]
    candidate_words = words + grown_words
    candidate_b = np.concatenate([stay_b, np.full(len(parents), -np.inf)])
    candidate_nb = np.concatenate([stay_nb, extend[parents, tokens]])
    scores = np.concatenate([stay_scores, extend[parents, tokens] + np.array(
        [lm_weight * w.lm_score + word_insertion * w.count for w in grown_words]).reshape(-1)])
    keep = [i for i in np.argsort(-scores, kind="stable")[:beam] if scores[i] > -np.inf]
    prefixes = [candidates[i] for i in keep]
    words = [candidate_words[i] for i in keep]
    p_b, p_nb = candidate_b[keep], candidate_nb[keep]

  final = []
  for prefix, state, ctc in zip(prefixes, words, np.logaddexp(p_b, p_nb)):
    complete = lexicon is None or not state.partial or state.partial in lexicon.words
    state = _finish(lm, state) if pieces is not None else state
    final.append((complete, prefix, float(ctc + lm_weight * state.lm_score + word_insertion * state.count)))
  final.sort(key=lambda item: item[::2], reverse=True)  # complete hypotheses first, then by score
  return [(prefix, score) for _, prefix, score in final]


def prefix_beam_search(
    log_probs, lengths, *, beam: int = 10, blank_id: int = 0, lm: NgramLM | None = None,
    lm_weight: float = 0.5, word_insertion: float = 0.0, pieces: Sequence[str] | None = None,
    lexicon: Collection[str] | None = None,
) -> BeamResult:
  """Prefix beam search on the host, one utterance after another.

  Args:
    log_probs: [B, T, V] log-probabilities (any array type).
    lengths: [B] valid frames.
    beam: hypotheses kept per frame, also the number returned.
    blank_id: the blank id.
    lm: word LM, or None for CTC scores alone.
    lm_weight, word_insertion: w1 (>= 0) and w2 of Eq. 3.
    pieces: id -> surface text (`token_pieces`); required with an LM, a word insertion score or a
      lexicon, and unused without all three (the search is then plain CTC prefix beam search).
    lexicon: the words the output may hold (see the module docstring), or None for any spelling.

  Returns:
    BeamResult of numpy arrays: tokens [B, beam, T] padded with blank_id, lengths [B, beam], scores
    [B, beam] (Eq. 3 with the final word and `</s>` scored; -inf pads when fewer hypotheses exist).
  """
  log_probs = np.asarray(log_probs, np.float64)
  lengths = np.asarray(lengths)
  batch, frames, vocab = log_probs.shape
  uses_words = lm is not None or word_insertion != 0.0 or lexicon is not None
  if lexicon is not None and not lexicon:
    raise ValueError("the lexicon is empty")
  if lm is not None and lm_weight < 0:
    raise ValueError(f"lm_weight must be >= 0, got {lm_weight}")  # the pruning bound relies on it
  if uses_words and (pieces is None or len(pieces) < vocab):
    raise ValueError(f"an LM, a word insertion score or a lexicon needs `pieces` for all {vocab} ids "
                     f"(ctc_lm.token_pieces(tokenizer)), got {None if pieces is None else len(pieces)}")
  lexicon = _Lexicon(lexicon) if lexicon is not None else None
  tokens = np.full((batch, beam, frames), blank_id, np.int32)
  token_lengths = np.zeros((batch, beam), np.int32)
  scores = np.full((batch, beam), -np.inf, np.float64)
  for b in range(batch):
    nbest = _search(log_probs[b, :int(lengths[b])], beam, blank_id, lm, lm_weight, word_insertion,
                    pieces if uses_words else None, lexicon)
    for n, (prefix, score) in enumerate(nbest):
      tokens[b, n, :len(prefix)] = prefix
      token_lengths[b, n] = len(prefix)
      scores[b, n] = score
  return BeamResult(tokens, token_lengths, scores)
