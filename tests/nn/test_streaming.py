"""Streaming encoders: the chunk-by-chunk step API equals the chunk-masked full-utterance forward, for the Conformer
(causal and chunk-restricted convs) and the Transformer, every subsampling, limited and full left context; the
relative shift for a chunk against its cache; and the refusal of a convolution that looks ahead."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from speechfuse.decoding import stream_encode
from speechfuse.nn import ConformerEncoder, TransformerEncoder, rel_shift, relative_sinusoids, streaming


@pytest.mark.parametrize("queries, keys", [(3, 3), (2, 5), (4, 9), (1, 1), (1, 4)])
def test_rel_shift_puts_each_relative_position_under_its_key(queries, keys):
  positions = queries + keys - 1
  scores = np.random.default_rng(0).normal(size=(2, queries, positions)).astype(np.float32)
  shifted = np.asarray(rel_shift(scores))
  # Queries are the last `queries` of the keys: query i sits at key position keys - queries + i, so its distance to
  # key j is keys - queries + i - j, held in column (keys - 1) - distance of relative_sinusoids' layout.
  for i in range(queries):
    for j in range(keys):
      np.testing.assert_array_equal(shifted[:, i, j], scores[:, i, (keys - 1) - (keys - queries + i - j)])
  table = relative_sinusoids(queries, 8, keys)
  assert table.shape == (positions, 8)
  np.testing.assert_array_equal(table[keys - 1], relative_sinusoids(1, 8)[0])  # distance 0


def _encoder(kind: str, architecture: str, factor: int):
  common = dict(num_blocks=2, d_model=32, num_heads=2, ffn_dim=64, subsampling=kind, subsampling_factor=factor)
  if architecture.startswith("conformer"):
    return ConformerEncoder(**common, conv_kernel=7, conv_context=architecture.split("_")[1])
  return TransformerEncoder(**common, positions="absolute")


@pytest.mark.parametrize("architecture", ["conformer_causal", "conformer_chunk", "transformer"])
@pytest.mark.parametrize("kind, factor", [("conv2d", 4), ("conv1d", 2), ("conv2d", 6)])
def test_streaming_steps_equal_the_chunk_masked_forward(random_variables, architecture, kind, factor):
  encoder = _encoder(kind, architecture, factor)
  features = np.random.default_rng(1).normal(size=(3, 203, 80)).astype(np.float32)
  lengths = np.array([203, 150, 37], np.int32)  # the last ends within its first chunks
  variables = random_variables(encoder, features, lengths)
  step = lambda chunk, chunk_lengths, state: encoder.apply(variables, chunk, chunk_lengths, state, method="step")
  for chunk_size, left_chunks in ((4, -1), (5, 2), (3, 0)):
    expected, expected_lengths = encoder.apply(variables, features, lengths, chunk_size=chunk_size,
                                               num_left_chunks=left_chunks)
    state = encoder.init_state(3, chunk_size, left_chunks, expected.shape[1])
    x, out_lengths = jax.jit(lambda f, l, s, c=chunk_size: stream_encode(step, s, f, l, encoder.chunk_window(c), c))(
        features, lengths, state)
    assert x.shape == expected.shape
    np.testing.assert_array_equal(out_lengths, expected_lengths)
    np.testing.assert_allclose(x, expected, atol=1e-5, rtol=0)


def test_chunk_window_reads_the_subsamplings_receptive_field():
  # conv2d x4: output t reads fbank frames 4t..4t+6, so a chunk of 16 needs 4 * 15 + 7 = 67 frames every 64.
  assert streaming.chunk_window("conv2d", 4, 16) == streaming.ChunkWindow(67, 64, 3)
  assert streaming.chunk_window("conv1d", 2, 16) == streaming.ChunkWindow(33, 32, 1)
  assert streaming.cache_frames(16, 2, 1000) == 32 and streaming.cache_frames(16, -1, 100) == 96


def test_a_symmetric_convolution_does_not_stream(random_variables):
  encoder = ConformerEncoder(num_blocks=1, d_model=32, num_heads=2, ffn_dim=64, conv_kernel=7)
  with pytest.raises(ValueError, match="conv_context 'causal' or 'chunk'"):
    encoder.init_state(1, 4, -1, 20)
