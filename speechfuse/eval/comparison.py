"""Comparison tables: several systems' ASR results side by side, shaped like the OTF paper's Tables 1 and 3.

A row is {"method", "params", "splits"}: the system's name, its parameter count (None where it does not apply)
and the "splits" part of a speechfuse.eval.results table ({split: {mode: {"wer", "cer", ...}}}), which the
evaluation driver and the fusion baselines both produce.

JSON: {"title", "splits": [...], "modes": [...], "online", "rows": [...]}, "online" as in a results table (how
the online columns streamed, results.latency_text). Markdown: the title, what "online" means, then one line per
row: the parameter count in millions, then per split WER offline / online and CER offline / online, in percent
("-" where a row lacks a figure); online headers carry the latency (chunk + look-ahead).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from speechfuse.eval import results

METRICS = ("wer", "cer")


def row(method: str, table: Mapping[str, Any], params: int | None, **extra: Any) -> dict[str, Any]:
  """A row from a results table (or anything with its "splits"); `extra` adds fields kept in the JSON only."""
  return {"method": method, "params": params, "splits": dict(table["splits"]), **extra}


def make_table(rows: Sequence[Mapping[str, Any]], splits: Sequence[str], modes: Sequence[str] = results.MODES,
               title: str = "", online: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The comparison of `rows` on `splits` and `modes`, in that order, under `title` (what was compared, how);
  `online`: how the online columns were decoded (tasks.asr.online_latency)."""
  modes = [mode for mode in modes if mode != "online" or online]
  return {"title": title, "splits": list(splits), "modes": modes, "online": None if online is None else dict(online),
          "rows": [dict(r) for r in rows]}


def _cell(row_: Mapping[str, Any], split: str, mode: str, metric: str) -> str:
  figures = row_["splits"].get(split, {}).get(mode)
  return f"{100 * figures[metric]:.2f}" if figures else "-"


def markdown(table: Mapping[str, Any]) -> str:
  """The table as Markdown: its title, then method | params (M) | per split: WER offline, WER online, CER offline,
  CER online."""
  online = table.get("online")
  columns = [(split, metric, mode) for split in table["splits"] for metric in METRICS for mode in table["modes"]]
  label = lambda mode: (f"online ({online['chunk_ms'] + online['lookahead_ms']:g} ms)" if mode == "online" and online
                        else mode)
  header = ["method", "params (M)"] + [f"{split} {metric.upper()} {label(mode)}" for split, metric, mode in columns]
  lines = [table["title"], ""] if table.get("title") else []
  if online:
    lines += [f"Online: {results.latency_text(online)}.", ""]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in table["rows"]:
    size = "-" if r["params"] is None else f"{r['params'] / 1e6:.2f}"
    cells = [r["method"], size] + [_cell(r, split, mode, metric) for split, metric, mode in columns]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write(table: Mapping[str, Any], directory: str | os.PathLike, name: str) -> tuple[str, str]:
  """Writes `directory`/<name>.json and <name>.md atomically; returns their paths."""
  os.makedirs(directory, exist_ok=True)
  paths = tuple(os.path.join(os.fspath(directory), f"{name}.{ext}") for ext in ("json", "md"))
  for path, text in zip(paths, (json.dumps(table, indent=2) + "\n", markdown(table))):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
  return paths
