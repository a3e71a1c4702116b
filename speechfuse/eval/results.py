"""Result files: per-utterance JSONL (what the fusion baselines read) and the recipe's results table.

Per-utterance line: {"id", "reference", "hypothesis", "word_errors", "words", "char_errors", "chars",
"confidence", "loss"}; errors are S + D + I against the reference, `words` / `chars` the reference length
(speechfuse.eval.metrics), confidence as speechfuse.eval.confidence defines it.

Table (JSON): {"step", "checkpoint", "online_chunk_size", "splits": {split: {mode: {"wer", "cer", "loss",
"confidence", "utterances"}}}} with modes "offline" (full context) and "online" (chunked attention); the
Markdown rendering has one row per split and WER / CER columns per mode, in percent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

RECORD_KEYS = ("id", "reference", "hypothesis", "word_errors", "words", "char_errors", "chars", "confidence", "loss")
MODES = ("offline", "online")


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> str:
  """Writes one JSON object per utterance (RECORD_KEYS, in that order), atomically; returns the path."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps({key: record[key] for key in RECORD_KEYS}, ensure_ascii=False) + "\n")
  os.replace(path + ".tmp", path)
  return path


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The records written by write_jsonl."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def markdown_table(table: Mapping[str, Any]) -> str:
  """The results table as Markdown: split | WER / CER offline | WER / CER online, in percent."""
  chunk = table.get("online_chunk_size")
  lines = [f"Results at step {table['step']} ({table['checkpoint']}); online = chunks of {chunk} encoder frames.",
           "",
           "| split | WER offline | CER offline | WER online | CER online | utterances |",
           "|---|---|---|---|---|---|"]
  for split, modes in table["splits"].items():
    cells = []
    for mode in MODES:
      figures = modes.get(mode)
      cells += [f"{100 * figures['wer']:.2f}", f"{100 * figures['cer']:.2f}"] if figures else ["-", "-"]
    count = next(iter(modes.values()))["utterances"]
    lines.append(f"| {split} | " + " | ".join(cells) + f" | {int(count)} |")
  return "\n".join(lines) + "\n"


def write_table(table: Mapping[str, Any], directory: str | os.PathLike) -> tuple[str, str]:
  """Writes `directory`/results.json and results.md; returns their paths."""
  os.makedirs(directory, exist_ok=True)
  json_path = os.path.join(os.fspath(directory), "results.json")
  md_path = os.path.join(os.fspath(directory), "results.md")
  for path, text in ((json_path, json.dumps(table, indent=2) + "\n"), (md_path, markdown_table(table))):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
  return json_path, md_path
