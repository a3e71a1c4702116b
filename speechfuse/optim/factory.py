"""The optimizer factory: config.optimizer -> an optax GradientTransformation and its schedule.

The chain is clip-by-global-norm (if max_grad_norm > 0) -> the named optimizer with a scheduled learning
rate. Weight decay is decoupled (AdamW) and skips vectors (biases, norm scales), as in BERT / ViT training.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import ml_collections
import optax

from speechfuse.optim import schedules


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
      "weight_decay": 0.01,
  })


def _decay_mask(params):
  # Matrices decay, vectors (biases, LayerNorm / BatchNorm scales) do not.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _adamw(config: ml_collections.ConfigDict, learning_rate: optax.Schedule) -> optax.GradientTransformation:
  return optax.adamw(learning_rate, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay,
                     mask=_decay_mask)


OPTIMIZERS: dict[str, Callable[[ml_collections.ConfigDict, optax.Schedule], optax.GradientTransformation]] = {
    "adamw": _adamw,
}


def make_optimizer(config: ml_collections.ConfigDict, *, total_steps: int,
                   max_grad_norm: float = 0.0) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optimizer named by config.name.

  Args:
    config: config.optimizer (see default_config).
    total_steps: the run's total optimizer updates; the schedule spans it unless config.schedule_steps > 0.
    max_grad_norm: clip gradients to this global norm first; 0 disables clipping.

  Returns:
    (transformation, schedule): schedule(count) is the learning rate at update `count`, for logging.
  """
  if config.name not in OPTIMIZERS:
    raise ValueError(f"config.optimizer.name={config.name!r} is unknown; choose from {sorted(OPTIMIZERS)}")
  steps = config.schedule_steps if config.schedule_steps > 0 else total_steps
  schedule = schedules.make_schedule(config, steps)
  transforms = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm > 0 else []
  transforms.append(OPTIMIZERS[config.name](config, schedule))
  return optax.chain(*transforms), schedule
