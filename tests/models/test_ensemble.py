"""EBF (models.ensemble): member subtrees laid out like a CTC model's encoder, outputs equal to a member's with a
head that reads only that member, frozen members (eval-mode BatchNorm, zero gradients and updates), members
loaded from exported runs by the CTC task; (slow) trained and evaluated through the trainer and
ASRTask.evaluate_splits."""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import logging as absl_logging

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tasks"))
import ctc_members_testlib  # pylint: disable=g-import-not-at-top,wrong-import-position

from speechfuse import run as run_lib
from speechfuse import audio, models, optim, parallel, train  # pylint: disable=wrong-import-position
from speechfuse.tasks import evaluate_checkpoint  # pylint: disable=wrong-import-position
from speechfuse.models import ctc, ensemble  # pylint: disable=wrong-import-position
from speechfuse import tasks
from speechfuse.projects.otf import pipeline as otf_pipeline  # pylint: disable=wrong-import-position
from speechfuse.train import state as state_lib  # pylint: disable=wrong-import-position

VOCAB = 29


@pytest.fixture(scope="module")
def setup():
  """A one-block smoke CTC model, two members' random variables, the ensemble of two, a padded batch of 2."""
  rng = np.random.default_rng(0)
  stats = audio.CMVNStats(rng.normal(size=80) * 100, np.full(80, 1e4) + rng.random(80) * 100, 100)
  member_config = ctc.default_config("conformer", "smoke")
  member_config.encoder.num_blocks = 1
  member_config.spec_augment.enabled = False
  member = models.get_model(member_config, dtype=jnp.float32, vocab_size=VOCAB, cmvn=stats)
  config = member_config.copy_and_resolve_references()
  config.name, config.num_members = ensemble.NAME, 2
  model = models.get_model(config, dtype=jnp.float32, vocab_size=VOCAB, cmvn=stats)
  waves = (rng.normal(size=(2, 8000)) * 2000).astype(np.int16)
  lengths = np.array([8000, 5600], np.int32)
  waves[1, 5600:] = 0
  member_shapes = jax.eval_shape(lambda: nn.unbox(member.init(jax.random.key(0), waves, lengths)))
  members = [ctc_members_testlib.random_fill(member_shapes, seed) for seed in (1, 2)]
  return member, model, members, waves, lengths


def _ensemble_variables(members, head_kernel, head_bias):
  return {
      "params": {**{ensemble.member_name(i): m["params"]["encoder"] for i, m in enumerate(members)},
                 "ctc_head": {"kernel": head_kernel, "bias": head_bias}},
      "batch_stats": {ensemble.member_name(i): m["batch_stats"]["encoder"] for i, m in enumerate(members)},
  }


def test_member_subtrees_are_laid_out_like_a_ctc_encoder(setup):
  member, model, _, waves, lengths = setup
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), waves, lengths)))
  member_shapes = jax.eval_shape(lambda: nn.unbox(member.init(jax.random.key(0), waves, lengths)))
  assert set(shapes["params"]) == {"encoder_0", "encoder_1", "ctc_head"}
  for collection in ("params", "batch_stats"):
    for name in ("encoder_0", "encoder_1"):
      assert jax.tree.map(lambda x: x.shape, shapes[collection][name]) == jax.tree.map(
          lambda x: x.shape, member_shapes[collection]["encoder"])
  d_model = member_shapes["params"]["ctc_head"]["kernel"].shape[0]
  assert shapes["params"]["ctc_head"]["kernel"].shape == (2 * d_model, VOCAB)


def test_a_head_reading_one_member_reproduces_that_member(setup):
  member, model, members, waves, lengths = setup
  first = members[0]["params"]["ctc_head"]
  kernel = np.concatenate([first["kernel"], np.zeros_like(first["kernel"])])
  log_probs, out_lengths = model.apply(_ensemble_variables(members, kernel, first["bias"]), waves, lengths)
  expected, expected_lengths = member.apply(members[0], waves, lengths)
  np.testing.assert_array_equal(out_lengths, expected_lengths)
  for b, valid in enumerate(np.asarray(out_lengths)):
    np.testing.assert_allclose(log_probs[b, :valid], expected[b, :valid], atol=1e-5, rtol=0)


