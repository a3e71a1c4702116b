"""Fine-tuning CTC from an ssl_hubert run: a short pre-training run through the trainer, exported; the encoder
loads into the CTC model (values equal, head dropped and logged), mismatches name the parameter, the encoder
stays frozen for the first updates, and the labeled subset is fixed."""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
import pytest
import speech_testlib
from absl import logging as absl_logging
from flax import traverse_util

from speechfuse import optim, parallel, run as run_lib, tasks, train
from speechfuse.data import inputs
from speechfuse.train import state as state_lib


def _data(config, dataset):
  config.data.corpus = str(dataset)
  config.data.bucket_boundaries_seconds = (1.0, 1.5)
  config.data.max_batch_seconds = 6.0
  config.data.test_splits = ()
  config.compute_dtype = "float32"
  return config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  counts = {"train": 10, "dev": 3}
  return speech_testlib.write_corpus(tmp_path_factory.mktemp("data"), "noise_words", counts,
                                     functools.partial(speech_testlib.noise_word_records, min_samples=12000))


@pytest.fixture(scope="module")
def pretrained(dataset, tmp_path_factory):
  """Variables exported from 2 steps of ssl_hubert (smoke Conformer) through the trainer."""
  config = _data(speech_testlib.recipe("ssl_hubert", "smoke"), dataset)
  config.task.num_classes = 8
  config.task.kmeans_fraction = 1.0
  config.task.targets = "mfcc_k8_fbank_conv2d_x4"
  config.total_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
  workdir = tmp_path_factory.mktemp("ssl")
  run_lib.run("train", config, workdir)
  return train.export_params(workdir, workdir / "params")


def finetune_config(dataset, init_from=None, **task):
  config = _data(speech_testlib.recipe("finetune_ctc", "smoke"), dataset)
  config.data.train_fraction = 0.5  # 5 of 10 utterances: enough for a batch
  config.task.init_from = None if init_from is None else str(init_from)
  for key, value in task.items():
    config.task[key] = value
  return config


def _init(task):
  batch = next(task.make_input("train", seed=0, shard_index=0, shard_count=1))
  return jax.jit(lambda: task.init(jax.random.key(0), state_lib.example_batch(batch)))(), batch


def _unbox(tree):
  return jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, tree, is_leaf=lambda x: hasattr(x, "value"))


def test_encoder_loads_and_head_is_dropped_with_a_message(dataset, pretrained, tmp_path, monkeypatch):
  messages = []
  for level in ("info", "debug"):
    monkeypatch.setattr(absl_logging, level, lambda fmt, *args: messages.append(fmt % args))
  task = tasks.get_task(finetune_config(dataset, pretrained), tmp_path)
  variables, _ = _init(task)
  source = train.load_variables(pretrained)
  for collection in ("params", "batch_stats"):
    loaded = traverse_util.flatten_dict(_unbox(variables[collection])["encoder"])
    expected = traverse_util.flatten_dict(source[collection]["encoder"])
    assert loaded.keys() == expected.keys()
    for key in loaded:
      np.testing.assert_array_equal(loaded[key], expected[key])
  scratch, _ = _init(tasks.get_task(finetune_config(dataset), tmp_path / "scratch"))
  assert not np.array_equal(_unbox(scratch["params"])["encoder"]["blocks_0"]["ffn1"]["dense_in"]["kernel"],
                            source["params"]["encoder"]["blocks_0"]["ffn1"]["dense_in"]["kernel"])
  text = "\n".join(messages)
  assert "loaded" in text and "params/encoder/blocks_0/mhsa/query/kernel" in text
  assert "newly initialised: 2 arrays (ctc_head)" in text
  dropped = next(m for m in messages if "; dropped" in m).split("; dropped")[1]  # the debug line lists them
  for head in ("params/final_proj/kernel", "params/label_embeddings", "params/mask_embedding"):
    assert head in dropped


def test_shape_mismatch_names_the_parameter(dataset, pretrained):
  variables = {"params": {"encoder": {"proj": {"kernel": np.zeros((3, 4), np.float32)}}}}
  source = {"params": {"encoder": {"proj": {"kernel": np.zeros((3, 5), np.float32)}}}}
  with pytest.raises(ValueError, match="params/encoder/proj/kernel has shape"):
    train.merge_pretrained(variables, source, ("encoder",))
  with pytest.raises(ValueError, match="params/encoder/extra/bias is not in"):
    train.merge_pretrained({"params": {"encoder": {"extra": {"bias": np.zeros(2)}}}}, source, ("encoder",))
  del pretrained


