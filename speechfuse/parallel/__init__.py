"""Parallelism: the device mesh, logical-axis sharding rules, host-local -> global batches, multi-process start."""

from speechfuse.parallel.arrays import global_batch, numeric_only, put_replicated
from speechfuse.parallel.distributed import initialize as initialize_distributed
from speechfuse.parallel.mesh import (DEFAULT_LOGICAL_AXIS_RULES, MESH_AXES, axis_rules, batch_sharding, check_rules,
                                      create_mesh, data_parallel_size, logical_shardings, mesh_shape, replicated,
                                      sharding_context)
