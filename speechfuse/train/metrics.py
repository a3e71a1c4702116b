"""Metric writers (TensorBoard event files + metrics.jsonl, process 0 only) and the progress line."""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from collections.abc import Mapping

import jax
import tensorboardX
from absl import logging


class MetricWriter:
  """Writes scalars to <workdir>/tensorboard and one JSON object per call to <workdir>/metrics.jsonl.

  Lines look like {"step": 100, "split": "train", "loss": 1.2, ...}; on processes other than 0 it writes nothing.
  A run resumed from a checkpoint at `resume_step` first drops the lines its predecessor wrote for later steps
  (they are logged again as training repeats them) and tells TensorBoard to purge them, so that every step
  appears once.
  """

  def __init__(self, workdir: str | os.PathLike, resume_step: int | None = None):
    self._enabled = jax.process_index() == 0
    if self._enabled:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      if resume_step is not None:
        _drop_after(path, resume_step)
      purge = {"purge_step": resume_step + 1} if resume_step else {}
      self._tensorboard = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"), **purge)
      self._jsonl = open(path, "a")

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    for name, value in metrics.items():
      self._tensorboard.add_scalar(f"{split}/{name}", value, step)
    self._jsonl.write(json.dumps({"step": step, "split": split, **{k: float(v) for k, v in metrics.items()}}) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self._enabled:
      self._tensorboard.close()
      self._jsonl.close()


def _drop_after(path: str, step: int) -> None:
  """Rewrites the metrics file at `path` without its lines for steps after `step` (atomically).

  A line a killed run left half-written (not valid JSON) is dropped too.
  """
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f if line.strip()]
  kept = [line for line in lines if line.endswith("\n") and _line_step(line) <= step]
  if len(kept) == len(lines):
    return
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)
  logging.info("resuming at step %d: dropped %d metric lines of later steps from %s", step, len(lines) - len(kept),
               path)


def _line_step(line: str) -> float:
  try:
    return json.loads(line)["step"]
  except (json.JSONDecodeError, KeyError, TypeError):
    return float("inf")


class Progress:
  """Measures throughput between log points and formats the progress line."""

  def __init__(self, start_step: int, total_steps: int):
    self._total_steps = total_steps
    self._last_step = start_step
    self._last_time = time.perf_counter()
    self._audio_seconds = 0.0

  def add_audio(self, seconds: float) -> None:
    self._audio_seconds += seconds

  def measure(self, step: int) -> dict[str, float]:
    """steps_per_second and audio_seconds_per_second since the previous call; resets the window."""
    now = time.perf_counter()
    elapsed = max(now - self._last_time, 1e-9)
    rates = {"steps_per_second": (step - self._last_step) / elapsed,
             "audio_seconds_per_second": self._audio_seconds / elapsed}
    self._last_step, self._last_time, self._audio_seconds = step, now, 0.0
    return rates

  def line(self, step: int, metrics: Mapping[str, float]) -> str:
    """'step 100/1000 | loss 1.234 | 5.1 steps/s | 40.2 audio s/s | ETA 0:02:56' from measure()'s rates."""
    rate = metrics["steps_per_second"]
    eta = datetime.timedelta(seconds=round((self._total_steps - step) / rate)) if rate > 0 else "?"
    return (f"step {step}/{self._total_steps} | loss {metrics.get('loss', math.nan):.4f} | {rate:.2f} steps/s | "
            f"{metrics['audio_seconds_per_second']:.1f} audio s/s | ETA {eta}")


def log_progress(line: str) -> None:
  if jax.process_index() == 0:
    logging.info("%s", line)
