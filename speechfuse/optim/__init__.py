"""Optimizers: the factory (AdamW with warmup + cosine / Noam / linear schedules, clipping) as optax chains,
and freezing parameters (for the first updates, or for good)."""

from speechfuse.optim.factory import OPTIMIZERS, default_config, make_optimizer
from speechfuse.optim.freeze import freeze, freeze_for_steps
from speechfuse.optim.schedules import SCHEDULES, make_schedule
