"""CTC model: parameter tree, normalised log-probs, padding invariance, chunked (online) mode, training mode."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse import audio, models
from speechfuse.models import acoustic, ctc, encoders
from speechfuse.nn import subsampled_length

VOCAB = 29


@pytest.fixture(scope="module")
def model_and_variables():
  rng = np.random.default_rng(0)
  stats = audio.CMVNStats(rng.normal(size=80) * 100, np.full(80, 1e4) + rng.random(80) * 100, 100)
  config = ctc.default_config("conformer", "smoke")
  model = models.get_model(config, dtype=jnp.float32, vocab_size=VOCAB, cmvn=stats)
  waves = (rng.normal(size=(2, 16000)) * 2000).astype(np.int16)
  lengths = np.array([16000, 9600], np.int32)
  waves[1, 9600:] = 0
  variables = model.init(jax.random.key(0), waves, lengths)
  return model, variables, waves, lengths


def test_parameter_tree(model_and_variables):
  _, variables, _, _ = model_and_variables
  params = variables["params"]
  assert set(params) == {"encoder", "ctc_head"}
  head = params["ctc_head"]["kernel"]
  assert isinstance(head, nn.LogicallyPartitioned)
  assert head.value.shape == (64, VOCAB) and head.names == ("embed", "vocab")
  assert "batch_stats" in variables  # the Conformer conv module's BatchNorm


def test_log_probs_and_lengths(model_and_variables):
  model, variables, waves, lengths = model_and_variables
  log_probs, out_lengths = model.apply(variables, waves, lengths)
  frames = (lengths - 400) // 160 + 1  # Kaldi frames: 25 ms windows, 10 ms shift
  np.testing.assert_array_equal(out_lengths, subsampled_length(frames))
  assert log_probs.shape == (2, int(out_lengths[0]), VOCAB) and log_probs.dtype == jnp.float32
  np.testing.assert_allclose(jnp.exp(log_probs).sum(-1), 1.0, rtol=1e-5)


def test_padding_does_not_change_valid_outputs(model_and_variables):
  model, variables, waves, lengths = model_and_variables
  batched, out_lengths = model.apply(variables, waves, lengths)
  alone, _ = model.apply(variables, waves[1:, :9600], lengths[1:])
  valid = int(out_lengths[1])
  np.testing.assert_allclose(batched[1, :valid], alone[0, :valid], atol=2e-4)


def test_chunked_attention_is_causal_across_chunks(model_and_variables):
  model, variables, waves, lengths = model_and_variables
  full, out_lengths = model.apply(variables, waves[:1], lengths[:1])
  chunked, _ = model.apply(variables, waves[:1], lengths[:1], chunk_size=4)
  assert not np.allclose(full, chunked, atol=1e-4)
  # Audio past the first chunk's receptive field leaves its outputs unchanged. The field reaches past the chunk
  # through each block's non-causal depthwise conv (7 frames ahead at kernel 15): encoder frame 19 of 2 blocks,
  # i.e. about sample 13,500; change the audio from sample 14,400 on.
  late = waves[:1].copy()
  late[0, 14400:] = 0
  chunked_late, _ = model.apply(variables, late, lengths[:1], chunk_size=4)
  np.testing.assert_allclose(chunked[0, :4], chunked_late[0, :4], atol=1e-4)


def test_training_mode_augments_and_updates_batch_stats(model_and_variables):
  model, variables, waves, lengths = model_and_variables
  rngs = {name: jax.random.key(i) for i, name in enumerate(acoustic.RNG_STREAMS)}
  (log_probs, _), updates = model.apply(variables, waves, lengths, train=True, rngs=rngs, mutable=["batch_stats"])
  assert np.isfinite(log_probs).all()
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(updates["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_unknown_encoder_key_is_named():
  config = ctc.default_config("transformer", "smoke")
  config.encoder.conv_kernel = 15
  with pytest.raises(ValueError, match="conv_kernel"):
    encoders.make_encoder(config.encoder, jnp.float32)
