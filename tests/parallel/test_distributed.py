"""Two local processes joined by jax.distributed (CPU, gloo collectives) train together, checkpoint and resume."""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "train"))
from trainer_testlib import run_outputs, run_script  # pylint: disable=wrong-import-position


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train_two_processes(tmp_path, total_steps):
  address = f"127.0.0.1:{_free_port()}"
  processes = []
  for process_id in range(2):
    overrides = {"total_steps": total_steps, "distributed.enabled": True, "distributed.coordinator_address": address,
                 "distributed.num_processes": 2, "distributed.process_id": process_id}
    processes.append(run_script(overrides, tmp_path / "run", tmp_path / f"params-{total_steps}.npz", wait=False))
  results = [p.communicate(timeout=300) for p in processes]
  for process, (_, stderr) in zip(processes, results):
    assert process.returncode == 0, stderr[-5000:]
  return results


@pytest.mark.slow  # end to end: two processes train, checkpoint, and resume (~60 s)
def test_two_processes_train_checkpoint_and_resume(tmp_path):
  stdout, _ = _train_two_processes(tmp_path, 4)[0]
  checkpoint = tmp_path / "run" / "checkpoints" / "4"
  # Each process saved its own data iterator position.
  iterator_states = sorted(f for f in os.listdir(checkpoint / "data") if f.endswith(".json"))
  assert iterator_states == ["process_0-of-2.json", "process_1-of-2.json"]
  assert run_outputs(stdout)[0]["step"] == 4
  stdout, _ = _train_two_processes(tmp_path, 6)[0]
  assert run_outputs(stdout)[0]["step"] == 6
  # Resumed at step 4: the second run logged only step 6 (a fresh start would log 2, 4, 6 again).
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    assert [json.loads(line)["step"] for line in f if '"train"' in line] == [2, 4, 6]
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["4", "6"]
