"""Checkpoints with orbax: train state + data iterator state per step, resume with fallback, averaging, export.

Layout: `<workdir>/checkpoints/<step>/{state, data}`. `state` is the TrainState (orbax StandardSave,
sharded arrays written by every process); `data` holds one JSON file per process with that process's
iterator state, so a resumed run continues each process's data stream exactly. Exported / averaged
checkpoints are flax variables ({"params": ..., other collections}) without optimizer state.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from speechfuse.train.state import TrainState

STATE = "state"
DATA = "data"


class IteratorStateHandler(ocp.CheckpointHandler):
  """Saves / restores one JSON iterator state per process (`process_<i>-of-<n>.json`)."""

  def _file(self, directory: epath.Path) -> epath.Path:
    return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

  def save(self, directory: epath.Path, args: IteratorStateSave) -> None:
    self._file(directory).write_text(json.dumps(args.state))

  def restore(self, directory: epath.Path, args: IteratorStateRestore | None = None) -> Any:
    path = self._file(directory)
    if not path.exists():
      saved = sorted(p.name for p in directory.iterdir())
      raise FileNotFoundError(f"{path} is missing: the checkpoint holds iterator states {saved}, written by a "
                              f"different number of processes than this run's {jax.process_count()}")
    return json.loads(path.read_text())

  def metadata(self, directory: epath.Path) -> None:
    return None

  def finalize(self, directory: epath.Path) -> None:
    pass

  def close(self) -> None:
    pass


@ocp.args.register_with_handler(IteratorStateHandler, for_save=True)
@dataclasses.dataclass
class IteratorStateSave(ocp.args.CheckpointArgs):
  state: Any


@ocp.args.register_with_handler(IteratorStateHandler, for_restore=True)
@dataclasses.dataclass
class IteratorStateRestore(ocp.args.CheckpointArgs):
  pass


class CheckpointMismatchError(ValueError):
  """A checkpoint whose parameter shapes do not fit the model built from the config."""


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
  return epath.Path(workdir).absolute() / "checkpoints"


def make_manager(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """CheckpointManager keeping the last `keep_checkpoints` steps plus the best one by an eval metric."""
  policies = [ocp.checkpoint_managers.LatestN(n=config.keep_checkpoints)]
  best_fn = None
  if config.best_checkpoint_metric:
    metric = config.best_checkpoint_metric
    best_fn = lambda metrics: metrics[metric]
    policies.append(ocp.checkpoint_managers.BestN(get_metric_fn=best_fn, reverse=config.best_checkpoint_mode == "min",
                                                  n=1, keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      best_fn=best_fn,  # makes orbax record each step's metrics (the policy above decides what is kept)
      best_mode=config.best_checkpoint_mode,
      enable_async_checkpointing=config.async_checkpointing,
      cleanup_tmp_directories=True,  # partial saves of a killed run
  )
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_handlers={STATE: ocp.StandardCheckpointHandler(), DATA: IteratorStateHandler()})


def save(manager: ocp.CheckpointManager, state: TrainState, iterator_state: Any,
         metrics: Mapping[str, float] | None = None, *, force: bool = False) -> None:
  """Starts saving (asynchronously if enabled) `state` and the iterator state at state.step."""
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                                DATA: IteratorStateSave(iterator_state)}),
               metrics=dict(metrics) if metrics else None, force=force)


def _path_name(path: tuple[Any, ...]) -> str:
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return "/".join(parts)


def check_shapes(saved: Any, abstract: TrainState, where: str) -> None:
  """Raises CheckpointMismatchError naming the first parameter whose saved shape differs from the model's."""
  saved_shapes = {_path_name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(saved)
                  if hasattr(leaf, "shape")}
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
    name = _path_name(path)
    if name not in saved_shapes:
      raise CheckpointMismatchError(f"{where}: the model has {name} {tuple(leaf.shape)} but the checkpoint lacks it; "
                                    "was it written with a different model config?")
    if saved_shapes[name] != tuple(leaf.shape):
      raise CheckpointMismatchError(f"{where}: parameter {name} has shape {saved_shapes[name]} in the checkpoint but "
                                    f"{tuple(leaf.shape)} in the model; the model config differs from the run's")


