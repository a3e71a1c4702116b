"""`--mode=fuse` on smoke-size CTC runs: the fused checkpoint loads (ASRTask.evaluate_splits, task.init_from), the
report and the members' assets are written, a model fused with its random permutation (exact solver) comes back
exactly with its eval loss, direct averaging, the errors; (slow) two models trained through the trainer, fused and
evaluated."""

from __future__ import annotations

import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tasks"))
import ctc_members_testlib  # pylint: disable=g-import-not-at-top,wrong-import-position

from speechfuse import run as run_lib
from speechfuse import fusion, parallel, run, train  # pylint: disable=wrong-import-position
from speechfuse.tasks import evaluate_checkpoint  # pylint: disable=wrong-import-position
from speechfuse.fusion import spec as spec_lib  # pylint: disable=wrong-import-position
from speechfuse import tasks
from speechfuse.train import checkpoint, state as state_lib  # pylint: disable=wrong-import-position
from speechfuse.tasks import asr  # pylint: disable=wrong-import-position


@pytest.fixture(scope="module")
def members(tmp_path_factory):
  """The smoke config and two exported member runs with random variables (their own tokenizer and CMVN)."""
  dataset = ctc_members_testlib.write_noise_corpus(tmp_path_factory.mktemp("data"))
  config = ctc_members_testlib.smoke_ctc_config(dataset)
  paths = [ctc_members_testlib.write_member(config, tmp_path_factory.mktemp(f"run{seed}"), seed) for seed in (1, 2)]
  return config, paths


def _fuse_config(config, sl, ssl, **fusion_options):
  config = config.copy_and_resolve_references()
  config.fusion = fusion.default_config()
  config.fusion.sl, config.fusion.ssl = str(sl), str(ssl)
  config.fusion.update(fusion_options)
  return config


def _leaves(variables):
  return spec_lib.flatten(variables)


def _eval_loss(config, workdir, variables) -> float:
  task = tasks.get_task(config, workdir)
  step = jax.jit(task.eval_step)
  eval_step = lambda batch: jax.device_get(step(variables, parallel.numeric_only(batch)))
  return task.evaluate(eval_step, task.make_input("eval", seed=0, shard_index=0, shard_count=1))["loss"]


def test_otf_writes_params_report_and_the_members_assets(members, tmp_path):
  config, (sl, ssl) = members
  path = run.run("fuse", _fuse_config(config, sl, ssl), tmp_path)
  assert path == str(tmp_path / "fused" / "params")
  fused, source = _leaves(train.load_variables(path)), _leaves(train.load_variables(ssl))
  assert fused.keys() == source.keys() and all(fused[k].shape == source[k].shape for k in fused)
  report = json.loads((tmp_path / "fused" / "report.json").read_text())
  assert report["method"] == "otf" and report["solver"] == "sinkhorn" and report["weight"] == 0.5
  assert {"residual", "blocks_0/mhsa", "blocks_0/conv", "subsampling/conv_0"} <= set(report["spaces"])
  residual = report["spaces"]["residual"]
  assert residual["units"] == 64 and residual["converged"] and residual["cost"] > 0
  assert "| residual | 64 |" in (tmp_path / "fused" / "report.md").read_text()
  run_dir = ssl.parents[1]
  assert (tmp_path / asr.CMVN_FILE).read_bytes() == (run_dir / asr.CMVN_FILE).read_bytes()
  assert (tmp_path / asr.TOKENIZER_DIR / "tokenizer.json").exists()
  # Usable as task.init_from with init_encoder_only=False: every leaf loads, none is left initialised.
  config = config.copy_and_resolve_references()
  config.task.init_from, config.task.init_encoder_only = path, False
  task = tasks.get_task(config, tmp_path)
  example = state_lib.example_batch(next(task.make_input("train", seed=0, shard_index=0, shard_count=1)))
  shapes = jax.eval_shape(lambda: task.model.init(jax.random.key(0), example["audio"], example["audio_lengths"]))
  _, loaded = train.merge_pretrained(shapes, train.load_variables(path))
  assert not loaded["initialised"] and not loaded["dropped"] and len(loaded["loaded"]) == len(fused)
  # A rerun replaces the fused directory.
  fusion.fuse(_fuse_config(config, sl, ssl, method="direct"), tmp_path)
  assert json.loads((tmp_path / "fused" / "report.json").read_text())["method"] == "direct"


def test_direct_average(members, tmp_path):
  config, (sl, ssl) = members
  path = fusion.fuse(_fuse_config(config, sl, ssl, method="direct", weight=0.25), tmp_path)
  a, b, fused = (_leaves(train.load_variables(p)) for p in (sl, ssl, path))
  for key, value in fused.items():
    np.testing.assert_allclose(value, 0.75 * a[key] + 0.25 * b[key], rtol=1e-6, atol=1e-7, err_msg=key)
  report = json.loads((tmp_path / "fused" / "report.json").read_text())
  assert report["spaces"] == {} and report["solver"] is None
  assert "direct average" in (tmp_path / "fused" / "report.md").read_text()


