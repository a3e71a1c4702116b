"""Transducer model: pruned loss = full RNN-T loss on the model's joiner when nothing is pruned; predictor steps
reproduce the training-mode predictor; parameter tree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse import audio
from speechfuse.losses import rnnt_loss
from speechfuse.models import transducer

VOCAB = 12


def _model(predictor: str, prune_range: int = 5):
  rng = np.random.default_rng(0)
  stats = audio.CMVNStats(rng.normal(size=80) * 100, np.full(80, 1e4), 100)
  config = transducer.default_config("conformer", "smoke")
  config.predictor, config.predictor_dim, config.joiner_dim = predictor, 32, 24
  config.prune_range, config.ctc_head = prune_range, True
  return transducer.from_config(config, jnp.float32, vocab_size=VOCAB, cmvn=stats)


def _batch():
  rng = np.random.default_rng(1)
  waves = (rng.normal(size=(2, 8000)) * 2000).astype(np.int16)
  lengths = np.array([8000, 6400], np.int32)
  waves[1, 6400:] = 0
  labels = np.array([[3, 4, 4, 5], [6, 7, 0, 0]], np.int32)
  return waves, lengths, labels, np.array([4, 2], np.int32)


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
def test_unpruned_loss_equals_full_rnnt_loss(predictor):
  waves, lengths, labels, label_lengths = _batch()
  model = _model(predictor, prune_range=labels.shape[1] + 1)
  variables = model.init(jax.random.key(0), waves, lengths, labels, label_lengths)
  losses, _ = model.apply(variables, waves, lengths, labels, label_lengths)
  assert set(losses) == {"simple", "pruned", "ctc"}

  def full_logits(module):
    encoder_out, enc_lengths = module.encode(waves, lengths)
    predictor_out = module.predictor_net(jnp.pad(labels, ((0, 0), (1, 0))))
    enc = module.joiner.encoder_proj(encoder_out)[:, :, None, :]
    pred = module.joiner.decoder_proj(predictor_out)[:, None, :, :]
    return module.joiner(enc, pred), enc_lengths

  logits, enc_lengths = model.apply(variables, method=full_logits)
  expected = rnnt_loss(logits, enc_lengths, labels, label_lengths)
  np.testing.assert_allclose(losses["pruned"], expected, rtol=1e-4)


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
def test_predictor_steps_match_sequence(predictor):
  waves, lengths, labels, label_lengths = _batch()
  model = _model(predictor)
  variables = model.init(jax.random.key(0), waves, lengths, labels, label_lengths)
  history = jnp.pad(labels, ((0, 0), (1, 0)))

  def sequence(module):
    return module.joiner.decoder_proj(module.predictor_net(history))

  expected = model.apply(variables, method=sequence)
  state = model.apply(variables, 2, method="predictor_initial_state")
  for u in range(history.shape[1]):
    out, state = model.apply(variables, state, history[:, u], method="predictor_step")
    np.testing.assert_allclose(out, expected[:, u], atol=1e-5)


def test_parameter_tree():
  waves, lengths, labels, label_lengths = _batch()
  variables = _model("stateless").init(jax.random.key(0), waves, lengths, labels, label_lengths)
  params = jax.tree.map(lambda x: x.value.shape, variables["params"],
                        is_leaf=lambda x: hasattr(x, "names"))
  assert set(params) == {"encoder", "predictor", "joiner", "simple_am_proj", "simple_lm_proj", "ctc_head"}
  assert params["predictor"]["embedding"]["embedding"] == (VOCAB, 32)
  assert params["predictor"]["conv"]["kernel"] == (2, 4, 32)
  assert params["joiner"]["encoder_proj"]["kernel"] == (64, 24)
  assert params["joiner"]["decoder_proj"]["kernel"] == (32, 24)
  assert params["joiner"]["output"]["kernel"] == (24, VOCAB)
  assert params["ctc_head"]["kernel"] == (64, VOCAB)
