"""The Zipformer's streaming step (init_state / step through decoding.stream_encode) against its chunk-masked full
forward: equal outputs for several chunk sizes and left contexts, utterances ending inside a chunk, stacks at four
frame rates; the refusals (symmetric convolutions, chunks that split a stack's frame); the window's geometry; a CTC
model's online encoding and its stated latency."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse import audio, models
from speechfuse.decoding import stream_encode
from speechfuse.models import acoustic, ctc, encoders
from speechfuse.nn import streaming, zipformer
from zipformer_testlib import random_variables

# Four stacks down to 1/8 of the embed rate, so that a chunk crosses every kind of boundary; small widths.
CONFIG = dict(downsampling_factors=(1, 2, 8, 2), num_layers=(1, 2, 1, 1), dims=(32, 48, 40, 24),
              unmasked_dims=(24,) * 4, num_heads=(2, 2, 2, 2), feedforward_dims=(64, 96, 80, 48),
              conv_kernels=(7, 5, 3, 5), query_head_dim=8, value_head_dim=4, pos_head_dim=2, pos_dim=16,
              embed_channels=(4, 8, 16))


@pytest.fixture(scope="module")
def encoder_and_variables():
  encoder = zipformer.ZipformerEncoder(**CONFIG, causal=True)
  features = np.zeros((1, 60, 80), np.float32)
  return encoder, random_variables(encoder, features, np.array([60]))


def test_chunk_window_covers_the_convnext_context():
  window = zipformer.ZipformerEncoder(**CONFIG, causal=True).chunk_window(4)
  # 8 embed frames per chunk, 16 fbank frames; 3 embed frames either side (6 fbank frames before, 6 + 7 after).
  assert (window.frames, window.stride, window.lookahead, window.history) == (35, 16, 13, 6)
  assert window.output_frames(203) == zipformer.output_lengths(203)


@pytest.mark.parametrize("chunk_size, left_chunks", [(4, -1), (4, 1), (8, 0)])
def test_streaming_steps_equal_the_chunk_masked_forward(encoder_and_variables, chunk_size, left_chunks):
  encoder, variables = encoder_and_variables
  features = np.random.default_rng(1).normal(size=(3, 203, 80)).astype(np.float32)
  lengths = np.array([203, 150, 30], np.int32)  # the last ends inside its first chunk
  expected, expected_lengths = encoder.apply(variables, features, lengths, chunk_size=chunk_size,
                                             num_left_chunks=left_chunks)
  state = encoder.init_state(3, chunk_size, left_chunks, expected.shape[1])
  step = lambda chunk, chunk_lengths, s: encoder.apply(variables, chunk, chunk_lengths, s, method="step")
  window = encoder.chunk_window(chunk_size)
  x, out_lengths = jax.jit(lambda f, l, s: stream_encode(step, s, f, l, window, chunk_size))(features, lengths, state)
  assert x.shape == expected.shape
  np.testing.assert_array_equal(out_lengths, expected_lengths)
  np.testing.assert_allclose(x, expected, atol=2e-5, rtol=0)
  # The chunk mask matters: full context gives other outputs, so the equality above is not a trivial one.
  offline, _ = encoder.apply(variables, features, lengths)
  assert not np.allclose(offline[0], expected[0], atol=1e-3)


def test_streaming_is_refused_where_a_chunk_would_look_ahead_or_split_a_frame():
  with pytest.raises(ValueError, match="causal=True"):
    zipformer.ZipformerEncoder(**CONFIG).init_state(1, 4, -1, 50)
  with pytest.raises(ValueError, match="multiple of 4"):
    zipformer.ZipformerEncoder(**CONFIG, causal=True).init_state(1, 2, -1, 50)  # 4 embed frames < factor 8


def test_cache_sizes_follow_each_stacks_rate():
  state = zipformer.ZipformerEncoder(**CONFIG, causal=True).init_state(2, 8, 2, 100)
  # 16 embed frames per chunk: 16, 8, 2, 8 frames per stack, two chunks of left context.
  assert [s.layers[0].keys.shape[1] for s in state.stacks] == [32, 16, 4, 16]
  assert [len(s.layers) for s in state.stacks] == list(CONFIG["num_layers"])
  assert state.stacks[0].layers[0].conv1.shape == (2, 3, 32)
  assert streaming.cache_frames(2, -1, 25) == 24


def test_online_ctc_model_streams_within_its_stated_latency():
  """models.acoustic.online_encode (what online evaluation runs) on a Zipformer CTC model: equal to its chunk-masked
  encode, and audio from the end of chunk 1's look-ahead on leaves chunks 0 and 1 bit-identical."""
  rng = np.random.default_rng(0)
  config = ctc.default_config("zipformer", "smoke")
  config.encoder = encoders.default_config("zipformer", "smoke")
  config.encoder.causal = True
  config.spec_augment.enabled = False
  assert encoders.streams(config.encoder)
  chunk = 4
  chunk_ms, lookahead_ms = acoustic.latency_ms(config, chunk)
  assert (chunk_ms, lookahead_ms) == (160.0, 145.0)  # 16 fbank frames; 13 frames past them and a window's 15 ms
  stats = audio.CMVNStats(rng.normal(size=80) * 100, np.full(80, 1e4) + rng.random(80) * 100, 100)
  model = models.get_model(config, dtype=jnp.float32, vocab_size=7, cmvn=stats)
  waves = (rng.normal(size=(2, 12000)) * 2000).astype(np.int16)
  lengths = np.array([12000, 9000], np.int32)
  variables = random_variables(model, waves, lengths)
  online = jax.jit(lambda a: acoustic.online_encode(model, variables, a, lengths, chunk_size=chunk,
                                                    num_left_chunks=2))
  masked = jax.jit(lambda a: model.apply(variables, a, lengths, chunk_size=chunk, num_left_chunks=2,
                                         method="encode"))
  x, out_lengths = online(waves)
  expected, expected_lengths = masked(waves)
  np.testing.assert_array_equal(out_lengths, expected_lengths)
  np.testing.assert_allclose(x, expected, atol=2e-5, rtol=0)
  boundary = round((2 * chunk_ms + lookahead_ms) * 16)  # samples up to the end of chunk 1's look-ahead
  later = waves.copy()
  later[:, boundary:] = (rng.normal(size=later[:, boundary:].shape) * 2000).astype(np.int16)
  before = waves.copy()
  before[:, boundary - 1] += 3000
  for encode in (online, masked):
    reference = np.asarray(encode(waves)[0])
    np.testing.assert_array_equal(np.asarray(encode(later)[0])[:, :2 * chunk], reference[:, :2 * chunk])
    assert not np.array_equal(np.asarray(encode(before)[0])[0, 2 * chunk - 1], reference[0, 2 * chunk - 1])
