"""Checkpoints: exact resume (parameters and data order), corrupt-latest fallback, shape mismatch, average, export."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from speechfuse import run as run_lib, train
from trainer_testlib import flat_params, read_order, tiny_config


def _assert_same_params(a, b):
  a, b = flat_params(a), flat_params(b)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_resume_continues_exactly(tmp_path):
  straight = run_lib.run("train", tiny_config(**{"task.record_path": str(tmp_path / "straight.jsonl")}),
                                      tmp_path / "straight")
  record = {"task.record_path": str(tmp_path / "resumed.jsonl")}
  run_lib.run("train", tiny_config(total_steps=4, **record), tmp_path / "resumed")
  resumed = run_lib.run("train", tiny_config(total_steps=8, **record), tmp_path / "resumed")
  _assert_same_params(straight.params, resumed.params)
  _assert_same_params(straight.extra, resumed.extra)
  straight_order, resumed_order = read_order(tmp_path / "straight.jsonl"), read_order(tmp_path / "resumed.jsonl")
  assert len(straight_order) == 8 and resumed_order == straight_order


def test_resumed_metrics_hold_every_step_once(tmp_path):
  run_lib.run("train", tiny_config(), tmp_path)
  shutil.rmtree(tmp_path / "checkpoints" / "8")  # killed before its last save: the rerun resumes at step 4
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 9, "split": "tr')  # ... and in the middle of writing a metrics line
  run_lib.run("train", tiny_config(), tmp_path)
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(line["step"], line["split"]) for line in lines] == [(2, "train"), (4, "train"), (4, "eval"), (6, "train"),
                                                               (8, "train"), (8, "eval")]


def _truncate_largest_file(directory):
  files = [os.path.join(root, f) for root, _, names in os.walk(directory) for f in names]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)


def test_truncated_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
  straight = run_lib.run("train", tiny_config(), tmp_path / "straight")
  run_lib.run("train", tiny_config(), tmp_path / "run")
  _truncate_largest_file(tmp_path / "run" / "checkpoints" / "8" / "state")
  with caplog.at_level("WARNING"):
    resumed = run_lib.run("train", tiny_config(), tmp_path / "run")  # restores step 4, retrains 5..8
  assert any("checkpoints/8 is corrupt" in r.getMessage() or "checkpoints/8 is unreadable" in r.getMessage()
             for r in caplog.records)
  _assert_same_params(straight.params, resumed.params)


def test_checkpoint_of_another_model_names_the_parameter(tmp_path):
  run_lib.run("train", tiny_config(total_steps=4), tmp_path)
  with pytest.raises(train.CheckpointMismatchError, match=r"params/embed/(bias|kernel) has shape .*\(16,?.*\(24"):
    run_lib.run("train", tiny_config(**{"total_steps": 8, "model.embed_dim": 24}), tmp_path)


def test_export_and_average(tmp_path):
  config = tiny_config(**{"checkpoint_every_steps": 2, "best_checkpoint_metric": ""})
  run_lib.run("train", config, tmp_path)
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [4, 6, 8]
  steps = {step: train.load_variables(train.export_params(tmp_path, tmp_path / f"step{step}", step=step))
           for step in (6, 8)}
  assert set(steps[8]) == {"params", "batch_stats"}
  latest = train.load_variables(train.export_params(tmp_path, tmp_path / "latest"))
  _assert_same_params(latest, steps[8])
  average = train.load_variables(train.average_checkpoints(tmp_path, 2, tmp_path / "average"))
  for key, value in flat_params(average).items():
    np.testing.assert_allclose(value, (flat_params(steps[6])[key] + flat_params(steps[8])[key]) / 2, rtol=1e-6)
  with pytest.raises(FileExistsError):
    train.export_params(tmp_path, tmp_path / "latest")
  with pytest.raises(ValueError, match="last 5 checkpoints"):
    train.average_checkpoints(tmp_path, 5, tmp_path / "too_many")
