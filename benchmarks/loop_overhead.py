"""Time per step of the training loop against the bare jitted train step on the same batches.

  python benchmarks/loop_overhead.py [--steps 60] [--repeats 5] [--batch 32]

The bare step is the loop's own jitted step (same shardings, donated state) called back to back on batches
already on the device, timed with block_until_ready. The loop is `train_and_evaluate` itself, reading the
same batches from its grain pipeline, moving them to the device, checking the non-finite guard every step
and logging every `--log-every` steps; its time per step comes from the steps/s it records between log
points after the first window (which holds compilation). The bare step is timed over windows of the same
length, each ending with block_until_ready as the loop's log point does. Evaluation and checkpointing happen
only after the last step and are not timed. Prints a Markdown table with the ratio; the loop should add
under 5%. The last row times the synthetic data pipeline alone: on a CPU-only machine its host work
competes with XLA for the same cores, so it is part of what the loop adds there. The model is the frame
classifier on synthetic audio (the trainer tests' fixture, tests/train/synthetic_testlib.py), sized so that a step
takes about 0.1 s on an idle 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import pathlib
import sys

import jax
import ml_collections

from speechfuse import parallel, run as run_lib, tasks, train
from speechfuse.train import loop

# The trainer's test task and model (a test fixture, registered as "synthetic_frames" / "frame_classifier").
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "train"))
import synthetic_testlib as frames  # pylint: disable=g-import-not-at-top,wrong-import-position


def benchmark_config(steps: int, log_every: int, batch: int) -> ml_collections.ConfigDict:
  config = train.default_config()
  config.total_steps = log_every + steps  # the first window compiles and is not timed
  config.log_every_steps = log_every
  config.eval_every_steps = config.total_steps
  config.checkpoint_every_steps = config.total_steps
  config.compute_dtype = "float32"
  config.optimizer.warmup_steps = 10
  config.task = frames.default_config()
  config.task.max_frames = 64
  config.model = ml_collections.ConfigDict({"name": "frame_classifier", "num_classes": 16, "frame_size": 160,
                                            "embed_dim": 256, "mlp_dim": 1024, "num_layers": 2, "norm": "batch"})
  config.data.batch_size = batch
  return config


def time_bare_step(config: ml_collections.ConfigDict, steps: int) -> tuple[list[float], float]:
  """Seconds per step of the jitted step on device-resident batches, per window of log_every_steps steps, and
  seconds per batch of the data pipeline alone."""
  with tempfile.TemporaryDirectory() as workdir:
    train.initialize(config)
    run = loop.prepare(config, workdir, tasks.get_task(config, workdir))
    run.manager.close()
  start = time.perf_counter()
  host_batches = [next(run.train_iter) for _ in range(steps)]
  pipeline = (time.perf_counter() - start) / steps
  batches = [run.global_batch(batch) for batch in host_batches]
  window = config.log_every_steps
  state, windows = run.state, []
  with parallel.sharding_context(run.mesh, run.rules):
    state, _ = run.train_step(state, batches[0])  # compile
    jax.block_until_ready(state)
    for first in range(0, steps, window):
      start = time.perf_counter()
      for batch in batches[first:first + window]:
        state, metrics = run.train_step(state, batch)
      jax.block_until_ready((state, metrics))
      windows.append((time.perf_counter() - start) / len(batches[first:first + window]))
  return windows, pipeline


def time_loop(config: ml_collections.ConfigDict) -> list[float]:
  """Seconds per step of train_and_evaluate, per log window but the first (which compiles)."""
  with tempfile.TemporaryDirectory() as workdir:
    run_lib.run("train", config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      lines = [json.loads(line) for line in f]
  return [1 / l["steps_per_second"] for l in lines if l["split"] == "train" and l["step"] > config.log_every_steps]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=60, help="timed steps per measurement")
  parser.add_argument("--log-every", type=int, default=20, help="the loop's log_every_steps = the timing window")
  parser.add_argument("--repeats", type=int, default=5, help="measurements of each, interleaved")
  parser.add_argument("--batch", type=int, default=32, help="global batch size")
  args = parser.parse_args()
  config = benchmark_config(args.steps, args.log_every, args.batch)
  bare, pipeline, looped = [], [], []
  for _ in range(args.repeats):  # interleaved, so that drifts in machine load affect both alike
    windows, pipeline_s = time_bare_step(config, args.steps)
    bare += windows
    pipeline.append(pipeline_s)
    looped += time_loop(config)
  print(f"loop overhead: frame classifier (embed {config.model.embed_dim}, mlp {config.model.mlp_dim}, "
        f"{config.model.num_layers} layers), batch {args.batch} x {config.task.max_frames * config.model.frame_size} "
        f"samples, {args.repeats} x {args.steps} steps in windows of {args.log_every}, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}")
  print()
  # Other processes on the machine only ever add time, so the fastest window is the cleanest figure (timeit's
  # rule); the median shows how noisy the machine was.
  print("| measurement | best window, ms / step | median window, ms / step |")
  print("| --- | ---: | ---: |")
  print(f"| bare jitted step | {1e3 * min(bare):.2f} | {1e3 * statistics.median(bare):.2f} |")
  print(f"| training loop | {1e3 * min(looped):.2f} | {1e3 * statistics.median(looped):.2f} |")
  print(f"| **ratio loop / bare** | **{min(looped) / min(bare):.3f}** | "
        f"{statistics.median(looped) / statistics.median(bare):.3f} |")
  print(f"| (data pipeline alone, host, per batch; part of the loop) | {1e3 * min(pipeline):.2f} | "
        f"{1e3 * statistics.median(pipeline):.2f} |")


if __name__ == "__main__":
  main()
