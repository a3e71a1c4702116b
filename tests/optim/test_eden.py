"""The eden schedule: icefall's closed form at (batch, epoch) points in and after warm-up, through make_optimizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse import optim
from speechfuse.config import load_config, recipe_path


def _config(**overrides):
  config = optim.default_config()
  config.update(schedule="eden", learning_rate=0.045, warmup_steps=500, eden_steps_per_epoch=1000.0)
  config.update(overrides)
  return config


def _closed_form(batch, epoch, *, base=0.045, lr_batches=7500.0, lr_epochs=3.5, warmup=500, start=0.5):
  """icefall's Eden.get_lr, at its batch (the 1-based update index) and epoch."""
  factor = ((batch**2 + lr_batches**2) / lr_batches**2) ** -0.25 * ((epoch**2 + lr_epochs**2) / lr_epochs**2) ** -0.25
  ramp = 1.0 if batch >= warmup else start + (1.0 - start) * batch / warmup
  return base * factor * ramp


@pytest.mark.parametrize("count", [0, 1, 250, 498, 499, 500, 999, 1000, 7499, 20000, 123456])
def test_eden_is_icefalls_closed_form(count):
  _, schedule = optim.make_optimizer(_config(), total_steps=200000)
  with jax.enable_x64(True):
    value = float(schedule(count))
  assert value == pytest.approx(_closed_form(count + 1, count / 1000.0), rel=1e-9)


def test_eden_at_its_knees_and_in_warm_up():
  # Batch = lr_batches and epoch = lr_epochs: each factor is 2^-1/4.
  _, schedule = optim.make_optimizer(_config(eden_lr_batches=100.0, eden_lr_epochs=2.0, eden_steps_per_epoch=49.5,
                                             warmup_steps=10), total_steps=1000)
  assert float(schedule(99)) == pytest.approx(0.045 * 2**-0.5, rel=1e-6)
  # k2SSL pre-training's warm-up (from 0 over 5000 updates); the decay has begun by its end.
  _, schedule = optim.make_optimizer(_config(warmup_steps=5000, eden_warmup_start=0.0, eden_lr_epochs=10.5),
                                     total_steps=100000)
  assert float(schedule(2499)) == pytest.approx(_closed_form(2500, 2.499, warmup=5000, start=0.0, lr_epochs=10.5),
                                                rel=1e-6)
  assert float(schedule(2499)) < 0.045 / 2
  peak = float(schedule(4999))
  assert peak == pytest.approx(0.045 * (1 + (5000 / 7500) ** 2) ** -0.25 * (1 + (4.999 / 10.5) ** 2) ** -0.25, rel=1e-6)
  # No warm-up: the full rate from the first update.
  _, schedule = optim.make_optimizer(_config(warmup_steps=0), total_steps=1000)
  assert float(schedule(0)) == pytest.approx(_closed_form(1, 0.0, warmup=0), rel=1e-6)


def test_eden_needs_the_epoch_length():
  with pytest.raises(ValueError, match="eden_steps_per_epoch=0.0 must be > 0"):
    optim.make_optimizer(_config(eden_steps_per_epoch=0.0), total_steps=1000)


def test_the_epoch_length_comes_from_the_train_split_or_a_reference_duration():
  # The built-in small split: 1.569 h in 70 updates of ~80 s; k2SSL's reference epoch, LibriSpeech's 960 h.
  split_seconds = 1.569 * 3600
  derived = optim.with_epoch_length(_config(eden_steps_per_epoch=0.0), 70, split_seconds)
  assert derived.eden_steps_per_epoch == pytest.approx(70.0)
  reference = optim.with_epoch_length(_config(eden_steps_per_epoch=0.0, eden_epoch_hours=960.0), 70, split_seconds)
  assert reference.eden_steps_per_epoch == pytest.approx(960 * 3600 / (split_seconds / 70))
  explicit = _config(eden_steps_per_epoch=49.5)
  assert optim.with_epoch_length(explicit, 70, split_seconds) is explicit
  cosine = _config(schedule="cosine", eden_steps_per_epoch=0.0)
  assert optim.with_epoch_length(cosine, 70, split_seconds) is cosine
  _, schedule = optim.make_optimizer(reference, total_steps=1000)
  assert float(schedule(999)) == pytest.approx(_closed_form(1000, 999 / reference.eden_steps_per_epoch), rel=1e-6)


def test_scaled_adam_steps_with_the_eden_rate():
  """A scalar's first ScaledAdam update is -(1 - b1) * scalar_lr_scale * lr(0) * sign(g) (Adam's first step)."""
  config = _config(name="scaled_adam", eps=1e-12)
  tx, schedule = optim.make_optimizer(config, total_steps=10000)
  params = {"gain": jnp.asarray(1.0)}
  updates, _ = jax.jit(tx.update)({"gain": jnp.asarray(0.3)}, tx.init(params), params)
  np.testing.assert_allclose(updates["gain"], -0.1 * 0.1 * _closed_form(1, 0.0), rtol=1e-5)
  assert float(schedule(0)) == pytest.approx(_closed_form(1, 0.0), rel=1e-6)


def test_the_k2ssl_recipes_schedule_is_edens_closed_form():
  """configs/ssl_hubert.py with optimizer=scaled_adam: ScaledAdam under Eden with k2SSL's constants."""
  config = load_config(f"{recipe_path('ssl_hubert')}:base,backbone=zipformer_waveform,loss=ce,optimizer=scaled_adam")
  assert config.optimizer.name == "scaled_adam"
  # The trainer derives the epoch from the train split; LibriSpeech's 960 h in 600 s updates is 5760 of them.
  _, schedule = optim.make_optimizer(optim.with_epoch_length(config.optimizer, 5760, 960 * 3600.0),
                                     total_steps=config.total_steps)
  for count in (0, 2500, 5000, 60000):
    expected = _closed_form(count + 1, count / 5760.0, lr_epochs=10.5, warmup=5000, start=0.0)
    assert float(schedule(count)) == pytest.approx(expected, rel=1e-5)
