"""Word n-gram LM estimation: interpolated modified Kneser-Ney (Chen & Goodman 1998), written as ARPA.

    train_arpa(transcripts, "lm.arpa", order=3)   # then speechfuse.decoding.NgramLM.from_arpa("lm.arpa")

Why hand-written: KenLM's `lmplz` (the usual estimator) is a C++ binary that pip does not ship, and NLTK's
`nltk.lm` neither writes ARPA nor implements the modified (three-discount) variant. What we need is small:
transcripts of training splits, up to a few million words, counted in Python dictionaries (for web-scale text,
build KenLM and read its ARPA file with NgramLM; the two formats are the same).

The estimate, as KenLM computes it (Heafield et al. 2013, "Scalable modified Kneser-Ney"):
- Sentences are padded as `<s> w1 .. wm </s>`. Adjusted counts a(g): the raw count for the highest order and
  for n-grams starting with `<s>` (nothing can precede them); otherwise the continuation count, the number of
  distinct words seen before g.
- Per order n, three discounts from the counts-of-counts t_k (n-grams with adjusted count k):
  Y = t1 / (t1 + 2 t2), D1 = 1 - 2Y t2/t1, D2 = 2 - 3Y t3/t2, D3+ = 3 - 4Y t4/t3. When some t_k is 0 or a D_k
  falls outside (0, k] (small corpora), KenLM's --discount_fallback values (0.5, 1, 1.5) are used instead.
- p(w | h) = (a(h w) - D(a(h w))) / sum_x a(h x) + gamma(h) p(w | h'), h' = h without its first word, with
  gamma(h) = (D1 N1(h) + D2 N2(h) + D3+ N3+(h)) / sum_x a(h x) (N_k(h): words after h of adjusted count k, or
  >= 3), the mass the discounts freed. Unigrams interpolate with the uniform distribution over the vocabulary
  (the words seen, `</s>` and `<unk>`, not `<s>`, which is never predicted), so `<unk>` gets gamma() / |V|.
- ARPA stores the interpolated p of every seen n-gram and gamma(h) as h's back-off weight: for an unseen (h, w),
  p(w | h) = gamma(h) p(w | h') is exactly the back-off rule NgramLM applies, so the file is the model, and
  every history's probabilities sum to one over the vocabulary. `<s>` gets log10 p = -99 (never predicted),
  as SRILM and KenLM write it.
No pruning; words are the sentences' whitespace-separated tokens, as given (normalise them first, with the
tokenizer's normaliser: `speechfuse-prepare lm` does).
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Iterable, Sequence

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # KenLM lmplz --discount_fallback
BOS_LOG10 = -99.0  # log10 p(<s>): a history, never predicted

Ngram = tuple[str, ...]
Tables = list[dict[Ngram, tuple[float, float]]]  # [order - 1]: n-gram -> (log10 p, log10 backoff)


def discounts(counts_of_counts: Sequence[int]) -> tuple[float, float, float]:
  """Chen & Goodman's (D1, D2, D3+) from t1..t4, the numbers of n-grams of adjusted count 1, 2, 3, 4.

  FALLBACK_DISCOUNTS when a t_k is 0 or a discount falls outside (0, k] (as KenLM with --discount_fallback, which
  also accepts 0; a zero discount could leave a history no mass to back off with).
  """
  t1, t2, t3, t4 = counts_of_counts
  if min(t1, t2, t3, t4) == 0:
    return FALLBACK_DISCOUNTS
  y = t1 / (t1 + 2 * t2)
  values = (1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3)
  if any(not 0.0 < d <= k for k, d in enumerate(values, 1)):
    return FALLBACK_DISCOUNTS
  return values


def _adjusted_counts(sentences: Iterable[str], order: int) -> list[collections.Counter[Ngram]]:
  """[n - 1]: adjusted count of every n-gram seen in the padded sentences (see the module docstring)."""
  raw = [collections.Counter() for _ in range(order)]
  for number, sentence in enumerate(sentences):
    words = sentence.split()
    reserved = {BOS, EOS, UNK} & set(words)
    if reserved:
      raise ValueError(f"sentence {number} holds the reserved token(s) {sorted(reserved)}: {sentence!r}")
    padded = (BOS, *words, EOS)
    for n in range(1, order + 1):
      raw[n - 1].update(padded[i:i + n] for i in range(len(padded) - n + 1))
  if not raw[0]:
    raise ValueError("an n-gram LM needs at least one sentence")
  adjusted = [collections.Counter() for _ in range(order)]
  adjusted[-1] = raw[-1]
  for n in range(1, order):
    for gram, count in raw[n - 1].items():
      if gram[0] == BOS:
        adjusted[n - 1][gram] = count
    for longer in raw[n]:  # every distinct (n+1)-gram adds one left word to its suffix's continuation count
      adjusted[n - 1][longer[1:]] += 1
  del adjusted[0][(BOS,)]
  return adjusted


def estimate(sentences: Iterable[str], order: int = 3) -> Tables:
  """The interpolated modified Kneser-Ney model of `sentences` (strings of space-separated words).

  Returns:
    tables[n - 1]: every stored n-gram -> (log10 p(w_n | w_1..w_n-1), log10 backoff(w_1..w_n), 0.0 when it
    is not a history), the layout speechfuse.decoding.NgramLM takes.

  Raises:
    ValueError: order < 1, no sentence, or a sentence holding `<s>`, `</s>` or `<unk>` (named).
  """
  if order < 1:
    raise ValueError(f"an n-gram LM needs order >= 1, got {order}")
  adjusted = _adjusted_counts(sentences, order)
  probs: list[dict[Ngram, float]] = []
  gammas: list[dict[Ngram, float]] = []  # [n - 1]: back-off weight of each history of n words
  for n, counts in enumerate(adjusted, 1):
    histogram = collections.Counter(min(count, 4) for count in counts.values())
    discount = (0.0, *discounts([histogram[k] for k in (1, 2, 3, 4)]))
    totals, freed = collections.Counter(), collections.Counter()
    for gram, count in counts.items():
      totals[gram[:-1]] += count
      freed[gram[:-1]] += discount[min(count, 3)]
    gamma = {history: freed[history] / totals[history] for history in totals}
    if n == 1:
      vocabulary = {gram for gram in counts} | {(EOS,), (UNK,)}
      lower = {(): 1.0 / len(vocabulary)}  # uniform: a unigram's lower order is the empty history
      counts = {gram: counts.get(gram, 0) for gram in vocabulary}
    else:
      lower = probs[-1]
      gammas.append(gamma)
    probs.append({gram: (count - discount[min(count, 3)]) / totals[gram[:-1]] + gamma[gram[:-1]] * lower[gram[1:]]
                  for gram, count in counts.items()})
  gammas.append({})  # the highest order's n-grams are no histories
  tables = [{gram: (math.log10(p), math.log10(backoffs[gram]) if gram in backoffs else 0.0)
             for gram, p in table.items()} for table, backoffs in zip(probs, gammas)]
  tables[0][(BOS,)] = (BOS_LOG10, math.log10(gammas[0][(BOS,)]) if (BOS,) in gammas[0] else 0.0)
  return tables


def write_arpa(tables: Tables, path: str | os.PathLike) -> str:
  """Writes `tables` (estimate's layout) as an ARPA file, n-grams sorted, atomically; returns the path."""
  path = os.fspath(path)
  lines = ["\\data\\", *(f"ngram {n}={len(table)}" for n, table in enumerate(tables, 1)), ""]
  for n, table in enumerate(tables, 1):
    lines.append(f"\\{n}-grams:")
    histories = {gram[:-1] for gram in tables[n]} if n < len(tables) else set()  # whose back-off is read
    for gram in sorted(table):
      log10_p, log10_backoff = table[gram]
      backoff = f"\t{log10_backoff:.7g}" if gram in histories else ""
      lines.append(f"{log10_p:.7g}\t{' '.join(gram)}{backoff}")
    lines.append("")
  lines.append("\\end\\")
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(path + ".tmp", path)
  return path



def train_arpa(sentences: Iterable[str], path: str | os.PathLike, order: int = 3) -> str:
  """Estimates an `order`-gram interpolated modified Kneser-Ney LM of `sentences` and writes it to `path`.

  Args:
    sentences: normalised transcripts, words separated by spaces.
    path: the ARPA file to write (atomically).
    order: the largest n.

  Returns:
    The path written.
  """
  return write_arpa(estimate(sentences, order), path)
