"""SBF and the oracle upper bound on hand-built records, and combine_results over two runs' result files; the
combined WER is checked against a Levenshtein distance computed here."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "eval"))
import edit_distance_testlib  # pylint: disable=g-import-not-at-top,wrong-import-position

from speechfuse.eval import results  # pylint: disable=wrong-import-position
from speechfuse.projects.otf import baselines  # pylint: disable=wrong-import-position

REFERENCES = {"u1": "one two three", "u2": "four five", "u3": "six one two", "u4": "three"}
# id -> (hypothesis, confidence) per run; u3 ties on confidence, u4 ties on word errors.
RUN_A = {"u1": ("one two three", 0.9), "u2": ("four", 0.8), "u3": ("six won two", 0.5), "u4": ("tree", 0.6)}
RUN_B = {"u1": ("one too three", 0.95), "u2": ("four five", 0.7), "u3": ("six one two", 0.5), "u4": ("three x", 0.2)}


def _records(run: dict) -> list[dict]:
  records = []
  for i, (hypothesis, confidence) in run.items():
    reference = REFERENCES[i]
    records.append({"id": i, "reference": reference, "hypothesis": hypothesis, "confidence": confidence,
                    "loss": 1.0, "words": len(reference.split()), "chars": len(reference),
                    "word_errors": edit_distance_testlib.edit_distance(reference.split(), hypothesis.split()),
                    "char_errors": edit_distance_testlib.edit_distance(list(reference), list(hypothesis))})
  return records


def _wer(records: list[dict]) -> float:
  return (sum(edit_distance_testlib.edit_distance(r["reference"].split(), r["hypothesis"].split()) for r in records)
          / sum(len(r["reference"].split()) for r in records))


def test_sbf_picks_the_more_confident_hypothesis_ties_to_a():
  a, b = _records(RUN_A), _records(RUN_B)
  chosen = baselines.select_by_confidence(a, list(reversed(b)))  # matched by id, not position
  assert [r["id"] for r in chosen] == ["u1", "u2", "u3", "u4"]
  assert [r["hypothesis"] for r in chosen] == ["one too three", "four", "six won two", "tree"]
  # 1 (too) + 1 (five deleted) + 1 (won) + 1 (tree) errors over 9 words.
  assert _wer(chosen) == pytest.approx(4 / 9)
  assert results.summarize(chosen)["wer"] == pytest.approx(4 / 9)
  chosen[0]["hypothesis"] = "changed"
  assert b[0]["hypothesis"] == "one too three", "the inputs are not modified"


def test_oracle_picks_fewer_word_errors_then_char_errors_then_a():
  a, b = _records(RUN_A), _records(RUN_B)
  chosen = baselines.oracle(a, b)
  # u4: one word error each; "tree" has 1 char error, "three x" 2.
  assert [r["hypothesis"] for r in chosen] == ["one two three", "four five", "six one two", "tree"]
  assert _wer(chosen) == pytest.approx(1 / 9)
  assert _wer(chosen) <= min(_wer(a), _wer(b))
  same = baselines.oracle(a, [dict(r) for r in a])
  assert all(x["hypothesis"] == y["hypothesis"] for x, y in zip(same, a))


def test_mismatched_ids_name_an_id():
  a, b = _records(RUN_A), _records(RUN_B)
  with pytest.raises(ValueError, match="'u4' is only in a"):
    baselines.select_by_confidence(a, b[:3])
  with pytest.raises(ValueError, match="'u4' is only in b"):
    baselines.oracle(a[:3], b)
  with pytest.raises(ValueError, match="repeat id 'u1'"):
    baselines.oracle(a + a[:1], b)
  no_confidence = [dict(r, confidence=None) for r in a]
  with pytest.raises(ValueError, match="'u1' has no confidence"):
    baselines.select_by_confidence(no_confidence, b)


ONLINE = {"chunk_frames": 16, "left_chunks": -1, "chunk_ms": 640.0, "lookahead_ms": 45.0}


def _write_run(workdir, run: dict, decoding: str = "greedy"):
  directory = results.results_dir(workdir, decoding)
  for mode in results.MODES:
    results.write_jsonl(_records(run), f"{directory}/dev.{mode}.jsonl")
  table = {"online": ONLINE, "decoding": {"method": decoding}}
  with open(f"{directory}/results.json", "w") as f:
    json.dump(table, f)


@pytest.mark.parametrize("how, wer, from_b", [("sbf", 4 / 9, 0.25), ("oracle", 1 / 9, 0.5)])
def test_combine_results_writes_the_eval_table_format(tmp_path, how, wer, from_b):
  _write_run(tmp_path / "a", RUN_A)
  _write_run(tmp_path / "b", RUN_B)
  table = baselines.combine_results(tmp_path / "a", tmp_path / "b", tmp_path / "out", how, splits=["dev"])
  assert table["online"] == ONLINE and table["step"] is None
  for mode in results.MODES:
    figures = table["splits"]["dev"][mode]
    assert figures["wer"] == pytest.approx(wer) and figures["from_b"] == from_b and figures["utterances"] == 4
    records = results.read_jsonl(tmp_path / "out" / f"dev.{mode}.jsonl")
    assert [r["id"] for r in records] == ["u1", "u2", "u3", "u4"] and _wer(records) == pytest.approx(wer)
  assert json.loads((tmp_path / "out" / "results.json").read_text())["splits"] == table["splits"]
  markdown = (tmp_path / "out" / "results.md").read_text()
  assert f"| dev | {100 * wer:.2f} |" in markdown and f"Results of {how}(" in markdown


def test_combine_results_of_another_decoding(tmp_path):
  _write_run(tmp_path / "a", RUN_A, "beam")
  _write_run(tmp_path / "b", RUN_B, "beam")
  table = baselines.combine_results(tmp_path / "a", tmp_path / "b", tmp_path / "out", "oracle", ["dev"],
                                    decoding="beam")
  assert table["decoding"] == {"method": "beam"} and table["splits"]["dev"]["online"]["wer"] == pytest.approx(1 / 9)
  with pytest.raises(FileNotFoundError, match="dev.offline.jsonl is missing"):
    baselines.combine_results(tmp_path / "a", tmp_path / "b", tmp_path / "out", "oracle", ["dev"])


def test_combine_results_errors(tmp_path):
  _write_run(tmp_path / "a", RUN_A)
  with pytest.raises(FileNotFoundError, match="dev.offline.jsonl is missing"):
    baselines.combine_results(tmp_path / "a", tmp_path / "b", tmp_path / "out", "sbf", splits=["dev"])
  with pytest.raises(ValueError, match="unknown combination 'vote'"):
    baselines.combine_results(tmp_path / "a", tmp_path / "a", tmp_path / "out", "vote", splits=["dev"])
