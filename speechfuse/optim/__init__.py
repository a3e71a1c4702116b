"""Optimizers: the factory (AdamW, icefall's ScaledAdam; warmup + cosine / Noam / linear / Eden schedules,
clipping) as optax chains, and freezing parameters (for the first updates, or for good)."""

from speechfuse.optim.factory import OPTIMIZERS, default_config, make_optimizer
from speechfuse.optim.freeze import freeze, freeze_for_steps
from speechfuse.optim.scaled_adam import scaled_adam
from speechfuse.optim.schedules import SCHEDULES, make_schedule, with_epoch_length
