"""ASR tasks on a small written dataset: run assets, batches, losses, evaluation, the transducer's warm-up blend and
per-term feasibility; and (slow) the smoke recipes trained and evaluated end to end on the built-in tiny corpus."""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
import pytest
import speech_testlib

from speechfuse import parallel, run as run_lib, tasks
from speechfuse.eval import results
from speechfuse.losses import ctc as ctc_lib
from speechfuse.tasks import asr, evaluate_checkpoint
from speechfuse.train import state as state_lib


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  counts = {"train": 12, "dev": 3, "test_clean": 3}
  return speech_testlib.write_corpus(tmp_path_factory.mktemp("data"), "noise_words", counts,
                                     speech_testlib.noise_word_records)

def _config(name: str, dataset: pathlib.Path):
  config = speech_testlib.recipe(name, "smoke")
  config.data.corpus = str(dataset)
  config.data.test_splits = ("test_clean",)
  config.data.bucket_boundaries_seconds = (1.0, 2.0)
  config.data.max_batch_seconds = 8.0
  config.compute_dtype = "float32"
  return config

def _jit_eval(task, variables):
  step = jax.jit(task.eval_step)
  return lambda batch: jax.device_get(step(variables, parallel.numeric_only(batch)))

@pytest.fixture(scope="module")
def ctc_run(dataset, tmp_path_factory):
  config = _config("asr_conformer_ctc", dataset)
  workdir = tmp_path_factory.mktemp("ctc")
  task = tasks.get_task(config, workdir)
  batch = next(task.make_input("train", seed=0, shard_index=0, shard_count=1))
  variables = task.init(jax.random.key(0), state_lib.example_batch(batch))
  return config, workdir, task, batch, variables

def test_assets_are_saved_and_reloaded(ctc_run):
  config, workdir, task, _, _ = ctc_run
  assert os.path.exists(os.path.join(workdir, asr.CMVN_FILE))
  assert os.path.exists(os.path.join(workdir, asr.TOKENIZER_DIR, "tokenizer.json"))
  again = tasks.get_task(config, workdir)
  np.testing.assert_array_equal(again.cmvn.sum, task.cmvn.sum)
  assert again.tokenizer.vocab_size == task.tokenizer.vocab_size == 30  # blank, unk, space, apostrophe, a-z

def test_ctc_loss_is_the_mean_over_real_utterances(ctc_run):
  _, _, task, batch, variables = ctc_run
  params, extra = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  device_batch = parallel.numeric_only(batch)
  loss, (metrics, new_extra) = jax.jit(lambda b: task.loss(params, extra, b, jax.random.key(1), step=0,
                                                           train=True))(device_batch)
  assert np.isfinite(loss.value) and set(metrics) == {"loss_per_token", "infeasible_fraction"}
  assert set(new_extra) == {"batch_stats"}
  # Evaluation mode: the loss is the sum of eval_step's per-utterance losses over mask-1 rows, over their count.
  eval_loss, _ = jax.jit(lambda b: task.loss(params, extra, b, None, step=0, train=False))(device_batch)
  per_utterance = _jit_eval(task, variables)(batch)["loss"]
  mask = batch["mask"] > 0
  assert float(eval_loss.count) == mask.sum()
  np.testing.assert_allclose(eval_loss.value, per_utterance[mask].mean(), rtol=1e-5)

def test_ctc_evaluate_reports_loss_cer_wer(ctc_run):
  _, _, task, _, variables = ctc_run
  records = task.utterances(_jit_eval(task, variables), task.make_input("eval", seed=0, shard_index=0, shard_count=1))
  assert sorted(r["id"] for r in records) == ["dev-0", "dev-1", "dev-2"]
  summary = results.summarize(records)
  assert set(summary) == {"loss", "wer", "cer", "confidence", "utterances"}
  assert summary["utterances"] == 3 and 0 < summary["confidence"] <= 1
  assert summary["cer"] == sum(r["char_errors"] for r in records) / sum(r["chars"] for r in records)

def test_batch_multiple_covers_gradient_accumulation(dataset, tmp_path):
  config = _config("asr_conformer_ctc", dataset)
  config.grad_accum_steps = 2
  task = tasks.get_task(config, tmp_path)
  assert task.data_config.batch_multiple == 2
  batch = next(task.make_input("train", seed=0, shard_index=0, shard_count=1))
  assert len(batch["mask"]) % 2 == 0

def test_asr_task_needs_a_workdir(dataset):
  with pytest.raises(ValueError, match="workdir"):
    tasks.get_task(_config("asr_conformer_ctc", dataset))

@pytest.fixture(scope="module")
def transducer_run(dataset, tmp_path_factory):
  config = _config("asr_conformer_transducer", dataset)
  task = tasks.get_task(config, tmp_path_factory.mktemp("rnnt"))
  batch = next(task.make_input("train", seed=0, shard_index=0, shard_count=1))
  return task, batch, task.init(jax.random.key(0), state_lib.example_batch(batch))


def test_transducer_task_loss_and_evaluation(transducer_run):
  task, batch, variables = transducer_run
  params, extra = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  loss, (metrics, _) = jax.jit(lambda b: task.loss(params, extra, b, jax.random.key(1), step=0, train=True))(
      parallel.numeric_only(batch))
  assert np.isfinite(loss.value)
  assert {"simple_loss", "pruned_loss", "ctc_loss", "ctc_infeasible_fraction"} <= set(metrics)
  records = task.utterances(_jit_eval(task, variables), task.make_input("eval", seed=0, shard_index=0, shard_count=1))
  assert len(records) == 3 and all(r["confidence"] is None for r in records)
  summary = results.summarize(records)
  assert set(summary) == {"loss", "wer", "cer", "utterances"} and np.isfinite(summary["loss"])


