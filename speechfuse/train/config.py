"""Trainer defaults every recipe starts from, and the start-of-run validation of a whole config."""

from __future__ import annotations

import math

import ml_collections

from speechfuse import optim, parallel

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def default_config() -> ml_collections.ConfigDict:
  """The trainer's fields with their defaults. Recipes fill `task`, `model`, `data` and override the rest."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = 10_000
  config.log_every_steps = 100
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3  # the latest N, plus the best by best_checkpoint_metric
  # Eval metric that ranks checkpoints ("" keeps only the latest); only checkpoints saved at eval steps rank.
  config.best_checkpoint_metric = "loss"
  config.best_checkpoint_mode = "min"  # "min" or "max"
  config.async_checkpointing = True
  # Device mesh: (axis, size) pairs over "data", "fsdp", "tensor"; one size may be -1 (the remaining devices).
  config.mesh = [("data", -1), ("fsdp", 1), ("tensor", 1)]
  # Logical axis name -> mesh axes, in priority order (flax linen rules).
  config.logical_axis_rules = [list(rule) for rule in parallel.DEFAULT_LOGICAL_AXIS_RULES]
  # Activations and matmuls in this dtype; parameters, optimizer state and losses stay float32.
  config.compute_dtype = "bfloat16"
  config.grad_accum_steps = 1  # micro-batches per step; the batch must split into them evenly
  config.max_grad_norm = 1.0  # clip to this global norm; 0 disables
  # Stop (after checkpointing the last good state) when more consecutive steps than this were non-finite.
  config.max_consecutive_nonfinite = 20
  # Trace profile.num_steps steps from profile.start_step into <workdir>/profile (0 steps: off).
  config.profile = ml_collections.ConfigDict({"start_step": 10, "num_steps": 0})
  # --mode=export writes <workdir>/export/params: the average of the last `average_last` checkpoints'
  # variables (1: the latest alone), without optimizer state, for inference and fusion.
  config.export = ml_collections.ConfigDict({"average_last": 1})
  config.distributed = parallel.distributed.default_config()
  config.optimizer = optim.default_config()
  config.task = ml_collections.ConfigDict({"name": ""})
  config.model = ml_collections.ConfigDict({"name": ""})
  config.data = ml_collections.ConfigDict({"batch_size": 32})  # global batch (all processes together)
  return config


def validate(config: ml_collections.ConfigDict, *, device_count: int, process_count: int) -> None:
  """Fails at start on a config that contradicts itself or the machine; messages name the key to change.

  Raises:
    ValueError: the first problem found.
  """
  for key in ("total_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints",
              "grad_accum_steps", "max_consecutive_nonfinite"):
    if config[key] < 1:
      raise ValueError(f"config.{key}={config[key]} must be a positive integer")
  if not 1 <= config.export.average_last <= config.keep_checkpoints:
    raise ValueError(f"config.export.average_last={config.export.average_last} must be between 1 and "
                     f"config.keep_checkpoints={config.keep_checkpoints} (only that many checkpoints are kept)")
  if config.max_grad_norm < 0:
    raise ValueError(f"config.max_grad_norm={config.max_grad_norm} must be >= 0 (0 disables clipping)")
  if config.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"config.compute_dtype={config.compute_dtype!r} must be one of {COMPUTE_DTYPES}")
  if config.best_checkpoint_mode not in ("min", "max"):
    raise ValueError(f"config.best_checkpoint_mode={config.best_checkpoint_mode!r} must be 'min' or 'max'")
  if config.profile.num_steps < 0 or config.profile.start_step < 0:
    raise ValueError("config.profile.start_step and config.profile.num_steps must be >= 0")
  for section in ("task", "model"):
    if not config[section].get("name"):
      raise ValueError(f"config.{section}.name is empty; the recipe must name a {section}")
  shape = parallel.mesh_shape(config.mesh, device_count)
  rules = parallel.axis_rules(config.logical_axis_rules)
  parallel.check_rules(rules, tuple(shape))
  data_parallel = math.prod(shape[axis] for axis in parallel.mesh.batch_axes(rules))
  batch_size = config.data.get("batch_size")
  if batch_size is not None:
    if batch_size % process_count:
      raise ValueError(f"config.data.batch_size={batch_size} must be divisible by the {process_count} processes")
    unit = data_parallel * config.grad_accum_steps
    if batch_size % unit:
      raise ValueError(
          f"config.data.batch_size={batch_size} must be divisible by data-parallel size {data_parallel} x "
          f"config.grad_accum_steps={config.grad_accum_steps} = {unit}; change the batch size, the mesh or the "
          "accumulation")