def test_encoder_frozen_for_the_first_updates(dataset, pretrained, tmp_path):
  config = finetune_config(dataset, pretrained, freeze_encoder_steps=2)
  task = tasks.get_task(config, tmp_path)
  variables, batch = _init(task)
  params, extra = _unbox(variables["params"]), {k: v for k, v in variables.items() if k != "params"}
  tx = task.wrap_optimizer(optim.make_optimizer(config.optimizer, total_steps=4)[0])
  opt_state = tx.init(params)
  batch = parallel.numeric_only(batch)

  @jax.jit
  def step(params, extra, opt_state, rng):
    objective = lambda p: (lambda loss, aux: (loss.value, aux))(*task.loss(p, extra, batch, rng, step=0, train=True))
    grads, (_, extra) = jax.grad(objective, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), extra, opt_state

  history = [params]
  for i in range(3):
    params, extra, opt_state = step(params, extra, opt_state, jax.random.key(i))
    history.append(params)
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert same(history[0]["encoder"], history[2]["encoder"])  # 2 frozen updates
  assert not same(history[2]["encoder"], history[3]["encoder"])  # then it trains
  # The head trains meanwhile (update 1 has learning rate 0: the end of the smoke recipe's 1-step warm-up).
  assert not same(history[1]["ctc_head"], history[2]["ctc_head"])


def test_labeled_subset_is_fixed_and_sized(dataset):
  config = finetune_config(dataset).data
  subset = inputs.train_source(config)
  assert len(subset) == 5
  again = inputs.train_source(config)
  assert subset.metadata()["id"] == again.metadata()["id"] == [subset[i]["id"] for i in range(5)]
  config.train_fraction = 1.0
  assert len(inputs.train_source(config)) == 10
  config.train_fraction = 0.0
  with pytest.raises(ValueError, match="train_fraction"):
    inputs.train_source(config)


@pytest.mark.slow  # end to end: pre-train, export, fine-tune, evaluate (~75 s)
def test_the_wav2vec2_backbone_pre_trains_then_fine_tunes_with_ctc(dataset, tmp_path):
  """The waveform encoder is an ASR encoder like any other: its pre-trained export loads into the CTC model, which
  trains and decodes (offline: it does not stream)."""
  config = _data(speech_testlib.recipe("ssl_hubert", "smoke,backbone=wav2vec2,loss=ce"), dataset)
  config.task.num_classes, config.task.kmeans_fraction = 8, 1.0
  config.task.targets = "mfcc_k8_wav2vec2_cnn"
  config.total_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
  run_lib.run("train", config, tmp_path / "ssl")
  pretrained = train.export_params(tmp_path / "ssl", tmp_path / "ssl_params")

  finetune = _data(speech_testlib.recipe("finetune_ctc", "smoke,backbone=wav2vec2"), dataset)
  finetune.data.train_fraction, finetune.data.test_splits = 0.5, ("dev",)
  finetune.task.init_from = str(pretrained)
  finetune.total_steps = finetune.eval_every_steps = finetune.checkpoint_every_steps = 2
  finetune.task.freeze_encoder_steps = 1  # the smoke recipe freezes 2 updates: here 1, then 1 that trains it
  state = run_lib.run("train", finetune, tmp_path / "ctc")
  source = train.load_variables(pretrained)["params"]["encoder"]
  assert set(state.params) == {"encoder", "ctc_head"} and set(state.params["encoder"]) == set(source)
  assert int(state.nonfinite_total) == 0
  trained = jax.device_get(state.params["encoder"]["blocks_0"]["ffn"]["dense_in"]["kernel"])
  assert not np.array_equal(trained, source["blocks_0"]["ffn"]["dense_in"]["kernel"])  # it fine-tuned
  assert not (tmp_path / "ctc" / "cmvn.json").exists()  # the waveform encoder reads no fbank
  table = tasks.evaluate_checkpoint(finetune, tmp_path / "ctc")
  assert table["online"] is None and set(table["splits"]["dev"]) == {"offline"}
  assert table["splits"]["dev"]["offline"]["utterances"] == 3
