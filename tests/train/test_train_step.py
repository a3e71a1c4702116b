"""The jitted train step on its own: gradient accumulation equals the full batch even with micro-batches of unequal
size; the guard keeps the state."""

from __future__ import annotations

import jax
import numpy as np
import optax

from speechfuse import parallel, tasks
from speechfuse.train import state as state_lib, step as step_lib
from trainer_testlib import tiny_config


def _setup(**overrides):
  config = tiny_config(**{"task.name": "synthetic_frames", "model.norm": "layer", "data.batch_size": 8, **overrides})
  task = tasks.get_task(config)
  batch = next(task.make_input("train", seed=0, shard_index=0, shard_count=1))
  mesh = parallel.create_mesh(config.mesh, jax.devices()[:1])
  rules = parallel.axis_rules(config.logical_axis_rules)
  return task, batch, mesh, rules


def _step(task, batch, mesh, rules, grad_accum_steps):
  tx = optax.adamw(1e-2)
  example = state_lib.example_batch(batch)
  with parallel.sharding_context(mesh, rules):
    _, shardings = state_lib.abstract_state(task, tx, 0, example, mesh, rules)
    state = state_lib.create_state(task, tx, 0, example, shardings)
    train_step = jax.jit(step_lib.make_train_step(task, tx, grad_accum_steps=grad_accum_steps))
    return jax.device_get(train_step(state, parallel.global_batch(batch, mesh, rules)))


def test_gradient_accumulation_matches_full_batch_with_unequal_micro_batches():
  task, batch, mesh, rules = _setup()
  # Micro-batch j holds examples j and j + 4: give them very different numbers of valid frames, one none at all,
  # so that a mean of micro-batch means would differ from the batch's mean over frames.
  batch["label_lengths"][:] = [16, 1, 9, 2, 16, 1, 9, 3]
  batch["mask"][[3, 7]] = [1.0, 0.0]
  batch["mask"][1] = batch["mask"][5] = 0.0
  full_state, full = _step(task, batch, mesh, rules, 1)
  accumulated_state, accumulated = _step(task, batch, mesh, rules, 4)
  np.testing.assert_allclose(accumulated["loss"], full["loss"], rtol=1e-5)
  np.testing.assert_allclose(accumulated["grad_norm"], full["grad_norm"], rtol=1e-4)
  for a, b in zip(jax.tree.leaves(accumulated_state.params), jax.tree.leaves(full_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_nonfinite_batch_keeps_state_and_counts():
  task, batch, mesh, rules = _setup()
  clean_state, _ = _step(task, batch, mesh, rules, 1)
  batch["audio"] = batch["audio"].astype(np.float32)
  batch["audio"][0, 0] = np.nan
  bad_state, metrics = _step(task, batch, mesh, rules, 1)
  assert metrics["finite"] == 0 and int(bad_state.nonfinite_run) == 1 and int(bad_state.nonfinite_total) == 1
  assert int(bad_state.step) == 1
  tx = optax.adamw(1e-2)
  with parallel.sharding_context(mesh, rules):
    _, shardings = state_lib.abstract_state(task, tx, 0, state_lib.example_batch(batch), mesh, rules)
    initial = jax.device_get(state_lib.create_state(task, tx, 0, state_lib.example_batch(batch), shardings))
  for a, b in zip(jax.tree.leaves(bad_state.params), jax.tree.leaves(initial.params)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(clean_state.params),
                                                      jax.tree.leaves(initial.params)))
