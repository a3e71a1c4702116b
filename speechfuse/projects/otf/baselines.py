"""Output-level fusion baselines of the OTF paper, on two runs' per-utterance results (speechfuse.eval.results).

  SBF     selection-based fusion (the paper's [23]): per utterance, the hypothesis with the higher confidence
          (speechfuse.eval.confidence: average word confidence from the CTC posteriors); ties go to run a.
  oracle  the paper's upper bound: per utterance, the hypothesis with fewer word errors (ties: fewer character
          errors, then run a). It reads the references, so it is a bound, not a system.

Both need the two runs decoded on the same utterances (ids), and cost both models at test time. The combined
records feed the same summary (eval.results.summarize) and table files as the ASR evaluation
(speechfuse.tasks.asr), so the recipe's table code renders them. EBF, the feature-level baseline, is a model:
speechfuse.models.ensemble.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from speechfuse.eval import results

Record = dict[str, Any]


def _pairs(records_a: Sequence[Record], records_b: Sequence[Record]) -> list[tuple[Record, Record]]:
  """(record of a, record of b) per utterance, matched by "id", in a's order.

  Raises:
    ValueError: an id repeats within a run, or is in one run only; the message names it.
  """
  ids_a, ids_b = [r["id"] for r in records_a], [r["id"] for r in records_b]
  for name, ids in (("a", ids_a), ("b", ids_b)):
    repeated = [i for i, count in collections.Counter(ids).items() if count > 1]
    if repeated:
      raise ValueError(f"run {name}'s records repeat id {repeated[0]!r}")
  only_a, only_b = sorted(set(ids_a) - set(ids_b)), sorted(set(ids_b) - set(ids_a))
  if only_a or only_b:
    example = f"id {only_a[0]!r} is only in a" if only_a else f"id {only_b[0]!r} is only in b"
    raise ValueError(f"the two runs' records hold different utterances: {example} ({len(only_a)} ids only in a, "
                     f"{len(only_b)} only in b)")
  by_id = dict(zip(ids_b, records_b))
  return [(a, by_id[a["id"]]) for a in records_a]


def _confidence(record: Record) -> float:
  if record.get("confidence") is None:
    raise ValueError(f"utterance {record['id']!r} has no confidence (a transducer run?): SBF needs CTC runs")
  return float(record["confidence"])


def _more_confident(a: Record, b: Record) -> bool:
  return _confidence(b) > _confidence(a)


def _fewer_errors(a: Record, b: Record) -> bool:
  return (b["word_errors"], b["char_errors"]) < (a["word_errors"], a["char_errors"])


# name -> (record a, record b) -> whether b is chosen.
PREFERS_B: dict[str, Callable[[Record, Record], bool]] = {"sbf": _more_confident, "oracle": _fewer_errors}


def _choose(records_a: Sequence[Record], records_b: Sequence[Record], how: str) -> tuple[list[Record], list[bool]]:
  """(a copy of the chosen record per utterance, whether it came from b)."""
  pairs = _pairs(records_a, records_b)
  from_b = [PREFERS_B[how](a, b) for a, b in pairs]
  return [dict(b if pick else a) for (a, b), pick in zip(pairs, from_b)], from_b


def select_by_confidence(records_a: Sequence[Record], records_b: Sequence[Record]) -> list[Record]:
  """SBF: per utterance, the record with the higher "confidence" (ties: a), in a's order. Records as in
  eval/results.py (only "id" and "confidence" are read).

  Raises:
    ValueError: the id sets differ (the message names an id), or a record has no confidence.
  """
  return _choose(records_a, records_b, "sbf")[0]


def oracle(records_a: Sequence[Record], records_b: Sequence[Record]) -> list[Record]:
  """The upper bound: per utterance, the record with fewer "word_errors" (ties: fewer "char_errors", then a),
  in a's order.

  Raises:
    ValueError: the id sets differ (the message names an id).
  """
  return _choose(records_a, records_b, "oracle")[0]


def _run_table(directory: str) -> dict[str, Any]:
  """A run's results table in `directory` ({} if it has none)."""
  path = os.path.join(directory, "results.json")
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def combine_results(workdir_a: str | os.PathLike, workdir_b: str | os.PathLike, out_dir: str | os.PathLike,
                    how: str, splits: Sequence[str], decoding: str = "greedy") -> dict[str, Any]:
  """Combines two evaluated runs utterance by utterance and writes the result as the ASR evaluation does.

  Args:
    workdir_a, workdir_b: run directories holding results/<split>.<mode>.jsonl (tasks.evaluate_checkpoint).
    out_dir: receives <split>.<mode>.jsonl of the chosen records and results.{json,md}.
    how: "sbf" (select_by_confidence) or "oracle".
    splits: what to combine, offline and (where run a has it) online.
    decoding: whose results to read (config.task.decoding of the evaluations: eval.results.results_dir).

  Returns:
    The results table (eval.results): {"step": None, "checkpoint": "<how>(<a>, <b>)", "method", "sources",
    "online", ["decoding",] "splits": {split: {mode: {"wer", "cer", "loss", "confidence", "utterances",
    "from_b"}}}}; from_b is the share of utterances whose record came from run b. The online chunking and
    latency and the decoding settings are run a's (None / absent if it has no results table).

  Raises:
    ValueError: an unknown `how`, or runs whose utterances differ.
    FileNotFoundError: a results file is missing (the message names it).
  """
  if how not in PREFERS_B:
    raise ValueError(f"unknown combination {how!r}; choose from {sorted(PREFERS_B)}")
  sources = [os.fspath(workdir_a), os.fspath(workdir_b)]
  directories = [results.results_dir(w, decoding) for w in sources]
  run_a = _run_table(directories[0])
  table = {"step": None, "checkpoint": f"{how}({sources[0]}, {sources[1]})", "method": how, "sources": sources,
           "online": run_a.get("online"), "splits": {}}
  if "decoding" in run_a:
    table["decoding"] = run_a["decoding"]
  modes = results.MODES if run_a.get("online") else results.MODES[:1]
  for split in splits:
    table["splits"][split] = {}
    for mode in modes:
      name = f"{split}.{mode}.jsonl"
      paths = [os.path.join(d, name) for d in directories]
      for path in paths:
        if not os.path.exists(path):
          raise FileNotFoundError(f"{path} is missing: evaluate that run first (launch/main.py --mode=eval)")
      combined, from_b = _choose(*(results.read_jsonl(p) for p in paths), how)
      table["splits"][split][mode] = {**results.summarize(combined), "from_b": sum(from_b) / max(len(from_b), 1)}
      results.write_jsonl(combined, os.path.join(os.fspath(out_dir), name))
  results.write_table(table, out_dir)
  return table
