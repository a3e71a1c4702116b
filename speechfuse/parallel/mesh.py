"""Device mesh from the config, and logical-axis rules that turn logical names into shardings.

`config.mesh` lists (axis name, size) pairs such as [("data", -1), ("fsdp", 1), ("tensor", 1)]; one size
may be -1 and takes whatever devices the others leave. `config.logical_axis_rules` maps the logical names
that models write ("batch", "embed", "mlp", ...) to mesh axes, in priority order (flax linen semantics: a
mesh axis is used at most once per array, so `embed` falls back to unsharded on activations whose
`batch` already took "fsdp").
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Parameters shard "embed" over fsdp (ZeRO-3 style) and the wide axes over tensor; activations shard
# "batch" over every data-parallel axis. Names with no mesh axis are listed so that a typo in a model
# (an unknown name) stays visible in `unknown_logical_axes`.
DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("time", None),
    ("mel", None),
    ("frame", None),
)

LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def mesh_shape(mesh_spec: Sequence[Sequence[Any]], device_count: int) -> dict[str, int]:
  """Resolves config.mesh against the device count.

  Args:
    mesh_spec: (name, size) pairs; at most one size is -1 (fill), the rest positive.
    device_count: jax.device_count() (global, over all processes).

  Returns:
    {axis name: size} in config order, whose product is `device_count`.

  Raises:
    ValueError: unknown or repeated names, several -1, non-positive sizes, or a product that does not
      match the device count; the message says what to change in config.mesh.
  """
  names = [str(name) for name, _ in mesh_spec]
  sizes = [int(size) for _, size in mesh_spec]
  if len(set(names)) != len(names) or not set(names) <= set(MESH_AXES):
    raise ValueError(f"config.mesh axis names must be distinct names from {MESH_AXES}, got {names}")
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh {list(zip(names, sizes))}: at most one size may be -1 (fill)")
  if any(size < 1 and size != -1 for size in sizes):
    raise ValueError(f"config.mesh {list(zip(names, sizes))}: sizes must be positive or -1")
  fixed = math.prod(size for size in sizes if size != -1)
  if -1 in sizes:
    if device_count % fixed:
      raise ValueError(
          f"config.mesh {list(zip(names, sizes))}: the fixed axes use {fixed} devices, which does not divide "
          f"the {device_count} available; choose sizes whose product divides {device_count}")
    sizes[sizes.index(-1)] = device_count // fixed
  elif fixed != device_count:
    raise ValueError(
        f"config.mesh {list(zip(names, sizes))} needs {fixed} devices but {device_count} are available; "
        f"make the product {device_count} or set one axis to -1")
  return dict(zip(names, sizes))


def create_mesh(mesh_spec: Sequence[Sequence[Any]], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the jax Mesh for config.mesh over `devices` (default: all), topology-aware where possible."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_spec, len(devices))
  try:
    device_array = mesh_utils.create_device_mesh(tuple(shape.values()), devices)
  except (ValueError, NotImplementedError, AssertionError):
    # Topology-aware placement only knows some platforms (TPU, GPU slices); fall back to device order.
    device_array = np.asarray(devices).reshape(tuple(shape.values()))
  return Mesh(device_array, tuple(shape), axis_types=(AxisType.Auto,) * len(shape))


def axis_rules(rules_spec: Sequence[Sequence[Any]]) -> LogicalRules:
  """Normalises config.logical_axis_rules (lists from a ConfigDict or JSON) into flax's tuple form."""
  rules = []
  for logical, mesh_axes in rules_spec:
    if isinstance(mesh_axes, (list, tuple)):
      mesh_axes = tuple(str(axis) for axis in mesh_axes)
    rules.append((str(logical), mesh_axes))
  return tuple(rules)


def check_rules(rules: LogicalRules, mesh_axis_names: Sequence[str]) -> None:
  """Raises ValueError if a rule names a mesh axis that the mesh lacks."""
  for logical, mesh_axes in rules:
    axes = mesh_axes if isinstance(mesh_axes, tuple) else (mesh_axes,)
    unknown = [axis for axis in axes if axis is not None and axis not in mesh_axis_names]
    if unknown:
      raise ValueError(f"config.logical_axis_rules maps {logical!r} to mesh axes {unknown}, which config.mesh "
                       f"lacks (it has {tuple(mesh_axis_names)})")


def logical_shardings(logical_specs: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """Tree of logical PartitionSpecs (nn.get_partition_spec) -> tree of NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_axes(rules: LogicalRules) -> tuple[str, ...]:
  """The mesh axes that the logical "batch" axis shards over (the data-parallel axes)."""
  mesh_axes = nn.logical_to_mesh_axes(("batch",), rules)[0]
  if mesh_axes is None:
    return ()
  return mesh_axes if isinstance(mesh_axes, tuple) else (mesh_axes,)


def data_parallel_size(mesh: Mesh, rules: LogicalRules) -> int:
  """How many ways the batch is split: the product of the mesh sizes of `batch_axes`."""
  return math.prod(mesh.shape[axis] for axis in batch_axes(rules))


def batch_sharding(mesh: Mesh, rules: LogicalRules) -> NamedSharding:
  """Sharding of a batch array [batch, ...]: leading axis over the data-parallel axes, the rest replicated."""
  axes = batch_axes(rules)
  return NamedSharding(mesh, PartitionSpec(axes if axes else None))


def replicated(mesh: Mesh) -> NamedSharding:
  """Fully replicated sharding on `mesh`."""
  return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
  """The context in which model code is traced: `nn.with_logical_constraint` finds the mesh and the rules here."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
