"""Word n-gram language models in the ARPA format (as SRILM, KenLM's lmplz and others write them).

ARPA stores log10 probabilities and back-off weights:

  \\data\\
  ngram 1=<count>
  ...
  \\1-grams:
  <log10 p(w)>  w  [<log10 backoff(w)>]
  \\2-grams:
  <log10 p(w2 | w1)>  w1 w2  [<log10 backoff(w1 w2)>]
  ...
  \\end\\

p(w | h) for the longest stored history h = h1..hm: the n-gram's own probability if (h, w) is stored,
else backoff(h) * p(w | h2..hm) (backoff(h) = 1 when h itself is not stored), ending at the unigram.
`<s>` starts every sentence (a history, never predicted) and `</s>` ends it. A word not in the
vocabulary is read as `<unk>` when the model has it; otherwise it gets `unk_log10` (KenLM's -100).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

from speechfuse.text.ngram import BOS, EOS, UNK  # where the estimator (train_arpa) writes them

LN10 = math.log(10.0)

_COUNT = re.compile(r"^ngram\s+(\d+)\s*=\s*(\d+)$")
_SECTION = re.compile(r"^\\(\d+)-grams:$")


class NgramLM:
  """A back-off n-gram LM; scores are natural logs."""

  def __init__(self, ngrams: Sequence[dict[tuple[str, ...], tuple[float, float]]], unk_log10: float = -100.0):
    """Wraps n-gram tables.

    Args:
      ngrams: ngrams[n - 1] maps each stored n-gram (a tuple of n words) to (log10 p, log10 backoff).
      unk_log10: log10 probability of a word outside the vocabulary when there is no `<unk>`.
    """
    if not ngrams or not ngrams[0]:
      raise ValueError("an n-gram LM needs at least one unigram")
    self._ngrams = [dict(table) for table in ngrams]
    self.unk_log10 = unk_log10

  @classmethod
  def from_arpa(cls, path: str | os.PathLike, unk_log10: float = -100.0) -> NgramLM:
    """Reads an ARPA file.

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: naming the file and line, when the file is not valid ARPA or its counts disagree.
    """
    path = os.fspath(path)
    counts: dict[int, int] = {}
    tables: dict[int, dict[tuple[str, ...], tuple[float, float]]] = {}
    section = None  # None before \data\, 0 inside it, n inside \n-grams:
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        line = line.strip()
        where = f"{path}:{number}"
        if not line:
          continue
        if line == "\\data\\":
          section = 0
        elif line == "\\end\\":
          break
        elif section is None:
          continue  # text before \data\ is a comment
        elif match := _SECTION.match(line):
          section = int(match.group(1))
          if section not in counts:
            raise ValueError(f"{where}: section {line!r} has no 'ngram {section}=' count in \\data\\")
          tables[section] = {}
        elif section == 0:
          if not (match := _COUNT.match(line)):
            raise ValueError(f"{where}: expected 'ngram N=count' in \\data\\, got {line!r}")
          counts[int(match.group(1))] = int(match.group(2))
        else:
          fields = line.split()
          if len(fields) not in (section + 1, section + 2):
            raise ValueError(f"{where}: a {section}-gram line holds a log10 p, {section} words and an "
                             f"optional backoff, got {line!r}")
          try:
            log10_p = float(fields[0])
            backoff = float(fields[section + 1]) if len(fields) == section + 2 else 0.0
          except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
          tables[section][tuple(fields[1:section + 1])] = (log10_p, backoff)
      else:
        raise ValueError(f"{path}: no \\end\\ line")
    if not counts or sorted(counts) != list(range(1, len(counts) + 1)):
      raise ValueError(f"{path}: \\data\\ must count n-grams of orders 1..N, got orders {sorted(counts)}")
    for order, count in counts.items():
      found = len(tables.get(order, {}))
      if found != count:
        raise ValueError(f"{path}: \\data\\ announces {count} {order}-grams, the file holds {found}")
    return cls([tables[order] for order in sorted(tables)], unk_log10)

  @property
  def order(self) -> int:
    """The largest n."""
    return len(self._ngrams)

  def __contains__(self, word: str) -> bool:
    return (word,) in self._ngrams[0]

  def words(self) -> frozenset[str]:
    """The vocabulary: every unigram but `<s>`, `</s>` and `<unk>` (a lexicon for the CTC search)."""
    return frozenset(ngram[0] for ngram in self._ngrams[0]) - {BOS, EOS, UNK}

  def score(self, history: Sequence[str], word: str) -> float:
    """ln p(word | history), backing off as in the module docstring.

    Args:
      history: preceding words, oldest first, starting with `<s>` for a sentence start; only the last
        order - 1 are read.
      word: the predicted word (`</s>` for the sentence end).
    """
    word = self._known(word)
    if word is None:
      return self.unk_log10 * LN10
    context = tuple(self._known(w) for w in history[max(0, len(history) - self.order + 1):])
    backoff = 0.0
    for start in range(len(context) + 1):
      history_words = context[start:]
      if None in history_words:  # an unknown history word matches no n-gram: back off past it
        continue
      entry = self._ngrams[len(history_words)].get(history_words + (word,))
      if entry is not None:
        return (backoff + entry[0]) * LN10
      if history_words:
        backoff += self._ngrams[len(history_words) - 1].get(history_words, (0.0, 0.0))[1]
    return self.unk_log10 * LN10  # a word without a unigram (an ARPA file missing one)

  def sentence_score(self, words: Sequence[str]) -> float:
    """ln p(words </s> | <s>): the whole sentence, end included."""
    history = [BOS]
    total = 0.0
    for word in [*words, EOS]:
      total += self.score(history, word)
      history.append(word)
    return total

  def _known(self, word: str) -> str | None:
    """`word` if in the vocabulary, else `<unk>` if the model has it, else None."""
    if (word,) in self._ngrams[0]:
      return word
    return UNK if (UNK,) in self._ngrams[0] else None