def test_members_are_frozen_in_training_mode(setup):
  _, model, members, waves, lengths = setup
  rng = np.random.default_rng(3)
  d_model = members[0]["params"]["ctc_head"]["kernel"].shape[0]
  variables = _ensemble_variables(members, rng.normal(size=(2 * d_model, VOCAB)).astype(np.float32),
                                  np.zeros(VOCAB, np.float32))
  rngs = {name: jax.random.key(i) for i, name in enumerate(("dropout", "spec_augment", "dither"))}

  def loss(params):
    (log_probs, _), updates = model.apply({**variables, "params": params}, waves, lengths, train=True, rngs=rngs,
                                          mutable=["batch_stats"])
    return log_probs[:, :, 1].sum(), (log_probs, updates)

  grads, (log_probs, updates) = jax.grad(loss, has_aux=True)(variables["params"])
  # Eval-mode members: the running statistics are used and stay as they were, and dropout is off.
  for name in ("encoder_0", "encoder_1"):
    for x, y in zip(jax.tree.leaves(updates["batch_stats"][name]), jax.tree.leaves(variables["batch_stats"][name])):
      np.testing.assert_array_equal(x, y)
    assert all(not np.any(g) for g in jax.tree.leaves(grads[name]))
  assert np.any(grads["ctc_head"]["kernel"])
  np.testing.assert_allclose(log_probs, model.apply(variables, waves, lengths)[0], atol=1e-6)