@pytest.fixture(scope="module")
def permuted(members, tmp_path_factory):
  """Member 1 with every hidden space randomly permuted, exported outside any run directory."""
  config, (sl, _) = members
  variables = train.load_variables(sl)
  shuffled = fusion.random_permutation(variables, fusion.conformer_ctc_spec(variables), jax.random.key(5))
  return checkpoint.write_variables(tmp_path_factory.mktemp("permuted") / "params", jax.device_get(shuffled))


def test_fusing_a_permuted_copy_with_the_exact_solver_recovers_the_model_and_its_eval_loss(members, permuted,
                                                                                          tmp_path):
  config, (original, _) = members
  path = fusion.fuse(_fuse_config(config, permuted, original, solver="exact"), tmp_path)
  fused, expected = _leaves(train.load_variables(path)), _leaves(train.load_variables(original))
  for key, value in expected.items():
    np.testing.assert_array_equal(fused[key], value, err_msg=key)
  report = json.loads((tmp_path / "fused" / "report.json").read_text())
  assert all(space["max_mass"] == 1.0 and space["cost"] <= space["identity_cost"]
             for space in report["spaces"].values())
  table = evaluate_checkpoint(config, tmp_path, splits=["dev"], checkpoint=path)
  loss = _eval_loss(config, original.parents[1], train.load_variables(original))
  assert table["splits"]["dev"]["offline"]["loss"] == pytest.approx(loss, rel=1e-5)
  assert _eval_loss(config, tmp_path, train.load_variables(permuted)) == pytest.approx(loss, rel=1e-4)


def test_activation_alignment_recovers_a_permuted_copy(members, permuted, tmp_path):
  config, (original, _) = members
  fusion.fuse(_fuse_config(config, permuted, original, solver="exact", alignment="activations",
                           activation_batches=1), tmp_path)
  fused = _leaves(train.load_variables(tmp_path / "fused" / "params"))
  for key, value in _leaves(train.load_variables(original)).items():
    np.testing.assert_allclose(fused[key], value, rtol=0, atol=1e-6, err_msg=key)


def test_errors_name_the_problem(members, tmp_path):
  config, (sl, ssl) = members
  with pytest.raises(FileNotFoundError, match="config.fusion.sl="):
    fusion.fuse(_fuse_config(config, tmp_path / "missing", ssl), tmp_path)
  with pytest.raises(ValueError, match="config.fusion.method='blend' is unknown"):
    fusion.fuse(_fuse_config(config, sl, ssl, method="blend"), tmp_path)
  with pytest.raises(ValueError, match="config.fusion.solver='simplex' is unknown"):
    fusion.fuse(_fuse_config(config, sl, ssl, solver="simplex"), tmp_path)
  with pytest.raises(ValueError, match="config.fusion.rounds=1: .* alignment='weights'"):
    fusion.fuse(_fuse_config(config, sl, ssl, rounds=1, alignment="activations"), tmp_path)
  without_fusion = config.copy_and_resolve_references()
  del without_fusion["fusion"]
  with pytest.raises(ValueError, match="no fusion section"):
    fusion.fuse(without_fusion, tmp_path)
  variables = train.load_variables(ssl)
  variables["params"]["ctc_head"]["bias"] = np.zeros(7, np.float32)
  other = checkpoint.write_variables(tmp_path / "other" / "params", variables)
  with pytest.raises(ValueError, match="params/ctc_head/bias has shape"):
    fusion.fuse(_fuse_config(config, sl, other), tmp_path / "a")
  del variables["params"]["ctc_head"]
  fewer = checkpoint.write_variables(tmp_path / "fewer" / "params", variables)
  with pytest.raises(ValueError, match="params/ctc_head/bias is in config.fusion.sl=.* but not in"):
    fusion.fuse(_fuse_config(config, sl, fewer), tmp_path / "b")
  # Members whose tokenizers differ read different token ids.
  run_dir = tmp_path / "run_other_tokenizer"
  shutil.copytree(ssl.parents[1], run_dir)
  descriptor = run_dir / asr.TOKENIZER_DIR / "tokenizer.json"
  descriptor.write_text(descriptor.read_text().replace("abc", "bac"))  # other ids
  with pytest.raises(ValueError, match="tokenizer differs"):
    fusion.fuse(_fuse_config(config, sl, run_dir / "export" / "params"), tmp_path / "c")


@pytest.mark.slow
def test_two_trained_smoke_models_fuse_and_evaluate(members, tmp_path):
  config, _ = members
  exported = []
  for seed in (0, 1):
    member = config.copy_and_resolve_references()
    member.seed = seed
    member.total_steps = member.eval_every_steps = member.checkpoint_every_steps = 2
    workdir = tmp_path / f"member{seed}"
    run_lib.run("train", member, workdir)
    exported.append(run.run("export", member, workdir))
  path = run.run("fuse", _fuse_config(config, *exported), tmp_path / "fused_run")
  table = evaluate_checkpoint(config, tmp_path / "fused_run", checkpoint=path)
  assert all(np.isfinite(table["splits"]["dev"][mode]["loss"]) for mode in ("offline", "online"))
