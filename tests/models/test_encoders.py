"""The encoder registry (models.encoders): a newly registered architecture is hosted by the CTC, transducer and SSL
models through their configs alone; unknown architectures and keys fail naming them; a name is never replaced."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from speechfuse import audio, models
from speechfuse.audio import frames
from speechfuse.models import acoustic, ctc, encoders, ssl, transducer
from speechfuse.nn import subsampling


class StridedProjection(nn.Module):
  """A toy encoder over fbank frames: one strided convolution (conv1d x2 subsampling's frames), no blocks."""

  d_model: int = 16
  subsampling: str = "conv1d"
  subsampling_factor: int = 2
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, features, lengths, *, train=False, chunk_size=None, num_left_chunks=-1, frame_mask=None,
               mask_embedding=None):
    x = nn.Conv(self.d_model, (3,), strides=(2,), padding="VALID", dtype=self.dtype,
                param_dtype=self.param_dtype)(features)
    lengths = subsampling.subsampled_length(lengths, self.subsampling, self.subsampling_factor)
    if frame_mask is not None:
      x = jnp.where(frame_mask[..., None], mask_embedding, x)
    valid = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
    return jnp.where(valid[..., None], x, 0.0), lengths


TOY = encoders.EncoderType(StridedProjection, "fbank", lambda size: ml_collections.ConfigDict({"d_model": 16}),
                           lambda config, sample_rate: subsampling.fbank_grid(sample_rate, "conv1d", 2))


@pytest.fixture
def toy_encoder(monkeypatch):
  monkeypatch.setattr(encoders, "ENCODERS", dict(encoders.ENCODERS))  # registrations end with the test
  encoders.register("strided_projection", TOY)
  return "strided_projection"


def _inputs():
  rng = np.random.default_rng(0)
  waves = (rng.normal(size=(2, 8000)) * 2000).astype(np.int16)
  return waves, np.array([8000, 4800], np.int32)


def _cmvn():
  return audio.CMVNStats(np.zeros(80), np.full(80, 1e4), 1)


def test_registered_encoder_is_hosted_by_ctc_and_transducer_models(toy_encoder):
  waves, lengths = _inputs()
  expected_frames = [subsampling.subsampled_length(frames.kaldi_frame_count(n), "conv1d", 2) for n in lengths]
  for default_config in (ctc.default_config, transducer.default_config):
    config = default_config("conformer", "smoke")
    config.encoder = encoders.default_config(toy_encoder, "smoke")
    model = models.get_model(config, dtype=jnp.float32, vocab_size=7, cmvn=_cmvn())
    labels = np.array([[1, 2, 3], [4, 5, 0]], np.int32)
    args = () if default_config is ctc.default_config else (labels, np.array([3, 2], np.int32))
    variables = model.init(jax.random.key(0), waves, lengths, *args)
    assert "Conv_0" in variables["params"]["encoder"]
    x, out_lengths = model.apply(variables, waves, lengths, method="encode")
    assert x.shape == (2, max(expected_frames), 16)
    np.testing.assert_array_equal(out_lengths, expected_frames)
  assert not encoders.streams(config.encoder)  # no step API: no online column


def test_registered_encoder_pretrains_in_the_ssl_model(toy_encoder):
  config = ssl.default_config(toy_encoder, "smoke")
  grid = encoders.frame_grid(config.encoder, 16000)
  assert grid.frame_count(8000) == subsampling.subsampled_length(frames.kaldi_frame_count(8000), "conv1d", 2)
  model = models.get_model(config, dtype=jnp.float32, num_classes=5, head="hubert", cmvn=_cmvn())
  waves, lengths = _inputs()
  variables = model.init(jax.random.key(0), waves, lengths, jax.random.key(1))
  out = model.apply(variables, waves, lengths, jax.random.key(2), train=True,
                    rngs=dict(zip(acoustic.RNG_STREAMS, jax.random.split(jax.random.key(3), 3))))
  assert out.frame_mask.shape == (2, grid.frame_count(8000)) and bool(out.frame_mask.any())
  assert out.head.shape == (2, grid.frame_count(8000), config.final_dim)


def test_registry_refuses_a_second_encoder_of_a_name(toy_encoder):
  with pytest.raises(ValueError, match="strided_projection.*registered already"):
    encoders.register(toy_encoder, TOY)


def test_unknown_architecture_and_key_are_named():
  with pytest.raises(ValueError, match="architecture='emformer' is unknown"):
    encoders.default_config("emformer")
  config = encoders.default_config("conformer", "smoke")
  config.kernel = 3
  with pytest.raises(ValueError, match=r"\['kernel'\].*conformer"):
    encoders.make_encoder(config, jnp.float32)
