"""The SSL recipe's Conformer (configs/ssl_hubert.py) has exactly the CTC recipe's encoder at every CPU size, so
that configs/finetune_ctc.py loads it and OTF can fuse the two, and its waveform backbones have the fine-tuning
recipe's (shapes from jax.eval_shape: nothing is run)."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from speechfuse import audio
from speechfuse.config import load_config
from speechfuse.models import ctc, ssl

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def _encoder_shapes(model, *args) -> dict[tuple[str, ...], tuple[int, ...]]:
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))
  flat = traverse_util.flatten_dict(jax.tree.map(lambda x: getattr(x, "value", x), variables,
                                                 is_leaf=lambda x: hasattr(x, "value")))
  return {key: tuple(leaf.shape) for key, leaf in flat.items() if key[1] == "encoder"}


@pytest.mark.parametrize("size", ["smoke", "tiny"])
def test_ssl_conformer_encoder_matches_the_ctc_recipe(size):
  ssl_config = load_config(f"{CONFIGS / 'ssl_hubert.py'}:{size}")
  ctc_config = load_config(f"{CONFIGS / 'asr_conformer_ctc.py'}:{size}")
  cmvn = audio.CMVNStats(np.zeros(80), np.ones(80), 1)
  audio_in, lengths = jnp.zeros((1, 16000), jnp.int16), jnp.array([16000])
  ssl_model = ssl.from_config(ssl_config.model, jnp.float32, num_classes=100, head="hubert", cmvn=cmvn)
  ctc_model = ctc.from_config(ctc_config.model, jnp.float32, vocab_size=30, cmvn=cmvn)
  ssl_shapes = _encoder_shapes(ssl_model, audio_in, lengths, jax.random.key(1))
  ctc_shapes = _encoder_shapes(ctc_model, audio_in, lengths)
  assert ssl_shapes and ssl_shapes == ctc_shapes
  assert ssl_config.model.encoder.subsampling == ctc_config.model.encoder.subsampling
  assert ssl_config.task.targets.endswith(
      f"fbank_{ctc_config.model.encoder.subsampling}_x{ctc_config.model.encoder.subsampling_factor}")


@pytest.mark.parametrize("backbone", ["wav2vec2", "zipformer_waveform"])
def test_waveform_ssl_encoder_matches_the_finetuning_recipe(backbone):
  """configs/finetune_ctc.py with a waveform backbone builds the pre-training recipe's encoder, so its export
  loads (the SSL model's mask embedding lives in the encoder for these two)."""
  ssl_config = load_config(f"{CONFIGS / 'ssl_hubert.py'}:smoke,backbone={backbone},loss=ce")
  ctc_config = load_config(f"{CONFIGS / 'finetune_ctc.py'}:smoke,backbone={backbone}")
  audio_in, lengths = jnp.zeros((1, 16000), jnp.int16), jnp.array([16000])
  ssl_model = ssl.from_config(ssl_config.model, jnp.float32, num_classes=100, head="ce")
  ctc_model = ctc.from_config(ctc_config.model, jnp.float32, vocab_size=30, cmvn=None)
  ssl_shapes = _encoder_shapes(ssl_model, audio_in, lengths, jax.random.key(1))
  assert ssl_shapes and ssl_shapes == _encoder_shapes(ctc_model, audio_in, lengths)
