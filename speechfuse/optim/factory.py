"""The optimizer factory: config.optimizer -> an optax GradientTransformation and its schedule.

The chain is clip-by-global-norm (if max_grad_norm > 0) -> the named optimizer with a scheduled learning
rate. AdamW's weight decay is decoupled and skips vectors (biases, norm scales), as in BERT / ViT training.
ScaledAdam (icefall's, for Zipformer; usually with the eden schedule) has no weight decay and clips by itself,
relative to the median recent gradient norm (clipping_scale): max_grad_norm does not apply to it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import ml_collections
import optax

from speechfuse.optim import schedules
from speechfuse.optim.scaled_adam import scaled_adam


def default_config() -> ml_collections.ConfigDict:
  """config.optimizer defaults; recipes override the fields they tune."""
  return ml_collections.ConfigDict({
      "name": "adamw",
      "learning_rate": 1e-3,  # peak value, reached at the end of warmup
      "schedule": "cosine",  # one of schedules.SCHEDULES
      "warmup_steps": 100,
      # Length of the schedule in updates; -1 = total_steps. Set it to keep the schedule when total_steps changes.
      "schedule_steps": -1,
      "end_learning_rate_factor": 0.0,  # cosine / linear end at learning_rate * this
      "b1": 0.9,
      "b2": 0.98,
      "eps": 1e-9,
      "weight_decay": 0.01,  # adamw only
      # scaled_adam: clip gradients to this x the median recent gradient norm (icefall: 2); 0 disables. It replaces
      # max_grad_norm. icefall's eps is 1e-8 and its base learning rate (with eden) 0.045.
      "clipping_scale": 2.0,
      # eden (icefall's defaults; k2SSL pre-training: lr_epochs 10.5, warmup_steps 5000, warmup_start 0.0).
      "eden_lr_batches": 7500.0,  # updates after which the rate decays markedly
      "eden_lr_epochs": 3.5,  # epochs after which the rate decays markedly
      "eden_warmup_start": 0.5,  # warmup rises linearly from this fraction (icefall's zipformer ASR recipe: 0.1)
      # Updates per epoch; 0: the trainer derives it from the train split (the audio of one pass over it / the audio
      # of one update), or from eden_epoch_hours of audio when that is > 0 (k2SSL's epochs of LibriSpeech's 960 h).
      "eden_steps_per_epoch": 0.0,
      "eden_epoch_hours": 0.0,
  })


def _decay_mask(params):
  # Matrices decay, vectors (biases, LayerNorm / BatchNorm scales) do not.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _adamw(config: ml_collections.ConfigDict, learning_rate: optax.Schedule) -> optax.GradientTransformation:
  return optax.adamw(learning_rate, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay,
                     mask=_decay_mask)


def _scaled_adam(config: ml_collections.ConfigDict, learning_rate: optax.Schedule) -> optax.GradientTransformation:
  return scaled_adam(learning_rate, b1=config.b1, b2=config.b2, eps=config.eps,
                     clipping_scale=config.clipping_scale if config.clipping_scale > 0 else None)


OPTIMIZERS: dict[str, Callable[[ml_collections.ConfigDict, optax.Schedule], optax.GradientTransformation]] = {
    "adamw": _adamw,
    "scaled_adam": _scaled_adam,
}

# Optimizers that clip their gradients themselves: make_optimizer puts no global-norm clipping before them.
SELF_CLIPPING = frozenset({"scaled_adam"})


def make_optimizer(config: ml_collections.ConfigDict, *, total_steps: int,
                   max_grad_norm: float = 0.0) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optimizer named by config.name.

  Args:
    config: config.optimizer (see default_config).
    total_steps: the run's total optimizer updates; the schedule spans it unless config.schedule_steps > 0.
    max_grad_norm: clip gradients to this global norm first; 0 disables clipping. Ignored by the SELF_CLIPPING
      optimizers (scaled_adam), which would otherwise clip twice.

  Returns:
    (transformation, schedule): schedule(count) is the learning rate at update `count`, for logging.
  """
  if config.name not in OPTIMIZERS:
    raise ValueError(f"config.optimizer.name={config.name!r} is unknown; choose from {sorted(OPTIMIZERS)}")
  steps = config.schedule_steps if config.schedule_steps > 0 else total_steps
  schedule = schedules.make_schedule(config, steps)
  clip_first = max_grad_norm > 0 and config.name not in SELF_CLIPPING
  transforms = [optax.clip_by_global_norm(max_grad_norm)] if clip_first else []
  transforms.append(OPTIMIZERS[config.name](config, schedule))
  return optax.chain(*transforms), schedule
