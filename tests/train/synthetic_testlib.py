"""Synthetic frame classification: the trainer's test task (and the loop-overhead benchmark's), with its model.

`SyntheticFrames` is registered as the task "synthetic_frames" and `FrameClassifier` as the model
"frame_classifier" when this module is imported: test fixtures, not production recipes.

Each example is a waveform of `max_frames` frames, each frame a sine whose frequency encodes that frame's
class, plus noise; the length varies per example and the tail is zero padding. Batches carry the speech
pipeline's keys (audio int16 [B, S], audio_lengths [B], labels [B, U] with U = frames, label_lengths [B],
mask [B], ids [B] host strings) through a grain MapDataset, so the iterator state is checkpointable and a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import flax.linen as nn
import numpy as np
import optax

from speechfuse import models, tasks, train as train_lib


def default_config() -> ml_collections.ConfigDict:
  """config.task for name="synthetic_frames" (the model's num_classes and frame_size shape the data)."""
  return ml_collections.ConfigDict({
      "name": "synthetic_frames",
      "max_frames": 16,
      "num_train_examples": 4096,
      "num_eval_examples": 64,
      "noise": 0.1,
  })


_INIT = nn.initializers.lecun_normal()


def _dense(features: int, axes: tuple[str, str], dtype: Any, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, name=name, kernel_init=nn.with_logical_partitioning(_INIT, axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))


class FrameClassifier(nn.Module):
  """Per-frame classifier.

  Attributes:
    num_classes: output classes per frame.
    frame_size: samples per frame (no overlap).
    embed_dim, mlp_dim, num_layers: residual MLP sizes.
    norm: "layer" or "batch" (BatchNorm keeps running statistics in the `batch_stats` collection).
    dtype: compute dtype; parameters are float32 and logits are returned in float32.
  """
  num_classes: int
  frame_size: int
  embed_dim: int
  mlp_dim: int
  num_layers: int
  norm: str = "layer"
  dtype: Any = jnp.float32

  def _norm(self, name: str, train: bool) -> nn.Module:
    scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
    bias_init = nn.with_logical_partitioning(nn.initializers.zeros, ("embed",))
    if self.norm == "batch":
      return nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, scale_init=scale_init,
                          bias_init=bias_init, name=name)
    if self.norm == "layer":
      return nn.LayerNorm(dtype=self.dtype, scale_init=scale_init, bias_init=bias_init, name=name)
    raise ValueError(f"config.model.norm={self.norm!r} must be 'layer' or 'batch'")

  @nn.compact
  def __call__(self, audio: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """Classifies frames.

    Args:
      audio: int16 or float waveforms [batch, samples], samples a multiple of frame_size.
      train: BatchNorm uses batch statistics (and updates the running ones) when True.

    Returns:
      logits: float32 [batch, samples // frame_size, num_classes].
    """
    batch, samples = audio.shape
    scale = 1.0 / 32768.0 if jnp.issubdtype(audio.dtype, jnp.integer) else 1.0
    frames = (audio.astype(jnp.float32) * scale).reshape(batch, samples // self.frame_size, self.frame_size)
    x = _dense(self.embed_dim, ("frame", "embed"), self.dtype, "embed")(frames.astype(self.dtype))
    x = nn.with_logical_constraint(x, ("batch", "time", "embed"))
    for i in range(self.num_layers):
      y = self._norm(f"norm_{i}", train)(x)
      y = nn.gelu(_dense(self.mlp_dim, ("embed", "mlp"), self.dtype, f"mlp_in_{i}")(y))
      y = nn.with_logical_constraint(y, ("batch", "time", "mlp"))
      x = x + _dense(self.embed_dim, ("mlp", "embed"), self.dtype, f"mlp_out_{i}")(y)
      x = nn.with_logical_constraint(x, ("batch", "time", "embed"))
    x = self._norm("final_norm", train)(x)
    logits = _dense(self.num_classes, ("embed", "vocab"), self.dtype, "head")(x)
    return logits.astype(jnp.float32)


def frame_classifier(config: ml_collections.ConfigDict, dtype: Any) -> FrameClassifier:
  return FrameClassifier(num_classes=config.num_classes, frame_size=config.frame_size, embed_dim=config.embed_dim,
                         mlp_dim=config.mlp_dim, num_layers=config.num_layers, norm=config.norm, dtype=dtype)


def class_waveforms(num_classes: int, frame_size: int) -> np.ndarray:
  """[num_classes, frame_size] float32: class c is a sine with c + 1 cycles per frame."""
  t = np.arange(frame_size) / frame_size
  return np.sin(2 * np.pi * (np.arange(num_classes)[:, None] + 1) * t[None, :]).astype(np.float32)


def make_example(index: int, *, seed: int, max_frames: int, waveforms: np.ndarray, noise_bank: np.ndarray,
                 noise: float) -> dict[str, Any]:
  """Example `index` of the stream seeded by `seed`; a pure function of its arguments.

  Args:
    waveforms: class_waveforms(num_classes, frame_size).
    noise_bank: float32 [n] standard normal samples, n > max_frames * frame_size; each example reads a random
      window of it, which costs far less than drawing fresh noise (the pipeline must not slow the benchmark).
  """
  num_classes, frame_size = waveforms.shape
  rng = np.random.default_rng([seed, index])
  num_frames = int(rng.integers(max_frames // 2, max_frames + 1))
  labels = rng.integers(0, num_classes, size=max_frames).astype(np.int32)
  offset = int(rng.integers(0, noise_bank.size - max_frames * frame_size))
  waves = waveforms[labels] + noise * noise_bank[offset:offset + max_frames * frame_size].reshape(max_frames, -1)
  waves[num_frames:] = 0.0
  labels[num_frames:] = 0
  audio = np.clip(waves.reshape(-1) * (0.5 * 32767), -32768, 32767).astype(np.int16)
  return {
      "audio": audio,
      "audio_lengths": np.int32(num_frames * frame_size),
      "labels": labels,
      "label_lengths": np.int32(num_frames),
      "mask": np.float32(1.0),
      "ids": f"synthetic-{seed}-{index}",
  }


class SyntheticFrames(train_lib.Task):
  """Frame classification on synthetic sines with the frame_classifier model (any model with that call works)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | None = None):
    super().__init__(config, workdir)
    self.model = models.get_model(config.model, dtype=jnp.dtype(config.compute_dtype))

  def dataset(self, split: str, *, seed: int, shard_index: int, shard_count: int) -> grain.MapDataset:
    """This process's batches of `split` as a grain MapDataset (index = batch number on this process)."""
    task, batch_size = self.config.task, self.config.data.batch_size
    if split == "train":
      # shuffle -> repeat -> host slice (MaxText's order): every process sees a disjoint, fixed stream.
      dataset = grain.MapDataset.range(task.num_train_examples).shuffle(seed=seed).repeat()
      example_seed = seed
    elif split == "eval":
      dataset = grain.MapDataset.range(task.num_eval_examples)
      example_seed = seed + 1_000_003  # a disjoint example stream
    else:
      raise ValueError(f"unknown split {split!r}; SyntheticFrames has 'train' and 'eval'")
    waveforms = class_waveforms(self.config.model.num_classes, self.config.model.frame_size)
    noise_bank = np.random.default_rng(example_seed).standard_normal(
        self.config.model.frame_size * task.max_frames + 65_536).astype(np.float32)
    make = lambda index: make_example(index, seed=example_seed, max_frames=task.max_frames, waveforms=waveforms,
                                      noise_bank=noise_bank, noise=task.noise)
    return dataset[shard_index::shard_count].map(make).batch(batch_size // shard_count, drop_remainder=True)

  def make_input(self, split: str, *, seed: int, shard_index: int,
                 shard_count: int) -> train_lib.CheckpointableIterator:
    dataset = self.dataset(split, seed=seed, shard_index=shard_index, shard_count=shard_count)
    # A batch takes under 2 ms to make in this thread; grain's reader threads made it slower (about 5 ms).
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))

  def init(self, rng: jax.Array, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return dict(self.model.init(rng, jnp.asarray(batch["audio"]), train=False))

  def _logits_and_weights(self, variables, batch, *, train: bool):
    if train:
      mutable = sorted(variables.keys() - {"params"})
      logits, updates = self.model.apply(variables, batch["audio"], train=True, mutable=mutable)
    else:
      logits, updates = self.model.apply(variables, batch["audio"], train=False), {}
    frames = jnp.arange(logits.shape[1])
    weights = (frames[None, :] < batch["label_lengths"][:, None]) * batch["mask"][:, None]
    return logits, weights.astype(jnp.float32), updates

  def loss(self, params, extra, batch, rng, *, step, train):
    del rng, step  # the model is deterministic, the loss has no schedule
    logits, weights, updates = self._logits_and_weights({"params": params, **extra}, batch, train=train)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    correct = (logits.argmax(-1) == batch["labels"]).astype(jnp.float32)
    return train_lib.mean_of(losses, weights), ({"accuracy": train_lib.mean_of(correct, weights)},
                                            dict(updates) if train else extra)

  def eval_step(self, variables, batch):
    logits, weights, _ = self._logits_and_weights(variables, batch, train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    return {
        "loss_sum": (losses * weights).sum(),
        "correct": ((logits.argmax(-1) == batch["labels"]) * weights).sum(),
        "frames": weights.sum(),
    }

  def evaluate(self, eval_step: Callable[[Mapping[str, np.ndarray]], Any],
               batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
    totals = {"loss_sum": 0.0, "correct": 0.0, "frames": 0.0}
    for batch in batches:
      for key, value in eval_step(batch).items():
        totals[key] += float(value)
    frames = max(totals["frames"], 1.0)
    return {"loss": totals["loss_sum"] / frames, "accuracy": totals["correct"] / frames}


models.MODELS["frame_classifier"] = frame_classifier
tasks.TASKS["synthetic_frames"] = SyntheticFrames
