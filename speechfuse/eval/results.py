"""Result files: per-utterance JSONL (what the fusion baselines read), their summary, and the recipe's results table.

Per-utterance line: {"id", "reference", "hypothesis", "word_errors", "words", "char_errors", "chars",
"confidence", "loss"}; errors are S + D + I against the reference, `words` / `chars` the reference length
(speechfuse.eval.metrics), confidence as speechfuse.eval.confidence defines it.

Table (JSON): {"step", "checkpoint", "online", "splits": {split: {mode: {"wer", "cer", "loss", "confidence",
"utterances"}}}} with modes "offline" (full context) and "online" (streaming: the encoder fed chunk by chunk);
"online" says how: {"chunk_frames", "left_chunks", "chunk_ms", "lookahead_ms"} (None: no online column). step is
None for results not read off one checkpoint (the OTF baselines combining two runs). A table may also say how it
was decoded: "decoding": {"method", ...} (speechfuse.tasks.asr.decoding_settings), rendered as a line under the
title. Results of greedy decoding live in <workdir>/results/ (what the fusion baselines
read); the other decodings of the same run in <workdir>/results/<method>/ (`results_dir`), so they never overwrite
them. The Markdown rendering has one row per split and WER / CER columns per mode, in percent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

from speechfuse.eval import metrics
from speechfuse.losses import ctc as ctc_lib

RESULTS_DIR = "results"  # a run's result files: <workdir>/results/
RECORD_KEYS = ("id", "reference", "hypothesis", "word_errors", "words", "char_errors", "chars", "confidence", "loss")
MODES = ("offline", "online")


def results_dir(workdir: str | os.PathLike, decoding: str = "greedy") -> str:
  """Where a run's results of `decoding` go: <workdir>/results for greedy, <workdir>/results/<decoding> otherwise."""
  root = os.path.join(os.fspath(workdir), RESULTS_DIR)
  return root if decoding == "greedy" else os.path.join(root, decoding)


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


def summarize(records: list[dict[str, Any]]) -> dict[str, float]:
  """Loss (mean per utterance over feasible ones), CER, WER (corpus level) and mean confidence (where the
  records have one) of `records` (dicts with at least "reference", "hypothesis", "loss", "confidence").

  Fills each record's errors: word_errors, words, char_errors, chars. With several processes the sums are
  added over all of them.
  """
  references = [r["reference"] for r in records]
  hypotheses = [r["hypothesis"] for r in records]
  words, chars = metrics.word_errors(references, hypotheses), metrics.char_errors(references, hypotheses)
  for i, record in enumerate(records):
    record.update(word_errors=words.errors[i], words=words.lengths[i], char_errors=chars.errors[i],
                  chars=chars.lengths[i])
  losses = [r["loss"] for r in records if r["loss"] < ctc_lib.INFEASIBLE_LOSS]
  confidences = [r["confidence"] for r in records if r["confidence"] is not None]
  sums = np.array([words.total_errors, words.total_length, chars.total_errors, chars.total_length,
                   sum(losses), len(losses), sum(confidences), len(confidences), len(records)], np.float64)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top  # multi-host only
    sums = np.asarray(multihost_utils.process_allgather(sums)).sum(axis=0)
  # No feasible utterance (every loss infeasible or non-finite, e.g. a broken model): the loss is undefined.
  summary = {"loss": sums[4] / sums[5] if sums[5] else float("nan"), "wer": sums[0] / max(sums[1], 1),
             "cer": sums[2] / max(sums[3], 1), "utterances": float(sums[8])}
  if sums[7]:
    summary["confidence"] = sums[6] / sums[7]
  return summary


def latency_text(online: Mapping[str, Any] | None) -> str:
  """What the online column of a table means, e.g. "streaming, chunks of 16 encoder frames (all left context):
  latency 320 ms + 25 ms look-ahead"."""
  if not online:
    return "no online column"
  left = "all left context" if online["left_chunks"] < 0 else f"{online['left_chunks']} chunks of left context"
  return (f"streaming, chunks of {online['chunk_frames']} encoder frames ({left}): latency {online['chunk_ms']:g} ms "
          f"+ {online['lookahead_ms']:g} ms look-ahead")


def markdown_table(table: Mapping[str, Any]) -> str:
  """The results table as Markdown: split | WER / CER offline | WER / CER online, in percent."""
  source = table["checkpoint"] if table["step"] is None else f"step {table['step']} ({table['checkpoint']})"
  lines = [f"Results of {source}; online = {latency_text(table.get('online'))}."]
  if "decoding" in table:
    settings = dict(table["decoding"])
    details = ", ".join(f"{key} {value}" for key, value in settings.items() if key != "method")
    lines.append(f"Decoding: {settings['method']}" + (f" ({details})." if details else "."))
  lines += ["",
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
