"""The launcher's modes: `run(mode, config, workdir)`, importable so that notebooks run exactly what
`launch/main.py` runs. This is where the layers meet: a task from speechfuse.tasks, the generic trainer of
speechfuse.train, fusion, and the data a task needs written before it is built.

  train   train (resuming from the workdir's latest checkpoint) and evaluate every eval_every_steps
  eval    evaluate the latest checkpoint without its training state (tasks.evaluate_checkpoint): ASR tasks decode
          the test splits offline and online and write the results table; other tasks report their eval-split
          metrics. It reads the checkpoint, the run's tokenizer / CMVN statistics and the test data only.
  export  write <workdir>/export/params: the variables of the last config.export.average_last checkpoints,
          averaged (1: the latest alone), without optimizer state
  fuse    fuse the two exported CTC models named by config.fusion (sl onto ssl: OTF or direct averaging) into
          <workdir>/fused/params with a report (speechfuse.fusion.fuse)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import ml_collections
from absl import logging

from speechfuse import fusion, tasks, train
from speechfuse.eval import results
from speechfuse.ssl import targets

# What a task's training needs written into its dataset before the task is built: task name -> writer. The
# masked-prediction task reads k-means targets that ssl.targets computes (once per dataset and name).
PREPARE: dict[str, Callable[[ml_collections.ConfigDict], Any]] = {"ssl_hubert": targets.prepare}


def export_path(workdir: str | os.PathLike) -> str:
  """Where export mode writes the variables of the run in `workdir`."""
  return os.path.join(os.fspath(workdir), "export", "params")


def _train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> train.TrainState:
  train.initialize(config)
  if config.task.name in PREPARE:
    PREPARE[config.task.name](config)
  return train.train_and_evaluate(config, workdir, tasks.get_task(config, workdir))


def _evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Any:
  """tasks.evaluate_checkpoint, with an ASR run's results table printed (it is written under <workdir>/results)."""
  table = tasks.evaluate_checkpoint(config, workdir)
  if isinstance(table, dict) and "splits" in table:
    print(results.markdown_table(table))
    print(f"Results: {results.results_dir(workdir, config.task.decoding)}")
  return table


def _export(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> str:
  out = export_path(workdir)
  if config.export.average_last == 1:
    path = train.export_params(workdir, out)
  else:
    path = train.average_checkpoints(workdir, config.export.average_last, out)
  logging.info("exported parameters to %s", path)
  return path


MODES: dict[str, Callable[[ml_collections.ConfigDict, str | os.PathLike], Any]] = {
    "train": _train,
    "eval": _evaluate,
    "export": _export,
    "fuse": fusion.fuse,
}


def run(mode: str, config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Any:
  """Runs `mode` on `config`. Training writes the resolved config to `workdir/config.json`; the other modes
  leave it as the training run wrote it."""
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; choose from {sorted(MODES)}")
  return MODES[mode](config, workdir)
