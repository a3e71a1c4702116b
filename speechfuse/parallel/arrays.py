"""Host-local numpy batches -> global jax.Arrays sharded over the data-parallel mesh axes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from speechfuse.parallel import mesh as mesh_lib


def numeric_only(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Drops host-only entries (strings such as `ids`, objects) that cannot live on a device."""
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.dtype.kind in "biuf":
      out[key] = value
  return out


def global_batch(host_batch: Mapping[str, Any], mesh: Mesh, rules: mesh_lib.LogicalRules) -> dict[str, jax.Array]:
  """Assembles every process's local batch into one global batch.

  Args:
    host_batch: this process's examples, {name: [local_batch, ...]}; every process passes the same
      local_batch, and non-numeric entries are dropped.
    mesh: the device mesh.
    rules: logical-axis rules; "batch" decides the data-parallel axes.

  Returns:
    {name: jax.Array [local_batch * process_count, ...]} sharded along the batch over the data axes.

  Raises:
    ValueError: the global batch does not split evenly over the data-parallel devices.
  """
  arrays = numeric_only(host_batch)
  sharding = mesh_lib.batch_sharding(mesh, rules)
  dp = mesh_lib.data_parallel_size(mesh, rules)
  out = {}
  for key, value in arrays.items():
    global_size = value.shape[0] * jax.process_count()
    if global_size % dp:
      raise ValueError(
          f"batch entry {key!r} has global batch {global_size}, not divisible by the {dp} data-parallel devices; "
          "make every bucket's batch size a multiple of the data-parallel size")
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Host arrays that are the same on every process (e.g. variables read from a checkpoint) -> jax.Arrays
  replicated over `mesh`."""
  sharding = mesh_lib.replicated(mesh)
  put = lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda index: np.asarray(x)[index])
  return jax.tree.map(put, tree)
