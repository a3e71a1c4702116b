"""Learning-rate schedules by name: warmup + cosine, Noam (inverse square root), warmup + linear, constant, and
icefall's Eden.

Every schedule maps the optimizer's update count to a learning rate and peaks at `learning_rate` at the end
of warmup, so that switching schedules does not change the scale to tune; except Eden, whose `learning_rate` is
icefall's base_lr (its decay has begun by the end of warmup).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import ml_collections
import optax


def _cosine(config: ml_collections.ConfigDict, steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps, decay_steps=steps,
      end_value=config.learning_rate * config.end_learning_rate_factor)


def _linear(config: ml_collections.ConfigDict, steps: int) -> optax.Schedule:
  return optax.join_schedules([
      optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps),
      optax.linear_schedule(config.learning_rate, config.learning_rate * config.end_learning_rate_factor,
                            steps - config.warmup_steps),
  ], [config.warmup_steps])


def _noam(config: ml_collections.ConfigDict, steps: int) -> optax.Schedule:
  """Vaswani et al.'s d^-0.5 * min(t^-0.5, t * w^-1.5), rescaled so that the peak (t = w) is learning_rate."""
  del steps
  warmup = max(config.warmup_steps, 1)

  def schedule(count):
    t = jnp.maximum(count, 1).astype(jnp.float32)
    return config.learning_rate * jnp.minimum(t / warmup, jnp.sqrt(warmup / t))

  return schedule


def _constant(config: ml_collections.ConfigDict, steps: int) -> optax.Schedule:
  return optax.join_schedules([
      optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps),
      optax.constant_schedule(config.learning_rate),
  ], [config.warmup_steps])


def _eden(config: ml_collections.ConfigDict, steps: int) -> optax.Schedule:
  """icefall's Eden (egs/librispeech/ASR/zipformer/optim.py), in batches b and epochs e:

    lr = learning_rate * ((b^2 + B^2) / B^2)^-1/4 * ((e^2 + E^2) / E^2)^-1/4 * warmup,
    warmup = w0 + (1 - w0) b / W while b < W, else 1,

  with B = eden_lr_batches, E = eden_lr_epochs, W = warmup_steps, w0 = eden_warmup_start. As in icefall's
  training loops, b is the 1-based index of the update (count + 1) and e the epochs completed; e is continuous
  here, count / eden_steps_per_epoch (icefall steps it once per epoch), the audio seen over an epoch's audio:
  the trainer sets eden_steps_per_epoch from the train split when it is 0 (`with_epoch_length`).
  """
  del steps
  if config.eden_steps_per_epoch <= 0:
    raise ValueError(f"config.optimizer.eden_steps_per_epoch={config.eden_steps_per_epoch} must be > 0 for the eden "
                     "schedule: the trainer derives it from the train split; set it when building the optimizer "
                     "outside the trainer")
  base, lr_batches, lr_epochs = config.learning_rate, config.eden_lr_batches, config.eden_lr_epochs
  warmup, start, steps_per_epoch = config.warmup_steps, config.eden_warmup_start, config.eden_steps_per_epoch

  def schedule(count):
    count = jnp.asarray(count, jnp.result_type(float))
    batch, epoch = count + 1.0, count / steps_per_epoch
    decay = ((batch**2 + lr_batches**2) / lr_batches**2) ** -0.25 * ((epoch**2 + lr_epochs**2) / lr_epochs**2) ** -0.25
    ramp = jnp.where(batch >= warmup, 1.0, start + (1.0 - start) * batch / max(warmup, 1))
    return base * decay * ramp

  return schedule


def with_epoch_length(config: ml_collections.ConfigDict, epoch_batches: int,
                      epoch_seconds: float) -> ml_collections.ConfigDict:
  """config (optimizer) with eden's epoch length derived where it is 0: one pass over the train split is
  `epoch_batches` updates of `epoch_seconds` of audio in all, so an epoch of eden_epoch_hours of audio (> 0) or of
  the split (0) lasts that many hours over the mean audio of an update. Other schedules are returned as they are."""
  if config.schedule != "eden" or config.eden_steps_per_epoch > 0:
    return config
  seconds_per_update = epoch_seconds / epoch_batches
  epoch_hours = config.eden_epoch_hours or epoch_seconds / 3600.0
  derived = config.copy_and_resolve_references()
  derived.eden_steps_per_epoch = epoch_hours * 3600.0 / seconds_per_update
  return derived


SCHEDULES: dict[str, Callable[[ml_collections.ConfigDict, int], optax.Schedule]] = {
    "cosine": _cosine,
    "linear": _linear,
    "noam": _noam,
    "constant": _constant,
    "eden": _eden,
}


def make_schedule(config: ml_collections.ConfigDict, steps: int) -> optax.Schedule:
  """Builds config.schedule over `steps` optimizer updates (warmup included)."""
  if config.schedule not in SCHEDULES:
    raise ValueError(f"config.optimizer.schedule={config.schedule!r} is unknown; choose from {sorted(SCHEDULES)}")
  if not 0 <= config.warmup_steps <= steps:
    raise ValueError(f"config.optimizer.warmup_steps={config.warmup_steps} must lie in [0, {steps}] "
                     "(the schedule length: optimizer.schedule_steps, or total_steps when that is -1)")
  return SCHEDULES[config.schedule](config, steps)
