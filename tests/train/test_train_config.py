"""Start-of-run validation: contradictions fail with a message naming the key to change."""

from __future__ import annotations

import pytest

from speechfuse import run as run_lib
from speechfuse import train
from trainer_testlib import tiny_config


@pytest.mark.parametrize("overrides, message", [
    ({"eval_every_steps": 0}, "config.eval_every_steps=0 must be a positive integer"),
    ({"keep_checkpoints": 0}, "config.keep_checkpoints=0 must be a positive integer"),
    ({"mesh": [["data", 4], ["fsdp", 1], ["tensor", 1]]}, "needs 4 devices but 8 are available"),
    ({"data.batch_size": 12}, "batch_size=12 must be divisible by data-parallel size 8"),
    ({"grad_accum_steps": 2}, r"data-parallel size 8 x config.grad_accum_steps=2 = 16"),
    ({"compute_dtype": "float8"}, "compute_dtype='float8' must be one of"),
    ({"best_checkpoint_mode": "lowest"}, "best_checkpoint_mode='lowest'"),
    ({"task.name": ""}, "config.task.name is empty"),
    ({"logical_axis_rules": [["batch", "expert"]]}, "maps 'batch' to mesh axes \\['expert'\\]"),
])
def test_contradictions_fail_at_start(overrides, message):
  with pytest.raises(ValueError, match=message):
    train.validate(tiny_config(**overrides), device_count=8, process_count=1)


def test_defaults_validate_and_processes_must_split_the_batch():
  train.validate(tiny_config(), device_count=8, process_count=1)
  with pytest.raises(ValueError, match="divisible by the 3 processes"):
    train.validate(tiny_config(), device_count=8, process_count=3)


def test_unknown_task_model_and_schedule_are_named(tmp_path):
  for overrides, message in [({"task.name": "nope"}, "config.task.name='nope' is unknown"),
                             ({"model.name": "nope"}, "config.model.name='nope' is unknown"),
                             ({"optimizer.schedule": "step"}, "config.optimizer.schedule='step' is unknown")]:
    with pytest.raises(ValueError, match=message):
      run_lib.run("train", tiny_config(**overrides), tmp_path)
