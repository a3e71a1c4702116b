"""Shared by the trainer tests: a tiny config, a test task, and a script mode for subprocess scenarios.

Script mode (`python trainer_testlib.py '<json overrides>' WORKDIR OUT.npz`, see `main`) trains with the tiny
config updated from dotted keys ({"mesh": [["data", 8]], "task.batch_sleep": 0.02}) and writes the final
params, flattened, to OUT.npz. The 8-device, SIGTERM and multi-process tests run it in fresh interpreters
(`run_script`), since the device count is fixed when jax starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np

import synthetic_testlib as frames
from speechfuse import run as run_lib, tasks, train

TRAINER_TESTLIB = os.path.abspath(__file__)


def run_script(overrides, workdir, out, *, devices: int = 1, env: dict[str, str] | None = None,
               wait: bool = True, timeout: float = 600) -> subprocess.Popen | subprocess.CompletedProcess:
  """Runs `main` in a fresh interpreter with `devices` fake CPU devices; raises if a waited-for run fails."""
  full_env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
              "JAX_PLATFORMS": "cpu", **(env or {})}
  command = [sys.executable, TRAINER_TESTLIB, json.dumps(overrides), str(workdir), str(out)]
  if not wait:
    return subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  result = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=timeout)
  if result.returncode:
    raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stderr[-5000:]}")
  return result


def run_outputs(stdout: str) -> list[dict]:
  """The JSON lines `main` printed."""
  return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """8 steps of the test task, eval and checkpoint every 4, float32, global batch 8."""
  config = train.default_config()
  config.total_steps = 8
  config.log_every_steps = 2
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 4
  config.compute_dtype = "float32"
  config.optimizer.warmup_steps = 2
  config.optimizer.schedule_steps = 16  # fixed, so that runs of different lengths share one schedule
  config.task = frames.default_config()
  config.task.name = "test_frames"
  config.task.nan_batches = [-1]
  config.task.record_path = ""
  config.task.batch_sleep = 0.0
  config.model = ml_collections.ConfigDict({
      "name": "frame_classifier", "num_classes": 8, "frame_size": 32, "embed_dim": 16, "mlp_dim": 32,
      "num_layers": 2, "norm": "batch"})
  config.data.batch_size = 8
  config.update_from_flattened_dict(overrides)
  return config


class _RecordingIterator:
  """Appends (iterator position, batch ids) lines to a file on each next(); forwards the state protocol."""

  def __init__(self, inner, path: str, sleep: float):
    self._inner, self._path, self._sleep = inner, path, sleep

  def __iter__(self):
    return self

  def __next__(self):
    position = json.dumps(self._inner.get_state(), sort_keys=True)
    batch = next(self._inner)
    if self._path:
      with open(self._path, "a") as f:
        f.write(json.dumps({"position": position, "ids": batch["ids"].tolist()}) + "\n")
    time.sleep(self._sleep)
    return batch

  def get_state(self):
    return self._inner.get_state()

  def set_state(self, state):
    self._inner.set_state(state)


class TestFrames(frames.SyntheticFrames):
  """SyntheticFrames whose train batches number config.task.nan_batches (per process) have a NaN loss."""

  def make_input(self, split, *, seed, shard_index, shard_count):
    dataset = self.dataset(split, seed=seed, shard_index=shard_index, shard_count=shard_count)
    if split != "train":
      return iter(dataset.to_iter_dataset())
    nan_batches = set(self.config.task.nan_batches)
    poison = lambda index, batch: {**batch, "poison": np.full(batch["mask"].shape,
                                                              np.nan if index in nan_batches else 0.0, np.float32)}
    iterator = iter(dataset.map_with_index(poison).to_iter_dataset())
    return _RecordingIterator(iterator, self.config.task.record_path, self.config.task.batch_sleep)

  def loss(self, params, extra, batch, rng, *, step, train):
    loss, aux = super().loss(params, extra, batch, rng, step=step, train=train)
    return loss._replace(total=loss.total + batch["poison"].sum()), aux


tasks.TASKS["test_frames"] = TestFrames


def read_order(path: str) -> list[list[str]]:
  """Batch ids in consumption order: one entry per iterator position (a peek then rewind records it twice)."""
  order = {}
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      order[record["position"]] = record["ids"]
  return list(order.values())


def flat_params(params) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(params))
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def read_losses(workdir: str) -> list[float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f if json.loads(line)["split"] == "train"]


def main(argv: list[str]) -> None:
  """Trains one config (a JSON object) or several in turn (a JSON list; workdirs and outputs get -<i> suffixes).

  Prints one JSON line per run: {"step": ..., "shard_shapes": {param: one device's shard shape}}.
  """
  overrides, workdir, out = json.loads(argv[1]), argv[2], argv[3]
  runs = overrides if isinstance(overrides, list) else [overrides]
  for i, run in enumerate(runs):
    suffix = f"-{i}" if isinstance(overrides, list) else ""
    state = run_lib.run("train", tiny_config(**run), workdir + suffix)
    if jax.process_index() == 0:
      np.savez(out.replace(".npz", f"{suffix}.npz"), **flat_params(state.params))
      shard_shapes = {jax.tree_util.keystr(path): list(leaf.sharding.shard_shape(leaf.shape))
                      for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)}
      print(json.dumps({"step": int(jax.device_get(state.step)), "shard_shapes": shard_shapes}), flush=True)


if __name__ == "__main__":
  main(sys.argv)
