"""The ssl_hubert task on a small written dataset: targets written before the task (ssl.targets.prepare, as the
train mode does), frame labels in the batches (checkpointable), the loss going down on a fixed batch for both
backbones and both losses, the Conformer encoder's parameter tree equal to the CTC model's, and evaluation."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import optax
import pytest
import speech_testlib

from speechfuse import parallel, run as run_lib, ssl as ssl_lib, tasks
from speechfuse.data import labels as labels_lib
from speechfuse.nn import subsampling
from speechfuse.train import state as state_lib


def _records(split: str, count: int, seed: int):
  """Tones with a few steps of pitch: MFCC clusters that the encoder can learn to predict."""
  rng = np.random.default_rng(seed)
  for i in range(count):
    samples = int(rng.integers(12000, 24000))
    pitch = np.repeat(rng.choice([200.0, 500.0, 1200.0, 2500.0], size=samples // 3200 + 1), 3200)[:samples]
    wave = np.sin(2 * np.pi * np.cumsum(pitch) / 16000) * 8000 + rng.normal(size=samples) * 300
    yield {"id": f"{split}-{i}", "audio": wave.astype(np.int16), "sample_rate": 16000, "text": "a b",
           "speaker": f"{split}-speaker", "duration": samples / 16000}

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  counts = {"train": 10, "dev": 3}
  return speech_testlib.write_corpus(tmp_path_factory.mktemp("data"), "tones", counts, _records)

def ssl_config(dataset: pathlib.Path, arg: str = "smoke", recipe: str = "ssl_hubert"):
  config = speech_testlib.recipe(recipe, arg)
  config.data.corpus = str(dataset)
  config.data.bucket_boundaries_seconds = (1.0, 1.5)
  config.data.max_batch_seconds = 6.0
  config.data.test_splits = ()
  if recipe != "ssl_wav2vec2":  # the contrastive task has no targets
    config.task.num_classes = 8  # a few hundred frames: 100 clusters would be mostly empty
    config.task.kmeans_fraction = 1.0
    config.task.targets = config.task.targets.replace("k100", "k8")
  config.compute_dtype = "float32"
  return config

def _task(config, workdir):
  """The task of `config`, its iteration-1 targets written first (what speechfuse.run's train mode does)."""
  if config.task.name == "ssl_hubert":
    ssl_lib.targets.prepare(config)
  return tasks.get_task(config, workdir)


def _split(variables):
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}

def test_targets_written_once_and_batches_carry_frame_labels(dataset, tmp_path):
  config = ssl_config(dataset)
  task = _task(config, tmp_path)
  info = labels_lib.labels_info(dataset, config.task.targets)
  assert info["k"] == 8 and set(info["splits"]) == {"train", "dev"}
  assert info["target_grid"]["name"] == "fbank_conv2d_x4"
  iterator = task.make_input("train", seed=0, shard_index=0, shard_count=1)
  first = next(iterator)
  state = iterator.get_state()
  second = next(iterator)
  frames = subsampling.fbank_grid().frame_count(first["audio"].shape[1])
  assert first["frame_labels"].shape == (len(first["mask"]), frames)
  labels = labels_lib.open_labels(dataset, config.task.targets, "train")
  for row in np.flatnonzero(first["mask"] > 0):
    own = labels[str(first["ids"][row])]
    np.testing.assert_array_equal(first["frame_labels"][row, :len(own)], own)
    assert not first["frame_labels"][row, len(own):].any()
  # The iterator state is the pipeline's: a resumed iterator continues with the next batch, labels included.
  resumed = task.make_input("train", seed=0, shard_index=0, shard_count=1)
  resumed.set_state(json.loads(json.dumps(state)))
  again = next(resumed)
  np.testing.assert_array_equal(again["frame_labels"], second["frame_labels"])
  np.testing.assert_array_equal(again["audio"], second["audio"])
  # The model's frames are the labels' frames.
  variables = task.init(jax.random.key(0), state_lib.example_batch(first))
  out = task.model.apply(variables, first["audio"], first["audio_lengths"], jax.random.key(1))
  assert out.head.shape[1] == frames
  np.testing.assert_array_equal(np.asarray(out.lengths)[first["mask"] > 0],
                                [len(labels[str(i)]) for i in first["ids"][first["mask"] > 0]])

def test_encoder_tree_equals_the_ctc_models(dataset, tmp_path):
  config = ssl_config(dataset)
  task = _task(config, tmp_path / "ssl")
  batch = state_lib.example_batch(next(task.make_input("train", seed=0, shard_index=0, shard_count=1)))
  ssl_vars = jax.eval_shape(lambda: task.init(jax.random.key(0), batch))
  ctc_config = speech_testlib.recipe("asr_conformer_ctc", "smoke")
  ctc_config.data = config.data
  ctc_task = tasks.get_task(ctc_config, tmp_path / "ctc")
  ctc_vars = jax.eval_shape(lambda: ctc_task.init(jax.random.key(0), batch))
  for collection in ("params", "batch_stats"):
    shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree[collection]["encoder"])
    assert shapes(ssl_vars) == shapes(ctc_vars)
  assert set(ssl_vars["params"]) == {"encoder", "mask_embedding", "final_proj", "label_embeddings"}

