"""SIGTERM mid-run: the trainer checkpoints and exits cleanly; resuming finishes exactly like a straight run."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np

from speechfuse import run as run_lib
from trainer_testlib import flat_params, read_order, run_script, tiny_config

TOTAL_STEPS = 40


def _overrides(record_path, **extra):
  return {"total_steps": TOTAL_STEPS, "log_every_steps": 1, "eval_every_steps": 1000,
          "checkpoint_every_steps": 1000, "task.record_path": str(record_path), **extra}


def _logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return max([json.loads(line)["step"] for line in f if line.endswith("\n")], default=0)


def test_sigterm_checkpoints_and_resume_matches_straight_run(tmp_path):
  workdir = tmp_path / "interrupted"
  # Slow batches keep the run going long enough to be interrupted in the middle.
  process = run_script(_overrides(tmp_path / "interrupted.jsonl", **{"task.batch_sleep": 0.05}), workdir,
                       tmp_path / "unused.npz", wait=False)
  deadline = time.monotonic() + 300
  while _logged_steps(workdir) < 5:
    assert process.poll() is None, process.communicate()[1][-5000:]
    assert time.monotonic() < deadline, "the run did not start in time"
    time.sleep(0.2)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-5000:]
  assert "stopped at step" in stderr and "on SIGTERM" in stderr
  saved = [int(step) for step in os.listdir(workdir / "checkpoints")]
  assert len(saved) == 1 and 5 <= saved[0] < TOTAL_STEPS

  resumed = run_lib.run("train", tiny_config(**_overrides(tmp_path / "interrupted.jsonl")), workdir)
  straight = run_lib.run("train", tiny_config(**_overrides(tmp_path / "straight.jsonl")), tmp_path / "straight")
  assert int(resumed.step) == TOTAL_STEPS
  for key, value in flat_params(straight.params).items():
    np.testing.assert_array_equal(flat_params(resumed.params)[key], value, err_msg=key)
  assert read_order(tmp_path / "interrupted.jsonl") == read_order(tmp_path / "straight.jsonl")
