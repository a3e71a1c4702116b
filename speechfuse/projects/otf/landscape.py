"""Loss landscape along a line in weight space (the OTF paper's Fig. 2, after Li et al. 2018's 1-D plots).

    rows = interpolate(config, workdir, initial_variables(config, workdir), trained)   # alpha 0 .. 1.2
    write_csv({"SL": rows, ...}, "landscape.csv"); plot({"SL": rows, ...}, "landscape.png")

theta(alpha) = (1 - alpha) * theta_0 + alpha * theta for every parameter, so alpha = 0 is the start and 1 the end
exactly; alphas outside [0, 1] look "a little beyond" either end. Non-parameter variables (BatchNorm running
statistics) are interpolated with alpha clipped to [0, 1]: statistics are not weights, and an extrapolated running
variance turns negative (a NaN model) wherever, at alpha > 1, the trained variance is below (1 - 1 / alpha) times
the initial one (a fifth of it at alpha = 1.25). Each point decodes a corpus split with the recipe's CTC /
transducer task and reports what the ASR evaluation (speechfuse.tasks.asr) reports for a checkpoint: the loss is
the task's loss per utterance (the negative log-likelihood of the reference, averaged over the feasible
utterances, as in training and the results tables), with WER and CER beside it.

theta_0 is the model's own initialisation: for a model trained from scratch the random initialisation its run
started from (`initial_variables`: the same key as the trainer's, from config.seed), for a fine-tuned model the
pre-trained encoder with the freshly initialised head (the same call: task.init_from is applied), for the fused
model the fused variables its moderate fine-tuning started from.

Single process: every point runs on this host's default device.
"""

from __future__ import annotations

import csv
import itertools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from speechfuse import parallel
from speechfuse.eval import results
from speechfuse.fusion import spec as spec_lib
from speechfuse import tasks, train
from speechfuse.tasks import asr

DEFAULT_ALPHAS = tuple(float(a) for a in np.round(np.linspace(0.0, 1.2, 13), 6))  # 0, 0.1, ..., 1.2
Rows = list[dict[str, float]]


def _asr_task(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> asr.ASRTask:
  task = tasks.get_task(config, workdir)
  if not isinstance(task, asr.ASRTask):
    raise ValueError(f"config.task.name={config.task.name!r} is not an ASR task; the loss landscape needs asr_ctc "
                     "or asr_transducer")
  return task


def initial_variables(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                      task: asr.ASRTask | None = None) -> dict[str, Any]:
  """The variables a run of `config` starts from, without training: theta_0 of its landscape
  (train.initial_variables: the step-0 state of `launch/main.py --mode=train` with the same config, task.init_from
  applied). `workdir` supplies the run's tokenizer and CMVN statistics (created there if absent); `task`, the
  run's task when the caller has built it already.

  Returns:
    {"params": ..., other collections} as plain arrays.
  """
  return train.initial_variables(task or _asr_task(config, workdir), config.seed)


def _check_same_layout(start: Mapping[str, Any], end: Mapping[str, Any]) -> None:
  flat_start, flat_end = spec_lib.flatten(start), spec_lib.flatten(end)
  for path in sorted(set(flat_start) | set(flat_end)):
    if path not in flat_start or path not in flat_end:
      raise ValueError(f"{path} is only in the {'end' if path not in flat_start else 'start'} variables; the two "
                       "ends of a landscape must be one model")
    if np.shape(flat_start[path]) != np.shape(flat_end[path]):
      raise ValueError(f"{path} has shape {np.shape(flat_start[path])} at the start, {np.shape(flat_end[path])} at "
                       "the end")


@jax.jit
def _mix(alpha: jax.Array, start: Any, end: Any) -> Any:
  """(1 - alpha) * start + alpha * end for "params", with alpha clipped to [0, 1] for the other collections."""
  mix = lambda a: lambda x, y: ((1 - a) * x + a * y).astype(y.dtype)
  return {name: jax.tree.map(mix(alpha if name == "params" else jnp.clip(alpha, 0.0, 1.0)), start[name], end[name])
          for name in end}


def interpolate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, start: Mapping[str, Any],
                end: Mapping[str, Any], alphas: Sequence[float] = DEFAULT_ALPHAS, split: str = "dev",
                max_batches: int | None = None) -> Rows:
  """Evaluates the recipe's model at (1 - alpha) * start + alpha * end for each alpha.

  Args:
    config: the recipe's config (an ASR task).
    workdir: a run directory of that recipe: its tokenizer and CMVN statistics are used.
    start, end: variables dicts ({"params": ..., "batch_stats": ...}, boxed or not) of the config's model.
    alphas: interpolation coefficients.
    split: corpus split to decode.
    max_batches: evaluate on this many batches of the split only (None: all).

  Returns:
    One row per alpha: {"alpha", "loss" (per utterance, see the module docstring), "wer", "cer",
    "utterances" and, for CTC, "confidence"}.

  Raises:
    ValueError: start and end differ in a leaf (named), or the task is not an ASR task.
  """
  _check_same_layout(start, end)
  task = _asr_task(config, workdir)
  start, end = spec_lib.unbox(dict(start)), spec_lib.unbox(dict(end))
  decode = jax.jit(task.decode_step)
  rows = []
  for alpha in alphas:
    variables = _mix(jnp.float32(alpha), start, end)

    def eval_step(batch, variables=variables):
      return jax.device_get(decode(variables, parallel.numeric_only(batch)))

    batches = itertools.islice(task.split_input(split, shard_index=0, shard_count=1), max_batches)
    rows.append({"alpha": float(alpha), **results.summarize(task.utterances(eval_step, batches))})
    logging.info("landscape alpha %.2f: loss %.3f, WER %.2f%%", alpha, rows[-1]["loss"], 100 * rows[-1]["wer"])
  return rows


def write_csv(rows_by_curve: Mapping[str, Rows], path: str | os.PathLike) -> str:
  """Writes one CSV line per (curve, alpha): curve, alpha, loss, wer, cer, ... (atomically); returns the path."""
  path = os.fspath(path)
  columns = ["curve"]
  for row in itertools.chain.from_iterable(rows_by_curve.values()):
    columns += [key for key in row if key not in columns]
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    for curve, rows in rows_by_curve.items():
      writer.writerows({"curve": curve, **row} for row in rows)
  os.replace(path + ".tmp", path)
  return path


def plot(rows_by_curve: Mapping[str, Rows], path_png: str | os.PathLike, title: str = "Loss landscape") -> str:
  """Plots loss against alpha, one line per curve (Agg, no display needed), as a PNG; returns the path."""
  path = os.fspath(path_png)
  figure = Figure(figsize=(5.5, 3.8), layout="constrained")
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  for curve, rows in rows_by_curve.items():
    axes.plot([row["alpha"] for row in rows], [row["loss"] for row in rows], marker="o", markersize=3, label=curve)
  axes.axvline(1.0, color="gray", linestyle=":", linewidth=1)
  axes.set(xlabel=r"$\alpha$ in $(1-\alpha)\,\theta_0 + \alpha\,\theta$", ylabel="loss per utterance",
           title=title)
  axes.legend()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path + ".tmp", "wb") as f:
    figure.savefig(f, format="png", dpi=120)
  os.replace(path + ".tmp", path)
  return path