# The HuBERT loss on the waveform backbone is slow-only: the WavLM row runs the same backbone and loss, and more; the
# waveform Zipformer's row too (90 s; tests/nn/test_zipformer_waveform.py checks the encoder).
@pytest.mark.parametrize("recipe,arg", [("ssl_hubert", "smoke"), ("ssl_hubert", "smoke,loss=ce"),
                                        pytest.param("ssl_hubert", "smoke,backbone=wav2vec2", marks=pytest.mark.slow),
                                        pytest.param("ssl_hubert", "smoke,backbone=zipformer_waveform,loss=ce,"
                                                     "optimizer=scaled_adam", marks=pytest.mark.slow),
                                        ("ssl_wavlm", "smoke"), ("ssl_wav2vec2", "smoke")])
def test_loss_decreases_on_a_fixed_batch(dataset, tmp_path, recipe, arg):
  config = ssl_config(dataset, arg, recipe)
  task = _task(config, tmp_path)
  batch = parallel.numeric_only(next(task.make_input("train", seed=0, shard_index=0, shard_count=1)))
  params, extra = _split(task.init(jax.random.key(0), state_lib.example_batch(batch)))
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                        is_leaf=lambda x: hasattr(x, "value"))
  tx = optax.adam(2e-3)

  @jax.jit
  def step(params, extra, opt_state, rng):
    # A fixed mask key (the same corruption every step), so the decrease measures fitting, not mask noise.
    objective = lambda p: (lambda loss, aux: (loss.value, aux))(*task.loss(p, extra, batch, rng, step=0,
                                                                            train=True))
    (loss, (metrics, extra)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), extra, opt_state, loss, metrics

  opt_state = tx.init(params)
  losses = []
  for _ in range(8):
    params, extra, opt_state, loss, metrics = step(params, extra, opt_state, jax.random.key(3))
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
  summary = task.evaluate(jax.jit(lambda b: jax.device_get(task.eval_step({"params": params, **extra}, b))),
                          (parallel.numeric_only(b) for b in task.make_input("eval", seed=0, shard_index=0,
                                                                             shard_count=1)))
  if recipe == "ssl_wav2vec2":
    assert metrics["contrastive_accuracy"].count > 0 and float(metrics["codebook_perplexity"].value) > 1.0
    assert set(summary) == {"loss", "contrastive_accuracy", "codebook_perplexity", "diversity_loss",
                            "feature_penalty", "contrastive_frames"}
    assert 1.0 < summary["codebook_perplexity"] <= 640 and summary["contrastive_frames"] > 0
    assert {"quantizer", "project_q", "final_proj"} <= set(params)
    return
  assert metrics["masked_accuracy"].count > 0  # means over the masked frames
  if "wav2vec2" in arg or recipe == "ssl_wavlm":
    assert "feature_penalty" in metrics
  if recipe == "ssl_wavlm":  # the gated relative position bias, and its gates in every block
    encoder = params["encoder"]
    assert encoder["relative_position_bias"]["embedding"]["embedding"].shape == (320, 2)
    assert "position_bias_gate" in encoder["blocks_1"] and config.task.mix_prob == 0.2
  assert set(summary) == {"loss", "masked_accuracy", "unmasked_accuracy", "masked_frames"}
  assert 0.0 <= summary["masked_accuracy"] <= 1.0 and summary["masked_frames"] > 0

def test_speed_perturbation_is_refused(dataset, tmp_path):
  config = ssl_config(dataset)
  config.data.speed_perturb = True
  with pytest.raises(ValueError, match="speed_perturb"):
    _task(config, tmp_path)


def test_a_task_without_its_targets_says_how_to_write_them(dataset, tmp_path):
  config = ssl_config(dataset)
  config.task.targets = "mfcc_k8_never_written"
  with pytest.raises(FileNotFoundError, match="ssl.targets.prepare"):
    tasks.get_task(config, tmp_path)

def test_iteration_2_targets_from_a_layer_of_the_iteration_1_model(dataset, tmp_path):
  first = _task(ssl_config(dataset), tmp_path)
  batch = next(first.make_input("train", seed=0, shard_index=0, shard_count=1))
  variables = first.init(jax.random.key(0), state_lib.example_batch(batch))
  config = ssl_config(dataset, "smoke,iteration=2")
  config.task.num_classes = 4
  config.task.targets = "iter2_k4_fbank_conv2d_x4"
  with pytest.raises(FileNotFoundError, match="model_targets"):
    tasks.get_task(config, tmp_path)
  ssl_lib.targets.model_targets(dataset, config.task.targets, first.layer_features_fn(variables, 1), first.grid,
                                k=4, splits=("train", "dev"), sample_fraction=1.0, features="smoke_layer2")
  second = tasks.get_task(config, tmp_path)
  labels = next(second.make_input("train", seed=0, shard_index=0, shard_count=1))["frame_labels"]
  assert labels.max() < 4 and len(np.unique(labels)) > 1


@pytest.mark.slow  # end to end through speechfuse.run (~100 s); the k2ssl job's slow test runs the same modes
def test_train_writes_the_targets_first_and_eval_reports_the_dev_metrics(dataset, tmp_path):
  """speechfuse.run's train mode writes iteration-1 targets before building the task; eval mode evaluates the latest
  checkpoint on the eval split without the training state."""
  config = ssl_config(dataset)
  config.task.targets = "mfcc_k8_fbank_conv2d_x4_run"  # not written by the other tests
  config.total_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
  run_lib.run("train", config, tmp_path)
  assert labels_lib.has_labels(dataset, config.task.targets, ("train", "dev"))
  metrics = run_lib.run("eval", config, tmp_path)
  assert set(metrics) == {"loss", "masked_accuracy", "unmasked_accuracy", "masked_frames"}
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert logged[-1]["split"] == "eval" and logged[-1]["step"] == 2
  assert logged[-1]["masked_accuracy"] == pytest.approx(logged[-2]["masked_accuracy"])  # as the trainer's last eval
