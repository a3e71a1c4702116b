"""speechfuse.projects.pipeline: stages run once, in order; a rerun skips the finished ones."""

from __future__ import annotations

import json

import pytest

from speechfuse.projects import pipeline


def test_stages_run_in_order_and_are_skipped_when_done(tmp_path):
  calls = []

  def stage(name, output):
    return pipeline.Stage(name, f"stage {name}", lambda: calls.append(name) or output)

  stages = [stage("a", {"wer": 0.5}), stage("b", "path/to/b")]
  assert pipeline.run_stages(stages, tmp_path) == {"a": {"wer": 0.5}, "b": "path/to/b"}
  assert calls == ["a", "b"]
  assert json.loads((tmp_path / pipeline.STAGES_FILE).read_text()) == {"a": {"wer": 0.5}, "b": "path/to/b"}
  # A rerun with one more stage runs only that one and still returns every output.
  outputs = pipeline.run_stages(stages + [stage("c", 3)], tmp_path)
  assert calls == ["a", "b", "c"] and outputs == {"a": {"wer": 0.5}, "b": "path/to/b", "c": 3}


def test_a_failed_stage_is_not_recorded(tmp_path):
  def fail():
    raise RuntimeError("killed")

  with pytest.raises(RuntimeError):
    pipeline.run_stages([pipeline.Stage("a", "ok", lambda: 1), pipeline.Stage("b", "fails", fail)], tmp_path)
  assert json.loads((tmp_path / pipeline.STAGES_FILE).read_text()) == {"a": 1}


def test_duplicate_stage_names_are_rejected(tmp_path):
  with pytest.raises(ValueError, match="unique"):
    pipeline.run_stages([pipeline.Stage("a", "", lambda: 1)] * 2, tmp_path)


def test_share_files_copies_what_the_target_lacks_and_keeps_what_it_has(tmp_path):
  source, target = tmp_path / "sl", tmp_path / "ssl"
  (source / "tokenizer").mkdir(parents=True)
  (source / "tokenizer" / "vocab.txt").write_text("abc")
  (source / "cmvn.json").write_text("{}")
  target.mkdir()
  (target / "cmvn.json").write_text('{"kept": 1}')
  pipeline.share_files(source, target, ("tokenizer", "cmvn.json"))
  assert (target / "tokenizer" / "vocab.txt").read_text() == "abc"
  assert (target / "cmvn.json").read_text() == '{"kept": 1}'
  assert sorted(p.name for p in target.iterdir()) == ["cmvn.json", "tokenizer"]  # no temporary left
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    pipeline.share_files(source, target, ("missing.txt",))
