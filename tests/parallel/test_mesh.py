"""Mesh creation, logical-axis rules and global batches; the same training on 1 and 8 fake CPU devices."""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
import pytest

from speechfuse import parallel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "train"))
from trainer_testlib import read_losses, run_outputs, run_script  # pylint: disable=wrong-import-position


def test_mesh_shape_fills_and_validates():
  assert parallel.mesh_shape([("data", -1), ("fsdp", 2), ("tensor", 1)], 8) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert parallel.mesh_shape([["data", 2], ["fsdp", 2], ["tensor", 2]], 8) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match="needs 4 devices but 8 are available"):
    parallel.mesh_shape([("data", 4), ("fsdp", 1)], 8)
  with pytest.raises(ValueError, match="does not divide the 8 available"):
    parallel.mesh_shape([("data", -1), ("fsdp", 3)], 8)
  with pytest.raises(ValueError, match="at most one size may be -1"):
    parallel.mesh_shape([("data", -1), ("fsdp", -1)], 8)
  with pytest.raises(ValueError, match="distinct names"):
    parallel.mesh_shape([("data", -1), ("model", 1)], 8)


def test_rules_and_global_batch_on_one_device():
  rules = parallel.axis_rules(parallel.DEFAULT_LOGICAL_AXIS_RULES)
  mesh = parallel.create_mesh([("data", -1), ("fsdp", 1), ("tensor", 1)], jax.devices()[:1])
  with pytest.raises(ValueError, match="which config.mesh lacks"):
    parallel.check_rules(rules + (("experts", "expert"),), mesh.axis_names)
  host = {"audio": np.ones((4, 10), np.int16), "mask": np.ones(4, np.float32), "ids": np.array(list("abcd"))}
  batch = parallel.global_batch(host, mesh, rules)
  assert set(batch) == {"audio", "mask"} and batch["audio"].shape == (4, 10)
  assert batch["audio"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))


MESHES = {"8x1x1": [["data", 8], ["fsdp", 1], ["tensor", 1]],
          "4x2x1": [["data", 4], ["fsdp", 2], ["tensor", 1]],
          "2x2x2": [["data", 2], ["fsdp", 2], ["tensor", 2]]}


def test_meshes_on_8_devices_match_one_device(tmp_path):
  # Adam's eps is raised because with BatchNorm the bias before a norm has a zero gradient up to rounding, which
  # Adam would otherwise scale up into learning-rate-sized updates that differ with the reduction order.
  common = {"total_steps": 4, "log_every_steps": 1, "eval_every_steps": 4, "checkpoint_every_steps": 4,
            "optimizer.eps": 1e-3}
  run_script(common, tmp_path / "single", tmp_path / "single.npz", devices=1)
  result = run_script([{**common, "mesh": mesh} for mesh in MESHES.values()], tmp_path / "multi",
                      tmp_path / "multi.npz", devices=8)
  outputs = run_outputs(result.stdout)
  # The logical rules really shard: a [embed 16, mlp 32] kernel splits embed over fsdp and mlp over tensor.
  kernel = "['mlp_in_0']['kernel']"
  assert [out["shard_shapes"][kernel] for out in outputs] == [[16, 32], [8, 32], [8, 16]]
  reference_losses = read_losses(tmp_path / "single")
  reference = np.load(tmp_path / "single.npz")
  for i, name in enumerate(MESHES):
    np.testing.assert_allclose(read_losses(f"{tmp_path / 'multi'}-{i}"), reference_losses, rtol=1e-5, err_msg=name)
    params = np.load(f"{tmp_path / 'multi'}-{i}.npz")
    for key in reference.files:
      np.testing.assert_allclose(params[key], reference[key], rtol=1e-4, atol=1e-6, err_msg=f"{name} {key}")
