"""The quickstart (the OTF pipeline): its member configs and checks, and end to end (slow) the README's main job at
smoke size and the quickstart notebook, each on a fresh data dir."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import nbclient
import nbformat
import numpy as np
import pytest

from speechfuse import train
from speechfuse.config import load_config, recipe_path
from speechfuse.projects.otf import pipeline as quickstart
from speechfuse.train import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEADER = "| method | params (M) | test_clean WER offline | test_clean WER online ("


def _otf(size: str = "tiny"):
  otf = load_config(f"{recipe_path('otf')}:{size}")
  otf.data.data_dir = "/elsewhere/data"
  return otf


@pytest.mark.parametrize("size", ["smoke", "tiny", "base"])
def test_member_configs_read_one_corpus_and_follow_the_budgets(size):
  otf = _otf(size)
  sl, pretrain = quickstart.sl_config(otf), quickstart.pretrain_config(otf)
  ssl = quickstart.finetune_config(otf, "pre/params")
  mft = quickstart.mft_config(otf, "sl/params", otf.steps.sl)
  full = quickstart.continued_config(otf, "direct/params", otf.steps.full_ft)
  ebf = quickstart.ebf_config(otf, ("sl/params", "ssl/params"))
  fuse = quickstart.fuse_config(otf, "sl/params", "ssl/params", "otf")
  for config in (sl, pretrain, ssl, mft, full, ebf, fuse):
    assert config.data.data_dir == "/elsewhere/data" and config.data.builtin_size == otf.data.builtin_size
    assert tuple(config.data.test_splits) == tuple(otf.data.test_splits)
    assert 0 <= config.optimizer.warmup_steps <= config.total_steps
    train.validate(config, device_count=1, process_count=1)
  assert (sl.total_steps, pretrain.total_steps, ssl.total_steps) == (otf.steps.sl, otf.steps.ssl_pretrain,
                                                                     otf.steps.ssl_finetune)
  assert ssl.data.train_fraction == sl.data.train_fraction == 1.0 and ssl.task.init_from == "pre/params"
  assert sl.seed != pretrain.seed == ssl.seed  # two independently initialised models
  # The same encoder (parameter layout); pre-training just does not train with dynamic chunks.
  encoder = lambda config: {k: v for k, v in config.model.encoder.items() if k != "dynamic_chunk_training"}
  assert pretrain.model.encoder.architecture == "conformer" and encoder(pretrain) == encoder(sl)
  assert pretrain.task.loss == otf.ssl_loss
  # ssl_finetune's options replace the fine-tuning recipe's where set.
  recipe = load_config(f"{recipe_path('finetune_ctc')}:{otf.member_size}")
  rate, freeze = otf.ssl_finetune.learning_rate, otf.ssl_finetune.freeze_encoder_steps
  assert ssl.optimizer.learning_rate == (recipe.optimizer.learning_rate if rate is None else rate)
  assert ssl.task.freeze_encoder_steps == (recipe.task.freeze_encoder_steps if freeze is None else freeze)
  assert mft.total_steps == max(1, round(otf.mft.fraction * otf.steps.sl))
  assert mft.optimizer.learning_rate == otf.mft.learning_rate and full.optimizer.learning_rate == \
      sl.optimizer.learning_rate
  for config, start in ((mft, "sl/params"), (full, "direct/params")):
    assert config.task.init_from == start and not config.task.init_encoder_only
    assert config.task.freeze_encoder_steps == 0
  assert ebf.model.name == "ctc_ensemble" and tuple(ebf.task.init_members) == ("sl/params", "ssl/params")
  assert ebf.total_steps == otf.steps.ebf
  assert (fuse.fusion.method, fuse.fusion.solver, fuse.fusion.sl) == ("otf", otf.fusion.solver, "sl/params")


def test_stages_produce_every_row_in_the_papers_order(tmp_path):
  names = [stage.name for stage in quickstart.stages(_otf(), tmp_path)]
  assert len(set(names)) == len(names) and names[-1] == "landscape"
  row_stages = [name for _, name in quickstart.ROWS]
  assert set(row_stages) <= set(names)
  # Every row's stage comes after the stages it reads.
  for later, earlier in (("ssl_finetune", "ssl_pretrain"), ("otf", "aligned_avg"), ("direct_full_ft", "direct_avg"),
                         ("sbf", "ssl_finetune"), ("ebf", "ssl_finetune"), ("aligned_avg", "sl")):
    assert names.index(earlier) < names.index(later)


def test_models_with_different_vocabularies_are_refused_naming_both(tmp_path):
  paths = []
  for name, vocab in (("sl", 30), ("ssl", 31)):
    variables = {"params": {"ctc_head": {"kernel": np.zeros((4, vocab), np.float32),
                                         "bias": np.zeros((vocab,), np.float32)}}}
    paths.append(checkpoint.write_variables(tmp_path / name, variables))
  quickstart.check_vocabulary(paths[0], paths[0])
  with pytest.raises(ValueError, match=r"sl has 30 output tokens and the SSL model .*ssl 31"):
    quickstart.check_vocabulary(*paths)
  assert quickstart.num_params(paths[1]) == 4 * 31 + 31


def test_launcher_refuses_an_unknown_override_naming_it(tmp_path):
  result = subprocess.run([sys.executable, "launch/quickstart.py", "--size=smoke", "--config.steps.no_such_stage=1",
                           f"--workdir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and "unknown config key" in result.stderr and "no_such_stage" in result.stderr
  assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.timeout(3600)  # ~9 training runs and ~10 decodings: minutes on a quiet machine, far more on a busy one
def test_quickstart_script_runs_every_stage_and_prints_the_results_table(tmp_path):
  env = {**os.environ, "SPEECHFUSE_DATA": str(tmp_path / "data")}
  workdir = tmp_path / "run"
  result = subprocess.run([sys.executable, "launch/quickstart.py", "--size=smoke", f"--workdir={workdir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=3500)
  assert result.returncode == 0, result.stderr[-3000:]
  assert HEADER in result.stdout
  assert "stage 13/13 [landscape]" in result.stderr  # the progress lines
  # A quiet console: the libraries' INFO lines (orbax's checkpoint manager) are in the job's log file only.
  assert "CheckpointManager" not in result.stderr and "CheckpointManager" in (workdir / "log.txt").read_text()
  table = json.loads((workdir / f"{quickstart.RESULTS_NAME}.json").read_text())
  assert [row["method"] for row in table["rows"]] == [label for label, _ in quickstart.ROWS]
  assert table["splits"] == ["test_clean", "test_other"] and table["modes"] == ["offline", "online"]
  sizes = {row["stage"]: row["params"] for row in table["rows"]}
  assert sizes["otf"] == sizes["sl"] == sizes["ssl_finetune"]  # fused models keep the members' architecture
  assert sizes["sbf"] == sizes["upper_bound"] == 2 * sizes["sl"]
  assert sizes["sl"] < sizes["ebf"] < 2 * sizes["sl"]  # both encoders and one (wider) head
  for row in table["rows"]:
    for split in table["splits"]:
      assert set(row["splits"][split]) == {"offline", "online"}, (row["method"], split)
  assert (workdir / "landscape" / "landscape.png").stat().st_size > 0
  assert "alpha" in (workdir / "landscape" / "landscape.csv").read_text().splitlines()[0]
  assert json.loads((workdir / "sl" / "config.json").read_text())["size"] == "smoke"
  # Every run decodes with the SL run's tokenizer.
  for stage in ("ssl_finetune", "otf", "ebf"):
    assert (workdir / stage / "tokenizer").is_dir()


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  # The kernel process inherits these.
  monkeypatch.setenv("SPEECHFUSE_DATA", str(tmp_path / "data"))
  monkeypatch.setenv("QUICKSTART_WORKDIR", str(tmp_path / "run"))
  notebook = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
  nbclient.NotebookClient(notebook, timeout=3500, kernel_name="python3",
                          resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
  outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                    for o in cell.get("outputs", []))
  assert HEADER in outputs
  assert (tmp_path / "run" / f"{quickstart.RESULTS_NAME}.md").exists()
