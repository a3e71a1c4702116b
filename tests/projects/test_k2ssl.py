"""k2SSL's comparison job end to end (slow): smoke budgets on a freshly built built-in tiny corpus; every row
evaluated, assets shared between runs, the pre-trained rows fine-tuned from the exports, and a rerun skips all."""

from __future__ import annotations

import json

import pytest

from speechfuse import run
from speechfuse.config import load_config, recipe_path
from speechfuse.projects.k2ssl import pipeline as ssl_compare


def _files(directory):
  return {path.relative_to(directory): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a dozen compilations: minutes on a quiet machine, far more on a busy one
def test_comparison_runs_every_stage_writes_the_table_and_resumes(tmp_path, monkeypatch):
  workdir = tmp_path / "job"
  overrides = {"data.data_dir": str(tmp_path / "data")}
  results = ssl_compare.run_comparison("smoke", workdir, **overrides)

  rows = results["rows"]
  assert [row["method"] for row in rows] == ["from scratch", "HuBERT loss pre-trained", "CE loss pre-trained"]
  assert [row["finetune_steps"] for row in rows] == [2, 2, 2]
  assert rows[0]["pretraining"] is None
  for row in rows[1:]:
    assert row["pretraining"]["steps"] == 2 and 0.0 <= row["pretraining"]["masked_accuracy"] <= 1.0
  assert results["splits"] == ["test_clean", "test_other"]
  for row in rows:
    for split in results["splits"]:
      figures = row["splits"][split]
      assert set(figures) == {"offline", "online"}
      assert all(f["cer"] >= 0.0 and f["wer"] >= 0.0 for f in figures.values())
  assert json.loads((workdir / "results.json").read_text()) == results
  table = (workdir / "results.md").read_text()
  params = rows[0]["params"]
  assert params > 0 and all(row["params"] == params for row in rows)
  assert f"| from scratch | {params / 1e6:.2f} |" in table and "test_other CER online" in table
  assert "| HuBERT loss pre-trained | 2 |" in table and "| CE loss pre-trained | 2 |" in table
  # The phone probe of every row's starting encoder: the fbank input, then each block (smoke: 2).
  for row in rows:
    assert row["probe"]["layers"] == ["fbank", "block 1", "block 2"]
    assert all(0.0 <= a <= 1.0 for a in row["probe"]["accuracy"]) and row["probe"]["eval_frames"] > 0
  assert "| random (from scratch) |" in table and "| CE loss pre-trained | " in table.split("phone probe")[1]
  # The fbank column probes the same input features in every row.
  assert len({row["probe"]["accuracy"][0] for row in rows}) == 1
  # Each block's self-attention statistics (smoke: 2 blocks), per row.
  for row in rows:
    assert len(row["probe"]["attention"]["entropy"]) == len(row["probe"]["attention"]["distance"]) == 2
  assert "| CE loss pre-trained | " in table.split("Self-attention")[1]

  # One CMVN for every run, one tokenizer for every fine-tuning run.
  cmvn = (workdir / "pretrain_hubert" / "cmvn.json").read_bytes()
  for name in ("pretrain_ce", "finetune_scratch", "finetune_hubert", "finetune_ce"):
    assert (workdir / name / "cmvn.json").read_bytes() == cmvn
  tokenizer = _files(workdir / "finetune_scratch" / "tokenizer")
  assert tokenizer and all(_files(workdir / name / "tokenizer") == tokenizer
                           for name in ("finetune_hubert", "finetune_ce"))
  # The pre-trained rows start from their pre-training run's export, the scratch row from nothing.
  init_from = {name: json.loads((workdir / f"finetune_{name}" / "config.json").read_text())["task"]["init_from"]
               for name in ("scratch", "hubert", "ce")}
  assert init_from == {"scratch": None, "hubert": run.export_path(workdir / "pretrain_hubert"),
                       "ce": run.export_path(workdir / "pretrain_ce")}

  def no_run(mode, config, directory):
    raise AssertionError(f"a finished stage ran again: {mode} in {directory}")

  monkeypatch.setattr(run, "run", no_run)
  assert ssl_compare.run_comparison("smoke", workdir, **overrides) == results


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_waveform_comparison_pre_trains_each_objective_and_fine_tunes_from_it(tmp_path):
  results = ssl_compare.run_comparison("smoke", tmp_path / "job", backbone="wav2vec2",
                                       **{"data.data_dir": str(tmp_path / "data")})
  rows = results["rows"]
  assert [row["method"] for row in rows] == [
      "from scratch", "HuBERT loss pre-trained", "wav2vec 2.0 contrastive pre-trained",
      "WavLM (HuBERT loss, gated rel. pos., mixing) pre-trained"]
  assert results["modes"] == ["offline"] and all("probe" not in row for row in rows)
  contrastive = rows[2]["pretraining"]
  assert 0.0 <= contrastive["contrastive_accuracy"] <= 1.0 and 1.0 < contrastive["codebook_perplexity"] <= 640
  assert 0.0 <= rows[3]["pretraining"]["masked_accuracy"] <= 1.0
  assert rows[3]["params"] > rows[0]["params"]  # WavLM's relative position bias and gates
  table = (tmp_path / "job" / "results.md").read_text()
  assert "| wav2vec 2.0 contrastive pre-trained | 2 | - | - |" in table


def test_stages_and_run_configs_follow_the_job_config(tmp_path):
  compare = load_config(f"{recipe_path('ssl_compare')}:tiny")
  compare.data.data_dir = str(tmp_path / "data")
  names = [stage.name for stage in ssl_compare.stages(compare, tmp_path)]
  assert names == ["pretrain_hubert", "pretrain_ce", "finetune_scratch", "eval_scratch", "finetune_hubert",
                   "eval_hubert", "finetune_ce", "eval_ce", "probe"]
  for loss in ("hubert", "ce"):
    config = ssl_compare.pretrain_config(compare, loss)
    assert (config.task.name, config.task.loss, config.size) == ("ssl_hubert", loss, "tiny")
    assert (config.total_steps, config.optimizer.warmup_steps) == (compare.pretrain.steps,
                                                                   compare.pretrain.warmup_steps)
    assert config.data.data_dir == str(tmp_path / "data") and config.data.train_fraction == 1.0
  scratch, pretrained = (ssl_compare.finetune_config(compare, init_from) for init_from in (None, "/x/params"))
  for config in (scratch, pretrained):
    assert (config.task.name, config.total_steps, config.data.train_fraction) == (
        "asr_ctc", compare.finetune.steps, compare.finetune.train_fraction)
    assert config.data.data_dir == str(tmp_path / "data")
  assert (scratch.task.init_from, pretrained.task.init_from) == (None, "/x/params")
  assert pretrained.task.freeze_encoder_steps == compare.finetune.freeze_encoder_steps
  # base keeps the recipes' budgets.
  base = load_config(f"{recipe_path('ssl_compare')}:base")
  recipe = load_config(f"{recipe_path('ssl_hubert')}:base")
  assert ssl_compare.pretrain_config(base, "ce").total_steps == recipe.total_steps


def test_the_waveform_backbone_rows_pre_train_with_their_recipes(tmp_path):
  compare = load_config(f"{recipe_path('ssl_compare')}:tiny,backbone=wav2vec2")
  compare.data.data_dir = str(tmp_path / "data")
  names = [stage.name for stage in ssl_compare.stages(compare, tmp_path)]
  assert names == ["pretrain_hubert", "pretrain_wav2vec2", "pretrain_wavlm", "finetune_scratch", "eval_scratch",
                   "finetune_hubert", "eval_hubert", "finetune_wav2vec2", "eval_wav2vec2", "finetune_wavlm",
                   "eval_wavlm"]  # no probe: it reads fbank input
  tasks_of = {name: ssl_compare.pretrain_config(compare, name).task for name in compare.objectives}
  assert {name: (task.name, task.get("mix_prob")) for name, task in tasks_of.items()} == {
      "hubert": ("ssl_hubert", 0.0), "wav2vec2": ("ssl_wav2vec2", 0.0), "wavlm": ("ssl_hubert", 0.2)}
  for name in compare.objectives:
    pretrain = ssl_compare.pretrain_config(compare, name)
    finetune = ssl_compare.finetune_config(compare, "/x/params", name)
    assert pretrain.model.encoder.architecture == finetune.model.encoder.architecture == "wav2vec2"
    # The fine-tuned encoder has the pre-trained one's parts (WavLM's relative position bias).
    assert (finetune.model.encoder.get("relative_position_buckets", 0)
            == pretrain.model.encoder.get("relative_position_buckets", 0))
  assert ssl_compare.finetune_config(compare, "/x/params", "wavlm").model.encoder.relative_position_buckets == 320
  assert "relative_position_buckets" not in ssl_compare.finetune_config(compare, None).model.encoder
  conformer = load_config(f"{recipe_path('ssl_compare')}:tiny")
  with pytest.raises(ValueError, match="backbone=wav2vec2"):
    ssl_compare.pretrain_config(conformer, "wavlm")
