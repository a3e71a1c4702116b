"""Training objectives, chosen by name: `get_task(config, workdir)` builds `TASKS[config.task.name](config, workdir)`.

One module per objective: asr_ctc, asr_transducer (on the shared tasks.asr), ssl (HuBERT / WavLM / k2SSL's CE),
ssl_contrastive (wav2vec 2.0). Each gives the trainer the
speechfuse.train.Task protocol; `evaluate_checkpoint` is what `--mode=eval` runs for any of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from speechfuse import train
from speechfuse.tasks import asr, asr_ctc, asr_transducer, ssl, ssl_contrastive

# name -> Task subclass. A task module adds itself here (tests add theirs).
TASKS: dict[str, type[train.Task]] = {
    "asr_ctc": asr_ctc.CTCTask,
    "asr_transducer": asr_transducer.TransducerTask,
    "ssl_hubert": ssl.SSLTask,
    "ssl_wav2vec2": ssl_contrastive.ContrastiveTask,
}


def get_task(config: ml_collections.ConfigDict, workdir: str | os.PathLike | None = None) -> train.Task:
  """The task named by config.task.name, built from the whole config and the run's directory."""
  if config.task.name not in TASKS:
    raise ValueError(f"config.task.name={config.task.name!r} is unknown; choose from {sorted(TASKS)}")
  return TASKS[config.task.name](config, workdir)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                        checkpoint: str | os.PathLike | None = None, splits: Sequence[str] | None = None) -> Any:
  """Evaluates a trained run without its training state: ASR tasks decode the test splits offline and online and
  write the results table (tasks.asr.ASRTask.evaluate_splits); other tasks report their eval-split metrics.

  Reads only the checkpoint (the latest in workdir, or exported variables at `checkpoint`), the run's assets
  (tokenizer, CMVN statistics) and the evaluation data: a dataset with test splits alone will do. Everything is
  checked before anything is built.

  Raises:
    FileNotFoundError: no checkpoint, or a missing asset (one line naming the file).
  """
  train.initialize(config)
  if checkpoint is None:
    variables, step, source = train.latest_variables(workdir)
  else:
    if not os.path.exists(checkpoint):
      raise FileNotFoundError(f"no exported variables at {os.fspath(checkpoint)}")
    variables, step, source = train.load_variables(checkpoint), None, os.fspath(checkpoint)
  if issubclass(TASKS.get(config.task.name, train.Task), asr.ASRTask):
    asr.check_run_assets(config, workdir)
  task = get_task(config, workdir)
  if isinstance(task, asr.ASRTask):
    return task.evaluate_splits(variables, splits=splits, step=step, source=source)
  return train.evaluate(config, workdir, task, variables, step if step is not None else 0)