def test_frozen_members_get_zero_updates_and_no_optimizer_state():
  params = {"encoder_0": {"w": jnp.ones((2, 2))}, "encoder_12": {"w": jnp.ones((2, 2))},
            "ctc_head": {"kernel": jnp.ones((2, 2))}}
  tx = optim.freeze(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(0.1, weight_decay=0.5)),
                    ensemble.is_member)
  state = tx.init(params)
  # Moments of the head, a count, a scalar per frozen leaf and moment.
  assert sum(x.size for x in jax.tree.leaves(state)) == 2 * 4 + 1 + 2 * 2
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  assert not np.any(updates["encoder_0"]["w"]) and not np.any(updates["encoder_12"]["w"])
  assert np.all(np.asarray(updates["ctc_head"]["kernel"]) < 0)
  assert not ensemble.is_member((jax.tree_util.DictKey("encoder"),))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return ctc_members_testlib.write_noise_corpus(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def member_paths(dataset, tmp_path_factory):
  config = ctc_members_testlib.smoke_ctc_config(dataset)
  return [ctc_members_testlib.write_member(config, tmp_path_factory.mktemp(f"member{seed}"), seed)
          for seed in (1, 2)]


def _ebf_config(dataset, member_paths):
  return otf_pipeline.ensemble_config(ctc_members_testlib.smoke_ctc_config(dataset), tuple(map(str, member_paths)))


def test_ebf_config_and_member_checks(dataset, member_paths, tmp_path):
  config = _ebf_config(dataset, member_paths)
  assert config.model.name == "ctc_ensemble" and config.model.num_members == 2 and config.task.name == "asr_ctc"
  config.task.init_members = config.task.init_members[:1]
  with pytest.raises(ValueError, match="one exported-variables path per member"):
    tasks.get_task(config, tmp_path)
  member = ctc_members_testlib.smoke_ctc_config(dataset)
  member.task.init_members = (str(member_paths[0]),)
  with pytest.raises(ValueError, match="init_members is for"):
    tasks.get_task(member, tmp_path)
  with pytest.raises(ValueError, match="built from a CTC recipe"):
    otf_pipeline.ensemble_config(_ebf_config(dataset, member_paths), member_paths)


def test_members_load_and_stay_frozen_while_the_head_trains(dataset, member_paths, tmp_path, monkeypatch):
  messages = []
  for level in ("info", "debug"):
    monkeypatch.setattr(absl_logging, level, lambda fmt, *args: messages.append(fmt % args))
  config = _ebf_config(dataset, member_paths)
  task = tasks.get_task(config, tmp_path)
  batch = next(task.make_input("train", seed=0, shard_index=0, shard_count=1))
  variables = jax.jit(lambda: nn.unbox(task.init(jax.random.key(0), state_lib.example_batch(batch))))()
  sources = [train.load_variables(path) for path in member_paths]
  for i, source in enumerate(sources):
    for collection in ("params", "batch_stats"):
      for x, y in zip(jax.tree.leaves(variables[collection][f"encoder_{i}"]),
                      jax.tree.leaves(source[collection]["encoder"])):
        np.testing.assert_array_equal(x, y)
  text = "\n".join(messages)
  assert "init_members[1]" in text and "params/encoder_1/blocks_0/ffn1/dense_in/kernel" in text
  assert any("params/ctc_head/kernel" in m.split("; dropped")[1] for m in messages if "; dropped" in m)
  assert "newly initialised: 2 arrays (ctc_head)" in text

  tx = task.wrap_optimizer(optim.make_optimizer(config.optimizer, total_steps=4)[0])
  # The trainer's sharded state builds with it, and holds no optimizer state for the members.
  mesh, rules = parallel.create_mesh(config.mesh), parallel.axis_rules(config.logical_axis_rules)
  with parallel.sharding_context(mesh, rules):
    abstract, _ = state_lib.abstract_state(task, tx, 0, state_lib.example_batch(batch), mesh, rules)
  head_size = sum(x.size for x in jax.tree.leaves(abstract.params["ctc_head"]))
  member_leaves = sum(len(jax.tree.leaves(abstract.params[f"encoder_{i}"])) for i in range(2))
  assert sum(x.size for x in jax.tree.leaves(abstract.opt_state)) <= 2 * (head_size + member_leaves) + 2
  params, extra = variables["params"], {"batch_stats": variables["batch_stats"]}
  opt_state = tx.init(params)
  device_batch = parallel.numeric_only(batch)

  @jax.jit
  def step(params, extra, opt_state, rng):
    objective = lambda p: (lambda loss, aux: (loss.value, aux))(*task.loss(p, extra, device_batch, rng, step=0,
                                                                            train=True))
    grads, (_, extra) = jax.grad(objective, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), extra, opt_state

  start = (params, extra)
  for i in range(3):
    params, extra, opt_state = step(params, extra, opt_state, jax.random.key(i))
  for name in ("encoder_0", "encoder_1"):
    for x, y in zip(jax.tree.leaves((params[name], extra["batch_stats"][name])),
                    jax.tree.leaves((start[0][name], start[1]["batch_stats"][name]))):
      np.testing.assert_array_equal(x, y)
  assert not np.array_equal(params["ctc_head"]["kernel"], start[0]["ctc_head"]["kernel"])


@pytest.mark.slow
def test_ebf_trains_and_evaluates_through_the_trainer(dataset, member_paths, tmp_path):
  config = _ebf_config(dataset, member_paths)
  config.total_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
  state = run_lib.run("train", config, tmp_path)
  for i, path in enumerate(member_paths):
    source = train.load_variables(path)
    for x, y in zip(jax.tree.leaves(jax.device_get((state.params[f"encoder_{i}"],
                                                    state.extra["batch_stats"][f"encoder_{i}"]))),
                    jax.tree.leaves((source["params"]["encoder"], source["batch_stats"]["encoder"]))):
      np.testing.assert_array_equal(x, y)
  table = evaluate_checkpoint(config, tmp_path)
  for mode in ("offline", "online"):
    assert table["splits"]["dev"][mode]["utterances"] == 3 and np.isfinite(table["splits"]["dev"][mode]["loss"])
