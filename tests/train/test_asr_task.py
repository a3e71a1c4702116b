"""ASR tasks on a small written dataset: run assets, batches, losses, evaluation, the transducer batch counter; and
(slow) the smoke recipes trained and evaluated end to end on the built-in tiny corpus."""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
import pytest
import speech_testlib

from speechfuse import parallel, train
from speechfuse.eval import results
from speechfuse.eval.asr import evaluate_asr
from speechfuse.train import state as state_lib, tasks
from speechfuse.train.tasks import asr


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
  loss, (metrics, new_extra) = jax.jit(lambda b: task.loss(params, extra, b, jax.random.key(1), train=True))(
      device_batch)
  assert np.isfinite(loss) and set(metrics) == {"loss_per_token", "infeasible_fraction"}
  assert set(new_extra) == {"batch_stats"}
  # Evaluation mode: the loss equals the mean of eval_step's per-utterance losses over mask-1 rows.
  eval_loss, _ = jax.jit(lambda b: task.loss(params, extra, b, None, train=False))(device_batch)
  per_utterance = _jit_eval(task, variables)(batch)["loss"]
  mask = batch["mask"] > 0
  np.testing.assert_allclose(eval_loss, per_utterance[mask].mean(), rtol=1e-5)

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

def test_transducer_task_counter_loss_and_evaluation(dataset, tmp_path):
  config = _config("asr_conformer_transducer", dataset)
  task = tasks.get_task(config, tmp_path)
  iterator = task.make_input("train", seed=0, shard_index=0, shard_count=1)
  first = next(iterator)
  state = iterator.get_state()
  second = next(iterator)
  np.testing.assert_array_equal(first["batch_index"], 0)
  np.testing.assert_array_equal(second["batch_index"], 1)
  resumed = task.make_input("train", seed=0, shard_index=0, shard_count=1)
  resumed.set_state(json.loads(json.dumps(state)))
  np.testing.assert_array_equal(next(resumed)["audio"], second["audio"])

  variables = task.init(jax.random.key(0), state_lib.example_batch(first))
  params, extra = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  loss, (metrics, _) = jax.jit(lambda b: task.loss(params, extra, b, jax.random.key(1), train=True))(
      parallel.numeric_only(first))
  assert np.isfinite(loss)
  assert {"simple_loss", "pruned_loss", "ctc_loss"} <= set(metrics)

  records = task.utterances(_jit_eval(task, variables), task.make_input("eval", seed=0, shard_index=0, shard_count=1))
  assert len(records) == 3 and all(r["confidence"] is None for r in records)
  summary = results.summarize(records)
  assert set(summary) == {"loss", "wer", "cer", "utterances"} and np.isfinite(summary["loss"])

@pytest.fixture(scope="module")
def builtin_data_dir(tmp_path_factory):
  """Where the built-in corpus is cached: $SPEECHFUSE_DATA if set (built once per machine), else a temporary dir."""
  return os.environ.get("SPEECHFUSE_DATA") or str(tmp_path_factory.mktemp("builtin"))

@pytest.mark.slow
@pytest.mark.parametrize("name", ["asr_conformer_ctc", "asr_conformer_transducer"])
def test_smoke_recipe_trains_and_evaluates(name, builtin_data_dir, tmp_path):
  config = speech_testlib.recipe(name, "smoke")
  config.data.data_dir = builtin_data_dir
  train.train_and_evaluate(config, tmp_path / "run")
  lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in lines if line["split"] == "eval"] == [config.total_steps]
  table = evaluate_asr(config, tmp_path / "run")
  assert set(table["splits"]) == set(config.data.test_splits)
  for split in config.data.test_splits:
    for mode in results.MODES:
      assert 0 <= table["splits"][split][mode]["cer"] and table["splits"][split][mode]["utterances"] == 13
      records = results.read_jsonl(tmp_path / "run" / "results" / f"{split}.{mode}.jsonl")
      assert len(records) == 13 and set(records[0]) == set(results.RECORD_KEYS)
  assert "| test_clean |" in (tmp_path / "run" / "results" / "results.md").read_text()
