"""Multi-process start: TPU pods, multi-GPU nodes and several local CPU processes, behind config.distributed."""

from __future__ import annotations

import jax
import ml_collections
from absl import logging


def default_config() -> ml_collections.ConfigDict:
  """config.distributed: off by default; on TPU pods / SLURM / Kubernetes the empty fields are auto-detected."""
  return ml_collections.ConfigDict({
      "enabled": False,
      "coordinator_address": "",  # host:port of process 0; "" = detect from the cluster environment
      "num_processes": 0,  # 0 = detect
      "process_id": -1,  # -1 = detect
      # CPU processes exchange collectives through gloo; the alternative is "mpi".
      "cpu_collectives": "gloo",
  })


def initialize(config: ml_collections.ConfigDict) -> None:
  """Calls jax.distributed.initialize once if config.enabled; must run before anything touches a device."""
  if not config.enabled or jax.distributed.is_initialized():
    return
  jax.config.update("jax_cpu_collectives_implementation", config.cpu_collectives)
  kwargs = {}
  if config.coordinator_address:
    kwargs["coordinator_address"] = config.coordinator_address
  if config.num_processes > 0:
    kwargs["num_processes"] = config.num_processes
  if config.process_id >= 0:
    kwargs["process_id"] = config.process_id
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
