"""projects.k2ssl.curves: the train lines of each run's metrics.jsonl, one panel per metric any run logs."""

from __future__ import annotations

import json

from matplotlib import image

from speechfuse.projects.k2ssl import curves


def _write(directory, rows):
  directory.mkdir()
  with open(directory / "metrics.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)


def test_train_lines_in_step_order_and_one_panel_per_logged_metric(tmp_path):
  _write(tmp_path / "hubert", [{"step": 20, "split": "train", "loss": 4.0, "masked_accuracy": 0.2},
                               {"step": 10, "split": "train", "loss": 5.0, "masked_accuracy": 0.1},
                               {"step": 20, "split": "eval", "loss": 9.0}])
  _write(tmp_path / "w2v", [{"step": 10, "split": "train", "loss": 3.0, "codebook_perplexity": 300.0}])
  assert [row["step"] for row in curves.read_train_metrics(tmp_path / "hubert" / "metrics.jsonl")] == [10, 20]
  path = curves.plot({"HuBERT": tmp_path / "hubert", "wav2vec 2.0": tmp_path / "w2v"}, tmp_path / "curves.png")
  height, width, _ = image.imread(path).shape
  assert width > 2.5 * height  # three panels side by side: loss, masked accuracy, perplexity
  assert not (tmp_path / "curves.png.tmp").exists()


def test_no_logged_run_draws_nothing(tmp_path):
  assert curves.plot({"missing": tmp_path / "nowhere"}, tmp_path / "curves.png") is None
  assert not (tmp_path / "curves.png").exists()
