"""The launcher's modes: `run(mode, config, workdir)`, importable so that notebooks run exactly what
`launch/main.py` runs.

  train   train (resuming from the workdir's latest checkpoint) and evaluate every eval_every_steps
  eval    evaluate the latest checkpoint: ASR tasks decode the test splits offline and online and write the
          results table (speechfuse.eval.asr); other tasks report their eval-split metrics
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

from speechfuse import fusion, train
from speechfuse.eval import asr as asr_eval


def export_path(workdir: str | os.PathLike) -> str:
  """Where export mode writes the variables of the run in `workdir`."""
  return os.path.join(os.fspath(workdir), "export", "params")


def _export(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> str:
  out = export_path(workdir)
  if config.export.average_last == 1:
    path = train.export_params(workdir, out)
  else:
    path = train.average_checkpoints(workdir, config.export.average_last, out)
  logging.info("exported parameters to %s", path)
  return path


# task name -> its full evaluation; tasks not listed use the trainer's eval-split evaluation.
EVALUATORS: dict[str, Callable[[ml_collections.ConfigDict, str | os.PathLike], Any]] = {
    "asr_ctc": asr_eval.evaluate_asr,
    "asr_transducer": asr_eval.evaluate_asr,
}


def _evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Any:
  return EVALUATORS.get(config.task.name, train.evaluate)(config, workdir)


MODES: dict[str, Callable[[ml_collections.ConfigDict, str | os.PathLike], Any]] = {
    "train": train.train_and_evaluate,
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
