"""The online column of every recipe that reports one is truly streaming, on the recipe's own config.

For each: the model fed chunk by chunk through its encoder's step (models.acoustic.online_encode, what evaluation
runs) equals its chunk-masked full-utterance forward within 1e-5; and changing the audio from the end of chunk c's
look-ahead on (chunk + look-ahead: the latency the results tables state) leaves every output of chunks <= c
unchanged, bit for bit, in both, while changing the sample just before it changes chunk c (and not the chunks
before it): the stated latency is what the model waits for, no more, no less.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse import audio, models
from speechfuse.config import load_config, recipe_path
from speechfuse.models import acoustic
from speechfuse.tasks import asr

SAMPLE_RATE = 16000
VOCAB = 30

RECIPES = [("asr_conformer_ctc", "tiny"), ("asr_conformer_ctc", "smoke"), ("asr_conformer_transducer", "tiny"),
           ("finetune_ctc", "tiny"), ("asr_conformer_ctc", "tiny,architecture=transformer")]


def _model(name: str, arg: str):
  config = load_config(f"{recipe_path(name)}:{arg}")
  config.compute_dtype = "float32"
  rng = np.random.default_rng(0)
  stats = audio.CMVNStats(rng.normal(size=80) * 200 + 1000, np.full(80, 4e6), 1)
  model = models.get_model(config.model, dtype=jnp.float32, vocab_size=VOCAB, cmvn=stats)
  return config, model


def _variables(model, audio_batch, lengths):
  """Generic random variables of `model` (normal, std 1/sqrt(fan-in); norms at one), filled by numpy: fast."""
  labels = np.ones((audio_batch.shape[0], 4), np.int32)
  args = (audio_batch, lengths) if not hasattr(model, "predictor") else (audio_batch, lengths, labels, np.full(2, 4))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))
  rng = np.random.default_rng(1)

  def fill(path, leaf):
    name = path[-1].key
    shape = leaf.value.shape if hasattr(leaf, "value") else leaf.shape
    if name in ("scale", "var"):
      return np.ones(shape, np.float32)
    if name == "mean":
      return np.zeros(shape, np.float32)
    fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else shape[0]
    return (rng.normal(size=shape) / np.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes, is_leaf=lambda x: hasattr(x, "value"))


@pytest.mark.parametrize("name, arg", RECIPES, ids=lambda x: x)
def test_online_is_streaming_and_reads_nothing_past_its_latency(name, arg):
  config, model = _model(name, arg)
  task = config.task
  chunk, left = task.online_chunk_size, task.online_left_chunks
  assert chunk > 0, f"{name} reports an online column"
  chunk_ms, lookahead_ms = acoustic.latency_ms(config.model, chunk)
  assert asr.online_latency(config) == {"chunk_frames": chunk, "left_chunks": left, "chunk_ms": chunk_ms,
                                        "lookahead_ms": lookahead_ms}
  rng = np.random.default_rng(2)
  samples = int(3.5 * chunk_ms * SAMPLE_RATE / 1000) + 4000  # 3 chunks and some
  waves = (rng.normal(size=(2, samples)) * 3000).astype(np.int16)
  lengths = np.array([samples, samples - 3000], np.int32)
  waves[1, lengths[1]:] = 0
  variables = _variables(model, waves, lengths)

  online = jax.jit(lambda v, a, n: acoustic.online_encode(model, v, a, n, chunk_size=chunk, num_left_chunks=left))
  masked = jax.jit(lambda v, a, n: model.apply(v, a, n, chunk_size=chunk, num_left_chunks=left, method="encode"))
  x, out_lengths = online(variables, waves, lengths)
  expected, expected_lengths = masked(variables, waves, lengths)
  np.testing.assert_array_equal(out_lengths, expected_lengths)
  np.testing.assert_allclose(x, expected, atol=1e-5, rtol=0)
  assert np.abs(np.asarray(expected)).max() > 0.1  # not a test about zeros

  c = 1  # chunk 1's outputs: frames [chunk, 2 chunk)
  boundary = round(((c + 1) * chunk_ms + lookahead_ms) * SAMPLE_RATE / 1000)
  later = waves.copy()
  later[:, boundary:] = rng.normal(size=later[:, boundary:].shape) * 3000
  before = waves.copy()
  before[:, boundary - 1] += 5000  # the last sample chunk c reads: its last frame must change
  kept = slice(0, (c + 1) * chunk)
  for encode in (online, masked):
    reference = np.asarray(encode(variables, waves, lengths)[0])
    np.testing.assert_array_equal(np.asarray(encode(variables, later, lengths)[0])[:, kept], reference[:, kept])
    changed = np.asarray(encode(variables, before, lengths)[0])
    assert not np.array_equal(changed[0, kept.stop - 1], reference[0, kept.stop - 1])
    np.testing.assert_array_equal(changed[:, :c * chunk], reference[:, :c * chunk])  # earlier chunks never see it
