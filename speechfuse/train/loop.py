"""The generic training loop: `train_and_evaluate(config, workdir, task)` for every recipe, and `evaluate` (a task's
eval-split metrics of given variables, for eval mode). The task is built by the caller (speechfuse.run, from the
speechfuse.tasks registry) after `initialize(config)`.

Each step: next host batch -> global sharded arrays -> one jitted step (state donated). Dispatch is
asynchronous: the host reads the next batch while the devices compute, and the loop only waits on the device
at log, eval and checkpoint steps, plus once per step on the previous step's non-finite counter (already
computed by then, so the device stays busy).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from speechfuse import optim, parallel
from speechfuse.config import write_json
from speechfuse.train import checkpoint, metrics as metrics_lib, state as state_lib, step as step_lib
from speechfuse.train import config as config_lib
from speechfuse.train.task import CheckpointableIterator, Task


class NonFiniteError(RuntimeError):
  """Too many consecutive steps had a non-finite loss or gradient."""


@dataclasses.dataclass
class Run:
  """What the train mode (and the loop-overhead benchmark) runs on: mesh, task, state, jitted steps."""
  mesh: Mesh
  rules: parallel.mesh.LogicalRules
  task: Task
  schedule: optax.Schedule
  train_iter: CheckpointableIterator
  state: state_lib.TrainState
  manager: Any
  train_step: Callable[..., Any]
  eval_step: Callable[..., Any]

  def global_batch(self, host_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    return parallel.global_batch(host_batch, self.mesh, self.rules)

  def shard(self) -> dict[str, int]:
    return {"shard_index": jax.process_index(), "shard_count": jax.process_count()}


def _peek(iterator: CheckpointableIterator) -> dict[str, np.ndarray]:
  """The next batch, without consuming it."""
  position = iterator.get_state()
  batch = next(iterator)
  iterator.set_state(position)
  return batch


def initialize(config: ml_collections.ConfigDict) -> None:
  """What must happen before a task is built: multi-process start (config.distributed), then the config's
  validation against the machine (device and process counts)."""
  parallel.initialize_distributed(config.distributed)
  config_lib.validate(config, device_count=jax.device_count(), process_count=jax.process_count())


def _optimizer_config(config: ml_collections.ConfigDict,
                      train_iter: CheckpointableIterator) -> ml_collections.ConfigDict:
  """config (optimizer) with what it leaves to the train split filled in: eden's updates per epoch."""
  if config.schedule != "eden" or config.eden_steps_per_epoch > 0:
    return config
  if not hasattr(train_iter, "epoch_audio"):
    raise ValueError("config.optimizer.eden_steps_per_epoch=0 asks for the epoch length of the train split, which "
                     "this task's train input does not plan; set it")
  derived = optim.with_epoch_length(config, *train_iter.epoch_audio())
  logging.info("eden: an epoch is %.1f updates", derived.eden_steps_per_epoch)
  return derived


def prepare(config: ml_collections.ConfigDict, workdir: str | os.PathLike, task: Task) -> Run:
  """Builds everything around `task` and restores the latest checkpoint or initialises the state.

  Call `initialize(config)` before building the task. Call the jitted steps it returns under
  `parallel.sharding_context(mesh, rules)`, where model code finds its sharding rules.
  """
  mesh = parallel.create_mesh(config.mesh)
  rules = parallel.axis_rules(config.logical_axis_rules)
  train_iter = task.make_input("train", seed=config.seed, shard_index=jax.process_index(),
                               shard_count=jax.process_count())
  tx, schedule = optim.make_optimizer(_optimizer_config(config.optimizer, train_iter),
                                      total_steps=config.total_steps, max_grad_norm=config.max_grad_norm)
  tx = task.wrap_optimizer(tx)
  example = state_lib.example_batch(_peek(train_iter))
  manager = checkpoint.make_manager(workdir, config)
  with parallel.sharding_context(mesh, rules):
    abstract, shardings = state_lib.abstract_state(task, tx, config.seed, example, mesh, rules)
    restored = checkpoint.restore_latest(manager, abstract)
    if restored is None:
      state = state_lib.create_state(task, tx, config.seed, example, shardings)
    else:
      state, iterator_state = restored
      train_iter.set_state(iterator_state)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  logging.info("model: %s parameters; mesh %s; step %d", f"{num_params:,}", dict(mesh.shape),
               int(jax.device_get(state.step)))
  batch_sharding = parallel.batch_sharding(mesh, rules)
  replicated = parallel.replicated(mesh)
  train_step = jax.jit(step_lib.make_train_step(task, tx, grad_accum_steps=config.grad_accum_steps),
                       in_shardings=(shardings, batch_sharding), out_shardings=(shardings, replicated),
                       donate_argnums=0)
  eval_step = jax.jit(step_lib.make_eval_step(task), in_shardings=(shardings, batch_sharding),
                      out_shardings=replicated)
  return Run(mesh, rules, task, schedule, train_iter, state, manager, train_step, eval_step)