def test_transducer_warm_up_blend_follows_the_trainer_step(transducer_run):
  task = transducer_run[0]
  warm = task.config.task.warm_step
  losses = {"simple": np.array([2.0]), "pruned": np.array([10.0]), "ctc": np.array([30.0])}
  ctc = task.config.task.ctc_weight * 30.0
  # icefall: simple_scale 1 -> simple_loss_scale (0.5) and pruned_scale 0.1 -> 1 over warm_step, then constant.
  for step, simple_scale, pruned_scale in ((0, 1.0, 0.1), (warm / 2, 0.75, 0.55), (warm, 0.5, 1.0),
                                           (4 * warm, 0.5, 1.0)):
    blended, counted = task.blend(losses, np.float32(step))
    np.testing.assert_allclose(blended, [simple_scale * 2 + pruned_scale * 10 + ctc], rtol=1e-6)
    assert counted.all()
  np.testing.assert_allclose(task.blend(losses, None)[0], [0.5 * 2 + 10 + ctc], rtol=1e-6)  # evaluation


def test_an_infeasible_auxiliary_ctc_term_is_left_out_not_blended_in(transducer_run):
  task = transducer_run[0]
  # Utterance 0: CTC infeasible (too few frames); its scaled term (1e5 x 0.1) would pass a check of the blend.
  infeasible_ctc = 2 * ctc_lib.INFEASIBLE_LOSS
  losses = {"simple": np.array([2.0, 3.0]), "pruned": np.array([10.0, 20.0]), "ctc": np.array([infeasible_ctc, 30.0])}
  blended, counted = task.blend(losses, np.float32(task.config.task.warm_step))
  ctc_weight = task.config.task.ctc_weight
  assert ctc_weight * infeasible_ctc < ctc_lib.INFEASIBLE_LOSS  # the blend alone would look feasible
  np.testing.assert_allclose(blended, [0.5 * 2 + 10, 0.5 * 3 + 20 + ctc_weight * 30], rtol=1e-6)
  assert counted.all()  # the transducer terms still train on utterance 0
  batch = {"mask": np.ones(2, np.float32), "label_lengths": np.array([4, 5])}
  loss, metrics = task._average(blended, batch, counted)  # pylint: disable=protected-access
  np.testing.assert_allclose(loss.value, (11 + 21.5 + ctc_weight * 30) / 2, rtol=1e-6)
  _, ctc_metrics = task._average(losses["ctc"], batch)  # pylint: disable=protected-access
  np.testing.assert_allclose(ctc_metrics["infeasible_fraction"].value, 0.5)
  losses["pruned"] = np.array([10.0, 2 * ctc_lib.INFEASIBLE_LOSS])  # a transducer term infeasible: not counted
  assert task.blend(losses, None)[1].tolist() == [True, False]


def test_a_trained_run_evaluates_on_a_dataset_with_test_splits_only(dataset, tmp_path):
  """--mode=eval reads the checkpoint, the run's tokenizer and CMVN and the test data: the new dataset needs no train
  or dev split, and one bucket shape compiles once for its splits."""
  config = _config("asr_conformer_ctc", dataset)
  config.total_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
  run_lib.run("train", config, tmp_path / "run")
  test_only = speech_testlib.write_corpus(tmp_path / "new", "my_corpus", {"my_test": 3, "my_other": 2},
                                          speech_testlib.noise_word_records)
  config.data.corpus = str(test_only)
  config.data.test_splits = ("my_test", "my_other")
  table = run_lib.run("eval", config, tmp_path / "run")
  assert table["step"] == 2 and set(table["splits"]) == {"my_test", "my_other"}
  assert table["splits"]["my_test"]["online"]["utterances"] == 3
  assert "| my_other |" in (tmp_path / "run" / "results" / "results.md").read_text()


@pytest.fixture(scope="module")
def builtin_data_dir(tmp_path_factory):
  """Where the built-in corpus is cached: $SPEECHFUSE_DATA if set (built once per machine), else a temporary dir."""
  return os.environ.get("SPEECHFUSE_DATA") or str(tmp_path_factory.mktemp("builtin"))

@pytest.mark.slow
@pytest.mark.parametrize("name", ["asr_conformer_ctc", "asr_conformer_transducer"])
def test_smoke_recipe_trains_and_evaluates(name, builtin_data_dir, tmp_path):
  config = speech_testlib.recipe(name, "smoke")
  config.data.data_dir = builtin_data_dir
  run_lib.run("train", config, tmp_path / "run")
  lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in lines if line["split"] == "eval"] == [config.total_steps]
  table = evaluate_checkpoint(config, tmp_path / "run")
  assert set(table["splits"]) == set(config.data.test_splits)
  for split in config.data.test_splits:
    for mode in results.MODES:
      assert 0 <= table["splits"][split][mode]["cer"] and table["splits"][split][mode]["utterances"] == 13
      records = results.read_jsonl(tmp_path / "run" / "results" / f"{split}.{mode}.jsonl")
      assert len(records) == 13 and set(records[0]) == set(results.RECORD_KEYS)
  assert "| test_clean |" in (tmp_path / "run" / "results" / "results.md").read_text()
