"""Training objectives, chosen by name: `get_task(config, workdir)` builds `TASKS[config.task.name](config, workdir)`."""

from __future__ import annotations

import os

import ml_collections

from speechfuse.train.tasks import asr, frames, ssl
from speechfuse.train.tasks.base import CheckpointableIterator, Task

# name -> Task subclass. A task module adds itself here.
TASKS: dict[str, type[Task]] = {
    "asr_ctc": asr.CTCTask,
    "asr_transducer": asr.TransducerTask,
    "ssl_hubert": ssl.SSLTask,
    "synthetic_frames": frames.SyntheticFrames,
}


def get_task(config: ml_collections.ConfigDict, workdir: str | os.PathLike | None = None) -> Task:
  """The task named by config.task.name, built from the whole config and the run's directory."""
  if config.task.name not in TASKS:
    raise ValueError(f"config.task.name={config.task.name!r} is unknown; choose from {sorted(TASKS)}")
  return TASKS[config.task.name](config, workdir)