def _run_eval(run: Run, state: state_lib.TrainState, seed: int) -> dict[str, float]:
  def eval_step(host_batch):
    return jax.device_get(run.eval_step(state, run.global_batch(host_batch)))

  return run.task.evaluate(eval_step, run.task.make_input("eval", seed=seed, **run.shard()))


def _window_means(window: list[dict[str, jax.Array]]) -> dict[str, float]:
  """Means of the step metrics since the last log; loss-like metrics over finite steps only."""
  host = jax.device_get(window)
  finite = np.array([m["finite"] for m in host]) > 0
  out = {"skipped_steps": float((~finite).sum())}
  for key in host[0]:
    if key in ("finite", "nonfinite_run"):
      continue
    values = np.array([m[key] for m in host], np.float64)[finite]
    out[key] = float(values.mean()) if values.size else float("nan")
  return out


class _PreemptionWatcher:
  """Turns SIGTERM into "checkpoint after this step and stop".

  With one process a Python signal handler sets a flag. With several, jax's preemption service (started by
  jax.distributed, it catches SIGTERM itself) makes every process agree on the step to stop at.
  """

  def __init__(self, manager: Any):
    self._manager = manager
    self._requested = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint after this step, then stopping")
    self._requested = True

  def requested(self, step: int) -> bool:
    if jax.process_count() > 1:
      return self._manager.reached_preemption(step)
    return self._requested

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class _Profiler:
  """Traces steps [start, start + num_steps) into <workdir>/profile on process 0."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike):
    self._start, self._stop = config.start_step, config.start_step + config.num_steps
    self._enabled = config.num_steps > 0 and jax.process_index() == 0
    self._directory = os.path.join(workdir, "profile")
    self._active = False

  def before_step(self, step: int) -> None:
    if self._enabled and step == self._start:
      jax.profiler.start_trace(self._directory)
      self._active = True

  def after_step(self, step: int, state: Any) -> None:
    if self._active and step >= self._stop:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self._active = False
      logging.info("profile of steps %d-%d written to %s", self._start, self._stop - 1, self._directory)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       task: Task) -> state_lib.TrainState:
  """Trains `task` (config.task with config.model) to config.total_steps, resuming from `workdir` if it holds
  checkpoints.

  Writes <workdir>/config.json, checkpoints/, metrics.jsonl, tensorboard/ (and profile/ on request). A resumed
  run first drops the metrics its predecessor logged after the checkpoint it resumes from, so that every step is
  in the metrics once. On SIGTERM it saves a checkpoint and returns early; rerunning the same command resumes.

  Returns:
    The final TrainState (sharded jax.Arrays).

  Raises:
    ValueError: the checkpoint does not fit the model.
    NonFiniteError: more than config.max_consecutive_nonfinite consecutive non-finite steps; the last good state
      is checkpointed first.
  """
  run = prepare(config, workdir, task)
  if jax.process_index() == 0:
    write_json(config, workdir)
  state, manager = run.state, run.manager
  step = int(jax.device_get(state.step))
  progress = metrics_lib.Progress(step, config.total_steps)
  writer = metrics_lib.MetricWriter(workdir, resume_step=step)
  watcher = _PreemptionWatcher(manager)
  profiler = _Profiler(config.profile, workdir)
  window, previous, saved_step = [], None, step

  def save(metrics: Mapping[str, float] | None = None, force: bool = False) -> None:
    nonlocal saved_step
    if step != saved_step:
      checkpoint.save(manager, state, run.train_iter.get_state(), metrics, force=force)
      saved_step = step

  def check_finite(metrics: Mapping[str, jax.Array], metrics_step: int) -> None:
    run_length = int(metrics["nonfinite_run"])
    if run_length > config.max_consecutive_nonfinite:
      save(force=True)
      manager.wait_until_finished()
      raise NonFiniteError(
          f"{run_length} consecutive steps up to step {metrics_step} had a non-finite loss or gradient "
          f"(config.max_consecutive_nonfinite={config.max_consecutive_nonfinite}); the last good parameters are "
          f"checkpointed at step {step} in {checkpoint.checkpoint_dir(workdir)}. Lower the learning rate, check the "
          "data around these steps, or use compute_dtype='float32'.")

  try:
    with parallel.sharding_context(run.mesh, run.rules):
      while step < config.total_steps:
        profiler.before_step(step)
        host_batch = next(run.train_iter)
        state, metrics = run.train_step(state, run.global_batch(host_batch))
        step += 1
        # Every process reads its own share; multiplying assumes balanced shards.
        progress.add_audio(run.task.audio_seconds(host_batch) * jax.process_count())
        window.append(metrics)
        profiler.after_step(step, state)
        if previous is not None:
          check_finite(previous, step - 1)
        previous = metrics
        if step % config.log_every_steps == 0 or step == config.total_steps:
          # The optimizer skips non-finite steps, so its schedule stands at the count of updates it applied.
          updates = step - int(jax.device_get(state.nonfinite_total))
          means = {**_window_means(window), **progress.measure(step), "learning_rate": float(run.schedule(updates))}
          window = []
          writer.write(step, "train", means)
          metrics_lib.log_progress(progress.line(step, means))
        eval_metrics = None
        if step % config.eval_every_steps == 0 or step == config.total_steps:
          eval_metrics = _run_eval(run, state, config.seed)
          writer.write(step, "eval", eval_metrics)
          metrics_lib.log_progress(f"eval at step {step}: " +
                                   ", ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))
        if step % config.checkpoint_every_steps == 0 or step == config.total_steps:
          save(eval_metrics)
        if watcher.requested(step):
          save(force=True)
          logging.warning("stopped at step %d on SIGTERM; checkpoint saved, rerun to resume", step)
          break
      if previous is not None:
        check_finite(previous, step)
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.close()
    watcher.close()
  return state


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, task: Task, variables: dict[str, Any],
             step: int) -> dict[str, float]:
  """The task's eval-split metrics of `variables` (no optimizer, no training input); writes an "eval" line at
  `step` to <workdir>/metrics.jsonl.

  Args:
    variables: {"params": ..., other collections} as host arrays (checkpoint.latest_variables).
  """
  mesh = parallel.create_mesh(config.mesh)
  rules = parallel.axis_rules(config.logical_axis_rules)
  with parallel.sharding_context(mesh, rules):
    variables = parallel.put_replicated(variables, mesh)
    batch_sharding = parallel.batch_sharding(mesh, rules)
    eval_step = jax.jit(task.eval_step, in_shardings=(parallel.replicated(mesh), batch_sharding),
                        out_shardings=parallel.replicated(mesh))

    def host_eval_step(host_batch):
      return jax.device_get(eval_step(variables, parallel.global_batch(host_batch, mesh, rules)))

    results = task.evaluate(host_eval_step, task.make_input("eval", seed=config.seed, shard_index=jax.process_index(),
                                                            shard_count=jax.process_count()))
  writer = metrics_lib.MetricWriter(workdir)
  writer.write(step, "eval", results)
  writer.close()
  return results
