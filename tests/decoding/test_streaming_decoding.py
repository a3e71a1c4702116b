"""StreamingCTCDecoder fed chunk by chunk against offline greedy decoding of the whole utterances."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from speechfuse.decoding import StreamingCTCDecoder, ctc_greedy


@pytest.mark.parametrize("chunk", [1, 3, 4, 16])
def test_chunks_decode_like_the_whole_utterance(chunk):
  rng = np.random.default_rng(chunk)
  log_probs = np.array(jax.nn.log_softmax(2.0 * rng.standard_normal((3, 14, 5)), axis=-1))
  # A symbol that straddles the boundary after frame 4 must be emitted once.
  log_probs[0, 3:6] = np.log(np.array([0.01, 0.01, 0.96, 0.01, 0.01]))
  lengths = np.array([14, 9, 0])
  decoder = StreamingCTCDecoder(batch_size=3)
  for start in range(0, 14, chunk):
    piece = log_probs[:, start:start + chunk]
    decoder.accept(piece, np.clip(lengths - start, 0, piece.shape[1]))
  tokens, token_lengths = decoder.result()
  offline_tokens, offline_lengths = ctc_greedy(log_probs, lengths)
  np.testing.assert_array_equal(token_lengths, offline_lengths)
  for b in range(3):
    np.testing.assert_array_equal(tokens[b, :token_lengths[b]], offline_tokens[b, :offline_lengths[b]])
  assert tokens[0].tolist().count(2) == np.asarray(offline_tokens[0]).tolist().count(2)


def test_reset_starts_new_utterances_and_partial_results_grow():
  one_hot = np.log(np.eye(3)[[1, 1, 2, 0]] * 0.97 + 0.01)[None]  # [1, 4, 3]
  decoder = StreamingCTCDecoder(batch_size=1)
  decoder.accept(one_hot[:, :2])
  assert decoder.result()[0].tolist() == [[1]]
  decoder.accept(one_hot[:, 2:])
  assert decoder.result()[0].tolist() == [[1, 2]]
  decoder.reset()
  decoder.accept(one_hot[:, 1:2])  # a fresh stream: the 1 is new, not a repeat
  assert decoder.result()[0].tolist() == [[1]]
  with pytest.raises(ValueError, match="batch_size"):
    decoder.accept(np.zeros((2, 1, 3)))
