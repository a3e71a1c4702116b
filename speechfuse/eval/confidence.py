"""Hypothesis confidence from CTC posteriors: the score the OTF paper's selection-based fusion (SBF) ranks by.

Definition (average word confidence, as Qiu et al. 2021 cited by OTF, computed from the CTC posteriors):
- Best path: frame t emits argmax_v p_t(v) with posterior q_t = max_v p_t(v). Consecutive frames with the
  same non-blank argmax form one token (CTC collapse); blank frames emit nothing.
- Token confidence: the mean of q_t over the token's frames.
- Word confidence: the mean of its tokens' confidences. A token belongs to the word it adds visible text to;
  word-boundary tokens (the character tokenizer's space, SentencePiece's bare "▁") belong to no word.
- Utterance confidence: the mean over its words. A hypothesis without words gets the mean of q_t over its
  valid frames (how sure the model is that nothing was said).
All values lie in (0, 1].
"""

from __future__ import annotations

import numpy as np

from speechfuse.text.base import Tokenizer


def ctc_best_path(best_ids: np.ndarray, best_probs: np.ndarray, length: int,
                  blank_id: int = 0) -> tuple[list[int], list[float]]:
  """CTC greedy output of one utterance with per-token confidences.

  Args:
    best_ids: int [T] argmax token per frame.
    best_probs: float [T] its posterior.
    length: valid frames.
    blank_id: the blank index.

  Returns:
    (tokens, token_confidences): the collapsed non-blank tokens and the mean posterior over each one's frames.
  """
  ids, probs = np.asarray(best_ids[:length]), np.asarray(best_probs[:length], np.float64)
  if length == 0:
    return [], []
  starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))  # run starts
  ends = np.append(starts[1:], length)
  tokens, confidences = [], []
  for start, end in zip(starts, ends):
    if ids[start] != blank_id:
      tokens.append(int(ids[start]))
      confidences.append(float(probs[start:end].mean()))
  return tokens, confidences


def word_confidences(tokens: list[int], token_confidences: list[float], tokenizer: Tokenizer) -> list[float]:
  """Mean token confidence of each word of tokenizer.decode(tokens), in order."""
  words: list[list[float]] = []
  for i, (token, confidence) in enumerate(zip(tokens, token_confidences)):
    if not tokenizer.decode([token]).strip():
      continue  # a word boundary: belongs to no word
    index = len(tokenizer.decode(tokens[:i + 1]).split()) - 1
    while len(words) <= index:
      words.append([])
    words[index].append(confidence)
  return [float(np.mean(w)) for w in words if w]


def utterance_confidence(tokens: list[int], token_confidences: list[float], tokenizer: Tokenizer,
                         best_probs: np.ndarray, length: int) -> float:
  """Average word confidence; the mean frame posterior over `length` frames when there is no word."""
  words = word_confidences(tokens, token_confidences, tokenizer)
  if words:
    return float(np.mean(words))
  return float(np.mean(best_probs[:length])) if length else 1.0
