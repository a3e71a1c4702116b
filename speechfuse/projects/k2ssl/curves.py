"""Pre-training curves of the k2ssl job: each objective's logged train metrics against the step, one PNG.

The trainer writes <run>/metrics.jsonl (one JSON object per logged step and split); `plot` reads the pre-training
runs' train lines and draws one panel per metric any of them logs: the loss, the masked (HuBERT, CE, WavLM) or
contrastive (wav2vec 2.0) accuracy, and wav2vec 2.0's codebook perplexity, whose fall towards 1 is the collapse its
objective is known for on small data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PANELS = (("loss", "train loss"), ("masked_accuracy", "masked accuracy"),
          ("contrastive_accuracy", "contrastive accuracy"), ("codebook_perplexity", "codebook perplexity"))


def read_train_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
  """The train-split lines of a run's metrics.jsonl, in step order ([] if the file does not exist)."""
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return sorted((row for row in rows if row.get("split") == "train"), key=lambda row: row["step"])


def plot(runs: Mapping[str, str | os.PathLike], path_png: str | os.PathLike) -> str | None:
  """Draws the curves of `runs` (label -> run directory) into `path_png` (atomically); returns the path, or None
  when no run has logged a train line."""
  curves = {label: read_train_metrics(os.path.join(directory, "metrics.jsonl")) for label, directory in runs.items()}
  panels = [(key, title) for key, title in PANELS if any(key in row for rows in curves.values() for row in rows)]
  if not panels:
    return None
  figure = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
  FigureCanvasAgg(figure)
  for index, (key, title) in enumerate(panels):
    axes = figure.add_subplot(1, len(panels), index + 1)
    for color, (label, rows) in enumerate(curves.items()):
      points = [(row["step"], row[key]) for row in rows if key in row]
      if points:  # one colour per run in every panel
        axes.plot(*zip(*points), marker="o", markersize=2, color=f"C{color}", label=label)
    axes.set(xlabel="pre-training step", title=title)
    axes.legend(fontsize="small")
  path = os.fspath(path_png)
  with open(path + ".tmp", "wb") as f:
    figure.savefig(f, format="png", dpi=110)
  os.replace(path + ".tmp", path)
  return path
