"""The loop in-process on one device: metrics files, progress line, guards, accumulation, eval, profiling."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from absl import logging

from speechfuse import run as run_lib
from speechfuse import optim, train
from speechfuse.train import loop
from trainer_testlib import flat_params, read_losses, tiny_config


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_writes_metrics_tensorboard_config_and_progress(tmp_path, caplog):
  logging.set_verbosity(logging.INFO)
  with caplog.at_level("INFO"):
    state = run_lib.run("train", tiny_config(), tmp_path)
  assert int(state.step) == 8
  lines = _lines(tmp_path)
  assert [(l["step"], l["split"]) for l in lines] == [(2, "train"), (4, "train"), (4, "eval"), (6, "train"),
                                                     (8, "train"), (8, "eval")]
  assert {"loss", "grad_norm", "accuracy", "steps_per_second", "audio_seconds_per_second", "learning_rate",
          "skipped_steps"} <= set(lines[0])
  assert all(np.isfinite(l["loss"]) for l in lines)
  assert os.listdir(tmp_path / "tensorboard")[0].startswith("events.out.tfevents")
  assert json.load(open(tmp_path / "config.json"))["task"]["name"] == "test_frames"
  progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step 8/8 | loss")]
  assert progress and "steps/s" in progress[0] and "audio s/s" in progress[0] and "ETA" in progress[0]


def test_nan_batch_is_skipped_and_counted(tmp_path):
  clean = run_lib.run("train", tiny_config(total_steps=3), tmp_path / "clean")
  poisoned = run_lib.run("train", tiny_config(**{"total_steps": 3, "task.nan_batches": [1]}),
                                      tmp_path / "poisoned")
  assert int(poisoned.nonfinite_total) == 1 and int(poisoned.nonfinite_run) == 0
  params = flat_params(poisoned.params)
  assert all(np.isfinite(v).all() for v in params.values())
  # Step 1's update was skipped, so the parameters differ from the clean run's but stay finite.
  assert any(not np.allclose(params[k], v) for k, v in flat_params(clean.params).items())
  lines = _lines(tmp_path / "poisoned")
  assert lines[0]["skipped_steps"] == 1 and np.isfinite(lines[0]["loss"])


def test_too_many_nonfinite_steps_stop_with_checkpoint(tmp_path):
  config = tiny_config(**{"total_steps": 8, "max_consecutive_nonfinite": 2, "task.nan_batches": [3, 4, 5, 6, 7]})
  with pytest.raises(train.NonFiniteError, match="3 consecutive steps up to step 6.*max_consecutive_nonfinite=2"):
    run_lib.run("train", config, tmp_path)
  # The checkpoint holds the parameters after step 3 (the last good update) and resumes cleanly.
  good = run_lib.run("train", tiny_config(total_steps=3), tmp_path / "good")
  train.export_params(tmp_path, tmp_path / "export")
  saved = train.load_variables(tmp_path / "export")["params"]
  for key, value in flat_params(good.params).items():
    np.testing.assert_allclose(flat_params(saved)[key], value, rtol=1e-6)


def test_compute_dtype_bfloat16_keeps_float32_params(tmp_path):
  state = run_lib.run("train", tiny_config(total_steps=2, compute_dtype="bfloat16"), tmp_path)
  assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {np.dtype("float32")}
  assert np.isfinite(read_losses(tmp_path)).all()


def test_profiler_writes_a_trace(tmp_path):
  run_lib.run("train", tiny_config(**{"total_steps": 3, "profile.start_step": 1, "profile.num_steps": 1}),
                           tmp_path)
  traces = [f for _, _, files in os.walk(tmp_path / "profile") for f in files]
  assert any(f.endswith((".xplane.pb", ".trace.json.gz")) for f in traces)


def test_logged_learning_rate_is_the_one_the_optimizer_uses(tmp_path):
  """The optimizer skips a non-finite step's update, so its schedule falls behind the trainer's step by one."""
  config = tiny_config(**{"total_steps": 4, "log_every_steps": 1, "task.nan_batches": [1]})  # batch 1: step 2
  run_lib.run("train", config, tmp_path)
  _, schedule = optim.make_optimizer(config.optimizer, total_steps=config.total_steps)
  logged = {line["step"]: line["learning_rate"] for line in _lines(tmp_path) if line["split"] == "train"}
  updates = {1: 1, 2: 1, 3: 2, 4: 3}  # updates applied after each step
  assert logged == pytest.approx({step: float(schedule(n)) for step, n in updates.items()})
  assert logged[2] != pytest.approx(float(schedule(2)))  # what the trainer's step would have said


class _PlannedInput:
  """A train input that plans its epoch, as the data pipeline's: 12 updates holding 96 s of audio."""

  def epoch_audio(self):
    return 12, 96.0


def test_edens_epoch_length_is_derived_from_the_train_input(tmp_path):
  config = tiny_config(**{"optimizer.schedule": "eden", "optimizer.eden_steps_per_epoch": 0.0})
  assert loop._optimizer_config(config.optimizer, _PlannedInput()).eden_steps_per_epoch == 12.0
  config.optimizer.eden_epoch_hours = 0.08  # 288 s: 36 updates of 8 s
  assert loop._optimizer_config(config.optimizer, _PlannedInput()).eden_steps_per_epoch == pytest.approx(36.0)
  with pytest.raises(ValueError, match="eden_steps_per_epoch=0 asks for the epoch length"):
    run_lib.run("train", config, tmp_path)  # the synthetic task's input plans no epochs
