"""Loss landscape: the end points reproduce the two models' eval losses, theta_0 is the trainer's step-0 state,
and the CSV and PNG files parse."""

from __future__ import annotations

import csv
import os
import sys

import jax
import matplotlib.image
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tasks"))
import ctc_members_testlib  # pylint: disable=g-import-not-at-top,wrong-import-position

from speechfuse import parallel, tasks, train  # pylint: disable=wrong-import-position
from speechfuse.projects.otf import landscape  # pylint: disable=wrong-import-position
from speechfuse.train import loop  # pylint: disable=wrong-import-position


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  dataset = ctc_members_testlib.write_noise_corpus(tmp_path_factory.mktemp("data"))
  config = ctc_members_testlib.smoke_ctc_config(dataset)
  workdir = tmp_path_factory.mktemp("run")
  start, end = (ctc_members_testlib.random_variables(config, workdir, seed) for seed in (1, 2))
  return config, workdir, start, end


def _eval_loss(config, workdir, variables) -> float:
  """The trainer's eval-split loss (task.evaluate, as train mode's eval lines)."""
  task = tasks.get_task(config, workdir)
  step = jax.jit(task.eval_step)
  eval_step = lambda batch: jax.device_get(step(variables, parallel.numeric_only(batch)))
  return task.evaluate(eval_step, task.make_input("eval", seed=0, shard_index=0, shard_count=1))["loss"]


def test_end_points_are_the_two_models_eval_losses(run):
  config, workdir, start, end = run
  rows = landscape.interpolate(config, workdir, start, end, alphas=(0.0, 0.5, 1.0, 1.2), split="dev")
  assert [row["alpha"] for row in rows] == [0.0, 0.5, 1.0, 1.2]
  assert rows[0]["loss"] == pytest.approx(_eval_loss(config, workdir, start), rel=1e-6)
  assert rows[2]["loss"] == pytest.approx(_eval_loss(config, workdir, end), rel=1e-6)
  assert all(np.isfinite(row["loss"]) and row["utterances"] == 3 and 0 <= row["wer"] for row in rows)
  assert len({row["loss"] for row in rows}) == 4
  one_batch = landscape.interpolate(config, workdir, start, end, alphas=(0.0,), max_batches=1)
  assert 0 < one_batch[0]["utterances"] <= 3


def test_mismatched_ends_name_the_leaf(run):
  config, workdir, start, end = run
  end = jax.tree.map(lambda x: x, end)
  del end["params"]["ctc_head"]["bias"]
  with pytest.raises(ValueError, match="params/ctc_head/bias is only in the start"):
    landscape.interpolate(config, workdir, start, end)


def test_initial_variables_are_the_trainers_step_0_state(run, tmp_path):
  config, _, _, _ = run
  config = config.copy_and_resolve_references()
  config.seed = 3
  theta0 = landscape.initial_variables(config, tmp_path)
  train.initialize(config)
  prepared = loop.prepare(config, tmp_path, tasks.get_task(config, tmp_path))
  prepared.manager.close()
  expected = jax.device_get(prepared.state.variables)
  assert jax.tree.structure(theta0) == jax.tree.structure(expected)
  for x, y in zip(jax.tree.leaves(theta0), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(x, y)


def test_csv_and_png(tmp_path):
  rows = {"SL": [{"alpha": a, "loss": 10 - a, "wer": 0.5, "cer": 0.2, "utterances": 3.0} for a in (0.0, 0.5, 1.0)],
          "OTF": [{"alpha": a, "loss": 5 + a, "wer": 0.4, "cer": 0.1, "utterances": 3.0, "confidence": 0.9}
                  for a in (0.0, 1.0)]}
  path = landscape.write_csv(rows, tmp_path / "landscape.csv")
  with open(path, newline="") as f:
    lines = list(csv.DictReader(f))
  assert [(line["curve"], float(line["alpha"]), float(line["loss"])) for line in lines] == [
      ("SL", 0.0, 10.0), ("SL", 0.5, 9.5), ("SL", 1.0, 9.0), ("OTF", 0.0, 5.0), ("OTF", 1.0, 6.0)]
  assert lines[0]["confidence"] == "" and lines[-1]["confidence"] == "0.9"
  image = matplotlib.image.imread(landscape.plot(rows, tmp_path / "landscape.png"))
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
  assert landscape.DEFAULT_ALPHAS[0] == 0.0 and landscape.DEFAULT_ALPHAS[-1] == 1.2


def test_statistics_are_interpolated_but_not_extrapolated(run):
  config, workdir, start, end = run
  assert "batch_stats" in end, "the test needs a model with BatchNorm statistics"
  # Trained variances a tenth of the initial ones: extrapolated to alpha = 1.25 they would be negative.
  end = {**end, "batch_stats": jax.tree.map(lambda x, y: 0.1 * x if x.ndim else y, start["batch_stats"],
                                            end["batch_stats"])}
  for alpha, stats_alpha in [(-0.25, 0.0), (0.5, 0.5), (1.25, 1.0)]:
    mixed = landscape._mix(np.float32(alpha), start, end)  # pylint: disable=protected-access
    for name, weight in [("params", alpha), ("batch_stats", stats_alpha)]:
      for x, y, z in zip(*(jax.tree.leaves(v[name]) for v in (start, end, mixed))):
        np.testing.assert_allclose(z, (1 - weight) * x + weight * y, rtol=1e-5, atol=1e-6)
  rows = landscape.interpolate(config, workdir, start, end, alphas=(-0.25, 1.25), split="dev")
  assert all(np.isfinite(row["loss"]) for row in rows)
