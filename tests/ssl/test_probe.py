"""Tests of speechfuse.ssl.probe: the regression against scikit-learn, frames and phones against the encoder."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import ssl_testlib
from sklearn import linear_model

from speechfuse.nn import subsampling
from speechfuse import audio, models
from speechfuse.data import inputs
from speechfuse.models import ctc
from speechfuse.ssl import probe, quality


def _two_block_conformer(tmp_path):
  """The tone dataset's data config and a 2-block smoke Conformer-CTC: (data, model config, model, variables)."""
  data = inputs.default_config()
  data.corpus, data.train_split, data.eval_split = str(ssl_testlib.write_tone_dataset(tmp_path)), "train", "dev"
  config = ctc.default_config("conformer", "smoke")
  config.encoder.num_blocks = 2
  stats = audio.CMVNStats(np.zeros(80), np.full(80, 1e6), 100)
  model = models.get_model(config, dtype=jnp.float32, vocab_size=5, cmvn=stats)
  variables = model.init(jax.random.key(0), np.zeros((1, 16000), np.int16), np.array([16000], np.int32))
  return data, config, model, variables


def test_fit_matches_scikit_learn_logistic_regression():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 6)) * 1.5
  y = rng.integers(0, 4, 600)
  x = (centres[y] + rng.normal(size=(600, 6))) * rng.uniform(0.1, 10.0, 6) + rng.normal(size=6) * 3
  l2 = 1e-2
  fitted = probe.fit(x, y, 4, l2=l2, steps=100)
  standardised = (x - x.mean(0)) / (x.std(0) + 1e-6)
  reference = linear_model.LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(standardised, y)
  np.testing.assert_allclose(probe.predict(fitted, x), reference.predict_proba(standardised), atol=1e-4)
  assert probe.accuracy(fitted, x, y) == pytest.approx(reference.score(standardised, y))


def test_layer_frames_line_up_with_the_encoder_and_the_phone_timings(tmp_path):
  data, config, model, variables = _two_block_conformer(tmp_path)
  phone_ids = {}
  layers, phones = probe.layer_frames(model, variables, data, "train", 4, phone_ids, batch_size=3)
  grid = subsampling.fbank_grid(16000, config.encoder.subsampling, config.encoder.subsampling_factor)
  records = [inputs.open_split(data, "train")[i] for i in range(4)]
  frames = [grid.frame_count(len(r["audio"])) for r in records]
  assert [x.shape for x in layers] == [(sum(frames), 80)] + [(sum(frames), config.encoder.d_model)] * 2
  # Each frame's phone is the one under its centre, utterance by utterance in order.
  expected = np.concatenate([quality.frame_phones(r["phonemes"], r["phoneme_timings"],
                                                        grid.centers(n) / 16000, dict(phone_ids))
                             for r, n in zip(records, frames)])
  np.testing.assert_array_equal(phones, expected)
  assert set(phone_ids) <= set(ssl_testlib.PHONES) | {quality.SILENCE}
  # The fbank layer holds the frontend's frames nearest each encoder frame: the same utterance, apply alone.
  features, _ = model.apply(variables, records[1]["audio"][None], np.array([len(records[1]["audio"])]),
                            method=lambda m, a, n: m.frontend(a, n))
  start = frames[0]
  nearest = np.round((grid.centers(frames[1]) - 200) / 160).astype(int)
  np.testing.assert_allclose(layers[0][start:start + frames[1]], np.asarray(features)[0, nearest], atol=1e-4)
  # Tones are linearly separable from the log-mel frames: the probe finds them on held-out utterances.
  scores = probe.layer_accuracies(model, variables, data, train_utterances=6, eval_utterances=3)
  assert scores["layers"] == ["fbank", "block 1", "block 2"] and scores["accuracy"][0] > 0.9, scores


def test_attention_statistics_of_uniform_attention_match_the_closed_form(tmp_path):
  data, config, model, variables = _two_block_conformer(tmp_path)
  random_init = probe.attention_statistics(model, variables, data, "train", utterances=5, batch_size=2)
  # Queries and their position biases at zero: every score is 0, so each query attends uniformly over its
  # utterance's L frames: entropy log L, mean distance (L^2 - 1) / (3 L).
  uniform = jax.tree_util.tree_map(np.asarray, nn.unbox(variables))
  for block in ("blocks_0", "blocks_1"):
    mhsa = uniform["params"]["encoder"][block]["mhsa"]
    for name in ("pos_bias_u", "pos_bias_v"):
      mhsa[name] = np.zeros_like(mhsa[name])
    mhsa["query"] = jax.tree_util.tree_map(np.zeros_like, mhsa["query"])
  stats = probe.attention_statistics(model, uniform, data, "train", utterances=5, batch_size=2)
  grid = subsampling.fbank_grid(16000, config.encoder.subsampling, config.encoder.subsampling_factor)
  lengths = np.array([grid.frame_count(len(inputs.open_split(data, "train")[i]["audio"])) for i in range(5)])
  assert stats["layers"] == ["encoder/blocks_0/mhsa", "encoder/blocks_1/mhsa"] == random_init["layers"]
  np.testing.assert_allclose(stats["entropy"], np.sum(lengths * np.log(lengths)) / np.sum(lengths), rtol=1e-5)
  np.testing.assert_allclose(stats["uniform_entropy"], stats["entropy"][0], rtol=1e-5)
  np.testing.assert_allclose(stats["distance"], np.sum((lengths ** 2 - 1) / 3) / np.sum(lengths), rtol=1e-5)
  # A random initialisation attends almost uniformly, never more spread than uniform.
  assert all(0.5 * stats["entropy"][0] < e <= stats["entropy"][0] + 1e-5 for e in random_init["entropy"])