def restore_latest(manager: ocp.CheckpointManager, abstract: TrainState) -> tuple[TrainState, Any] | None:
  """Restores the newest checkpoint that reads back whole, deleting newer unreadable ones.

  Args:
    manager: from make_manager.
    abstract: ShapeDtypeStructs with shardings (state.abstract_state), the restore target.

  Returns:
    (state, iterator_state), or None if the directory holds no checkpoint.

  Raises:
    CheckpointMismatchError: a checkpoint's shapes do not fit the model (not skipped: the config is wrong).
    RuntimeError: checkpoints exist but none could be read.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for step in steps:
    where = f"checkpoint {manager.directory / str(step)}"
    try:
      saved = manager.item_metadata(step)[STATE]
      if saved is None:
        raise ValueError("no state metadata")
    except Exception as e:  # pylint: disable=broad-except  # any unreadable checkpoint is skipped alike
      failures.append((step, e))
      logging.warning("%s is unreadable (%s: %s); trying the previous one", where, type(e).__name__, e)
      continue
    check_shapes(saved, abstract, where)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract),
                                                                   DATA: IteratorStateRestore()}))
    except Exception as e:  # pylint: disable=broad-except
      failures.append((step, e))
      logging.warning("%s is corrupt (%s: %s); trying the previous one", where, type(e).__name__, e)
      continue
    for bad_step, _ in failures:
      # Training resumes before these steps and will save them again; orbax refuses to overwrite.
      logging.warning("deleting unreadable checkpoint at step %d", bad_step)
      manager.delete(bad_step)
    logging.info("resumed from %s", where)
    return restored[STATE], restored[DATA]
  if failures:
    details = "; ".join(f"step {s}: {type(e).__name__}: {e}" for s, e in failures)
    raise RuntimeError(f"no checkpoint in {manager.directory} could be read ({details}); move the directory away "
                       "to start afresh")
  return None


def _read_variables(directory: epath.Path, step: int) -> dict[str, Any]:
  """Params and extra collections of one train checkpoint, as host numpy arrays (optimizer state not read)."""
  path = directory / str(step) / STATE
  # The item's handler itself: a Checkpointer would look for step metadata inside the item and warn.
  handler = ocp.PyTreeCheckpointHandler()
  try:
    metadata = handler.metadata(path)
    wanted = {"params": metadata["params"], "extra": metadata["extra"]}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    restored = handler.restore(path, args=ocp.args.PyTreeRestore(wanted, restore_args=restore_args,
                                                                 partial_restore=True))
  finally:
    handler.close()
  return {"params": restored["params"], **restored["extra"]}


def write_variables(out: str | os.PathLike, variables: dict[str, Any]) -> str:
  """Writes flax variables ({"params": ..., other collections}) to the new directory `out`; returns its path."""
  out = epath.Path(out)
  if out.exists():
    raise FileExistsError(f"{out} exists; choose another output path or remove it")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(out.absolute(), variables)
  return os.fspath(out)


def _steps(workdir: str | os.PathLike) -> list[int]:
  directory = checkpoint_dir(workdir)
  steps = sorted(ocp.utils.checkpoint_steps(directory)) if directory.exists() else []
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {directory}: train the run first")
  return steps


def latest_variables(workdir: str | os.PathLike) -> tuple[dict[str, Any], int, str]:
  """The variables of the newest checkpoint in `workdir` (params and the other collections, no optimizer state),
  as host numpy arrays, for evaluation: (variables, its step, its path).

  Raises:
    FileNotFoundError: `workdir` holds no checkpoint (one line naming the directory).
  """
  directory, step = checkpoint_dir(workdir), _steps(workdir)[-1]
  return _read_variables(directory, step), step, os.fspath(directory / str(step))


def export_params(workdir: str | os.PathLike, out: str | os.PathLike, *, step: int | None = None) -> str:
  """Writes the variables of checkpoint `step` (default: latest) to `out` without optimizer state."""
  steps = _steps(workdir)
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ValueError(f"no checkpoint for step {step} in {checkpoint_dir(workdir)}; have {steps}")
  return write_variables(out, _read_variables(checkpoint_dir(workdir), step))


def average_checkpoints(workdir: str | os.PathLike, n: int, out: str | os.PathLike) -> str:
  """Averages the variables of the last `n` checkpoints (fairseq / icefall style) and writes them to `out`.

  Floating-point leaves (params and statistics such as BatchNorm's) are averaged in float64 and written in
  their dtype; integer leaves come from the newest checkpoint.
  """
  steps = _steps(workdir)
  if not 1 <= n <= len(steps):
    raise ValueError(f"cannot average the last {n} checkpoints: {checkpoint_dir(workdir)} has {len(steps)} ({steps})")
  chosen = steps[-n:]
  logging.info("averaging checkpoints at steps %s", chosen)
  newest = _read_variables(checkpoint_dir(workdir), chosen[-1])
  is_float = lambda x: np.issubdtype(x.dtype, np.floating)
  total = jax.tree.map(lambda x: x.astype(np.float64) if is_float(x) else x, newest)
  for step in chosen[:-1]:
    variables = _read_variables(checkpoint_dir(workdir), step)
    total = jax.tree.map(lambda t, x: t + x if is_float(x) else t, total, variables)
  average = jax.tree.map(lambda t, x: (t / n).astype(x.dtype) if is_float(x) else x, total, newest)
  return write_variables(out, average)


def load_variables(path: str | os.PathLike) -> dict[str, Any]:
  """Reads variables written by export_params / average_checkpoints as host numpy arrays."""
  path = epath.Path(path).absolute()
  with ocp.PyTreeCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path).item_metadata
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
