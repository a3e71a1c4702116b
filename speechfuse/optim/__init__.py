"""Optimizers: the factory (AdamW with warmup + cosine / Noam / linear schedules, clipping) as optax chains."""

from speechfuse.optim.factory import OPTIMIZERS, default_config, make_optimizer
from speechfuse.optim.schedules import SCHEDULES, make_schedule
