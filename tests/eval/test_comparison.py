"""speechfuse.eval.comparison: rows from results tables, Markdown in percent, atomic JSON + Markdown files."""

from __future__ import annotations

import json

from speechfuse.eval import comparison


def _results(wer: float, cer: float, modes=("offline", "online")) -> dict:
  return {"step": 4, "checkpoint": "x", "splits": {"test_clean": {m: {"wer": wer, "cer": cer, "utterances": 3.0}
                                                                  for m in modes}}}


ONLINE = {"chunk_frames": 16, "left_chunks": -1, "chunk_ms": 320.0, "lookahead_ms": 25.0}


def test_markdown_has_one_line_per_row_with_figures_in_percent_and_states_the_latency():
  rows = [comparison.row("SL", _results(0.25, 0.125), 3_627_102, stage="sl"),
          comparison.row("SBF", _results(0.5, 0.0625, modes=("offline",)), None)]
  table = comparison.make_table(rows, ["test_clean"], title="Tiny run.", online=ONLINE)
  lines = comparison.markdown(table).splitlines()
  assert lines[0] == "Tiny run." and lines[1] == ""
  assert lines[2] == ("Online: streaming, chunks of 16 encoder frames (all left context): latency 320 ms + 25 ms "
                      "look-ahead.")
  assert lines[4] == ("| method | params (M) | test_clean WER offline | test_clean WER online (345 ms) | "
                      "test_clean CER offline | test_clean CER online (345 ms) |")
  assert lines[5] == "|---|---|---|---|---|---|"
  assert lines[6] == "| SL | 3.63 | 25.00 | 25.00 | 12.50 | 12.50 |"
  assert lines[7] == "| SBF | - | 50.00 | - | 6.25 | - |"  # no parameter count, no online figures
  assert len(lines) == 8


def test_a_table_without_online_decoding_has_no_online_columns():
  table = comparison.make_table([comparison.row("SL", _results(0.1, 0.2, modes=("offline",)), 10)], ["test_clean"])
  assert table["modes"] == ["offline"]
  assert "online" not in comparison.markdown(table)


def test_a_split_a_row_lacks_shows_dashes():
  table = comparison.make_table([comparison.row("SL", _results(0.1, 0.2), 10)], ["test_clean", "test_other"],
                                online=ONLINE)
  assert comparison.markdown(table).splitlines()[-1].endswith("| - | - | - | - |")


def test_write_puts_json_and_markdown_side_by_side(tmp_path):
  table = comparison.make_table([comparison.row("SL", _results(0.1, 0.2), 10, steps=4)], ["test_clean"])
  json_path, md_path = comparison.write(table, tmp_path / "out", "otf_results")
  assert json.loads(open(json_path).read()) == table
  assert open(md_path).read() == comparison.markdown(table)
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["otf_results.json", "otf_results.md"]
