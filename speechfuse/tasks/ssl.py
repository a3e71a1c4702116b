"""Masked-prediction pre-training ("ssl_hubert"): HuBERT's or k2SSL's CE loss on k-means frame targets.

Model: speechfuse.models.ssl (config.model.name = "ssl") over the fbank Conformer of the ASR recipes or the
wav2vec 2.0 waveform encoder; the loss (config.task.loss, "hubert" or "ce") picks the head.

Targets, at the encoder's frame rate: the labels `config.task.targets` stored with the dataset
(speechfuse.data.labels), on the encoder's frame grid (models.encoders.frame_grid). The task reads them; they
are written beforehand by speechfuse.ssl.targets: iteration 1 by `ssl.targets.prepare(config)` (MFCC-39 k-means
with config.task.num_classes clusters, fitted on a config.task.kmeans_fraction of the training utterances, then
applied to the train and eval splits), which speechfuse.run's train mode calls first; iteration 2 with
`ssl.targets.model_targets(dataset, name, task.layer_features_fn(variables, layer), task.grid, k=500)` from a
layer of the iteration-1 model (its exported variables, train_lib.load_variables).

Batches: the ASR pipeline's (speechfuse.data.pipeline, its contract unchanged; the text is not used, so the
tokenizer yields no tokens and speed perturbation is refused: it would move frames off their labels), plus
  frame_labels: int32 [batch, frames], each example's labels looked up by id and zero-padded to the encoder
                frame count of the bucket's padded length (frames past the example's own count are padding).
The wrapper delegates get_state / set_state to the pipeline iterator, so the position it saves is exact.

CMVN for fbank encoders: the same <workdir>/cmvn.json statistics as the ASR task (tasks.asr.run_cmvn, same
utterances), so a fine-tuning run that computes its own from the full train split normalises identically.

Loss: the masked-prediction loss (losses.masked_prediction) over valid encoder frames, plus, for the waveform
backbone, feature_penalty_weight * mean squared convolutional features (HuBERT / k2SSL: 10). Evaluation on
dev: masked-prediction loss and accuracy on masked and unmasked frames, with a fixed mask key.

WavLM's denoising (config.task.mix_prob > 0; WavLM: 0.2): in training, that share of utterances gets a segment of
up to half its length from another utterance of the batch added at an energy ratio in [-5, 5] dB
(audio.augment.mix_utterances); the targets stay the primary utterance's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from speechfuse import models, train as train_lib
from speechfuse.audio import augment
from speechfuse.data import inputs, labels, pipeline
from speechfuse.losses import masked_prediction
from speechfuse.models import acoustic, encoders
from speechfuse.nn import attention
from speechfuse.tasks import asr

LOSSES = ("hubert", "ce")


def default_config() -> ml_collections.ConfigDict:
  """config.task for "ssl_hubert"."""
  config = ml_collections.ConfigDict()
  config.name = "ssl_hubert"
  config.loss = "hubert"  # "hubert" (cosine to label embeddings) or "ce" (k2SSL: linear head)
  config.iteration = 1  # 1: MFCC k-means targets written on first use; 2: labels written by model_targets
  config.targets = "mfcc_k100_fbank_conv2d_x4"  # labels name under <dataset>/labels/
  config.num_classes = 100  # k-means clusters (iteration 1: 100; iteration 2: 500)
  config.kmeans_fraction = 0.1  # share of training utterances the iteration-1 codebook is fitted on
  config.kmeans_seed = 0
  config.temperature = 0.1  # logits / temperature in both losses
  config.masked_weight = 1.0  # fairseq's pred_masked_weight
  config.unmasked_weight = 0.0  # fairseq's pred_nomask_weight
  config.feature_penalty_weight = 10.0  # waveform backbone only (HuBERT and k2SSL: 10)
  config.cmvn_utterances = 2000  # as the ASR task's, so both compute the same statistics
  config.mix_prob = 0.0  # WavLM's utterance mixing: share of training utterances mixed (WavLM: 0.2)
  return config


class _NoText:
  """The pipeline's tokenizer for unlabeled audio: no tokens, so the text never limits bucketing."""

  pad_id = 0

  def encode(self, text: str) -> list[int]:
    del text
    return []


class _FrameLabels:
  """Adds `frame_labels` int32 [batch, frames] to every batch of a pipeline iterator; checkpointable by delegation.

  Args:
    iterator: a pipeline iterator (batches with ids, audio, audio_lengths, mask).
    frame_labels: record id -> int labels [T_i] on the encoder's grid.
    frame_count: samples -> encoder frames (the grid's length function).
  """

  def __init__(self, iterator: train_lib.CheckpointableIterator, frame_labels: Mapping[str, np.ndarray],
               frame_count: Callable[[int], int]):
    self._iterator = iterator
    self._labels = frame_labels
    self._frame_count = frame_count

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = dict(next(self._iterator))
    frame_labels = np.zeros((len(batch["mask"]), self._frame_count(batch["audio"].shape[1])), np.int32)
    for row in np.flatnonzero(np.asarray(batch["mask"]) > 0):
      record_id = str(batch["ids"][row])
      row_labels = self._labels[record_id]
      expected = self._frame_count(int(batch["audio_lengths"][row]))
      if len(row_labels) != expected:
        raise ValueError(f"labels of {record_id!r} have {len(row_labels)} frames, its audio gives {expected} encoder "
                         "frames: the labels were written on another grid or for other audio")
      frame_labels[row, :expected] = row_labels
    batch["frame_labels"] = frame_labels
    return batch

  def get_state(self) -> Any:
    return self._iterator.get_state()

  def set_state(self, state: Any) -> None:
    self._iterator.set_state(state)


class SSLTask(train_lib.Task):
  """HuBERT-style masked prediction over config.model (models.ssl)."""

  LOSSES = LOSSES

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike | None = None):
    super().__init__(config, workdir)
    task = config.task
    if task.loss not in self.LOSSES:
      raise ValueError(f"config.task.loss={task.loss!r} is unknown for {task.name!r}; choose from {self.LOSSES}")
    if not 0.0 <= task.mix_prob <= 1.0:
      raise ValueError(f"config.task.mix_prob={task.mix_prob} must be in [0, 1]")
    self.data_config = config.data.copy_and_resolve_references()
    self.data_config.batch_multiple = math.lcm(config.data.batch_multiple, asr.data_parallel_unit(config))
    self.dataset = inputs.dataset_path(config.data)
    self.grid = encoders.frame_grid(config.model.encoder, config.data.sample_rate)  # where targets are written
    self._check_targets()
    cmvn = None
    if acoustic.needs_cmvn(config.model):
      if workdir is None:
        raise ValueError("ssl_hubert with an fbank encoder keeps its CMVN statistics in the run's workdir; build it "
                         "with tasks.get_task(config, workdir)")
      cmvn = asr.run_cmvn(self.workdir, lambda: inputs.open_split(config.data, config.data.train_split),
                          num_mel_bins=config.model.frontend.num_mel_bins, max_utterances=task.cmvn_utterances)
    self.model = models.get_model(config.model, dtype=jnp.dtype(config.compute_dtype),
                                  num_classes=task.get("num_classes", 0), head=task.loss, cmvn=cmvn)

  def _check_targets(self) -> None:
    """Checks that the dataset holds the targets, for both splits, of the model's class count and frame rate."""
    task, data = self.config.task, self.config.data
    if data.speed_perturb:
      raise ValueError(f"config.data.speed_perturb must be False for {task.name}: perturbed audio no longer lines up "
                       "with its frame labels")
    splits = (data.train_split, data.eval_split)
    if not labels.has_labels(self.dataset, task.targets, splits):
      how = ("speechfuse.run's train mode writes them first (ssl.targets.prepare)" if task.iteration == 1 else
             "iteration 2 labels come from the previous model (ssl.targets.model_targets)")
      raise FileNotFoundError(f"config.task.targets={task.targets!r}: the dataset {self.dataset} has no such labels "
                              f"for splits {splits}; {how}")
    info = labels.labels_info(self.dataset, task.targets)
    if info["k"] != task.num_classes:
      raise ValueError(f"labels {task.targets!r} have k={info['k']}, config.task.num_classes={task.num_classes}")
    if not math.isclose(info["frame_rate"], self.grid.frame_rate):
      raise ValueError(f"labels {task.targets!r} are at {info['frame_rate']} Hz; the "
                       f"{self.config.model.encoder.architecture} encoder runs at {self.grid.frame_rate} Hz "
                       f"({self.grid.name})")

  def layer_features_fn(self, variables: dict[str, Any], layer: int) -> Callable[[Any, Any], tuple[Any, Any]]:
    """The features of `layer` (SSLModel.hidden's index) of the model with `variables`, jitted: iteration 2's
    input to ssl.targets.model_targets, on this task's grid (`self.grid`)."""
    hidden = jax.jit(lambda audio, lengths: self.model.apply(variables, audio, lengths, method="hidden"))

    def features(audio, lengths):
      layers, frames = hidden(jnp.asarray(audio), jnp.asarray(lengths))
      return layers[layer], frames

    return features

  # Data.

  def make_input(self, split: str, *, seed: int, shard_index: int,
                 shard_count: int) -> train_lib.CheckpointableIterator:
    if split not in ("train", "eval"):
      raise ValueError(f"unknown split {split!r}; ssl_hubert has 'train' and 'eval'")
    name = self.config.data.train_split if split == "train" else self.config.data.eval_split
    source = inputs.open_split(self.config.data, name)
    if split == "train":
      iterator = pipeline.make_train_iterator(source, _NoText(), self.data_config, seed=seed,
                                              shard_index=shard_index, shard_count=shard_count)
    else:
      iterator = pipeline.make_eval_iterator(source, _NoText(), self.data_config, shard_index=shard_index,
                                             shard_count=shard_count)
    return self._with_targets(iterator, name)

  def _with_targets(self, iterator: train_lib.CheckpointableIterator, split: str) -> train_lib.CheckpointableIterator:
    """The batches of `iterator` with their frame labels of `split`."""
    return _FrameLabels(iterator, labels.open_labels(self.dataset, self.config.task.targets, split),
                        self.grid.frame_count)

  # Model.

  def init(self, rng, batch):
    return dict(self.model.init(rng, batch["audio"], batch["audio_lengths"], jax.random.PRNGKey(0)))

  def _apply(self, variables, batch, rng: jax.Array | None, *, train: bool, step=None, **kwargs):
    """model.apply with a fresh mask, RNG streams, utterance mixing (config.task.mix_prob) and the training `step`
    (the Zipformer's gradient-shaping schedules) in training, the fixed mask key 0 otherwise; kwargs go to the
    model."""
    if not train:
      out = self.model.apply(variables, batch["audio"], batch["audio_lengths"], jax.random.PRNGKey(0), train=False,
                             **kwargs)
      return out, {}
    mask_rng, mix_rng, *keys = jax.random.split(rng, len(acoustic.RNG_STREAMS) + 2)
    audio = batch["audio"]
    if self.config.task.mix_prob > 0:
      audio, _ = augment.mix_utterances(mix_rng, jnp.asarray(audio, jnp.float32), batch["audio_lengths"],
                                        prob=self.config.task.mix_prob)
    mutable = sorted(variables.keys() - {"params"})
    out, updates = self.model.apply(variables, audio, batch["audio_lengths"], mask_rng, train=True, step=step,
                                    rngs=dict(zip(acoustic.RNG_STREAMS, keys)), mutable=mutable, **kwargs)
    return out, dict(updates)

  def _objective(self, out, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked-prediction loss (+ feature penalty) of the model's outputs against batch["frame_labels"]."""
    task = self.config.task
    frames = out.head.shape[1]
    if batch["frame_labels"].shape[1] != frames:
      raise ValueError(f"frame_labels have {batch['frame_labels'].shape[1]} frames, the encoder gives {frames}")
    valid = attention.padding_mask(out.lengths, frames)
    kw = dict(temperature=task.temperature, masked_weight=task.masked_weight, unmasked_weight=task.unmasked_weight)
    if task.loss == "hubert":
      loss, metrics = masked_prediction.hubert_loss(out.head, out.label_embeddings, batch["frame_labels"],
                                                    out.frame_mask, valid, **kw)
    else:
      loss, metrics = masked_prediction.ce_loss(out.head, batch["frame_labels"], out.frame_mask, valid, **kw)
    if out.features is not None:
      penalty = masked_prediction.feature_penalty(out.features, valid)
      metrics["feature_penalty"] = penalty
      loss = loss + task.feature_penalty_weight * penalty
    return loss, metrics

  def loss(self, params, extra, batch, rng, *, step, train):
    out, updates = self._apply({"params": params, **extra}, batch, rng, train=train, step=step)
    loss, metrics = self._objective(out, batch)
    # Means over masked (or unmasked) frames, so micro-batches add with those counts (train_lib.Mean); the feature
    # penalty (a mean over valid frames) and the unmasked term of the loss ride on the masked count.
    masked, unmasked = metrics.pop("masked_frames"), metrics.pop("unmasked_frames")
    weight = lambda name: unmasked if name.startswith("unmasked") else masked
    means = {name: train_lib.Mean(value * weight(name), weight(name)) for name, value in metrics.items()}
    means["masked_fraction"] = train_lib.Mean(masked, masked + unmasked)
    return train_lib.Mean(loss * masked, masked), (means, updates if train else extra)

  def eval_step(self, variables, batch):
    out, _ = self._apply(variables, batch, None, train=False)
    _, metrics = self._objective(out, batch)
    return metrics

  def evaluate(self, eval_step, batches) -> dict[str, float]:
    """Frame-weighted means over the batches: loss and accuracy on masked frames, accuracy on unmasked ones."""
    sums = {"masked_loss": 0.0, "masked_accuracy": 0.0, "unmasked_accuracy": 0.0, "masked_frames": 0.0,
            "unmasked_frames": 0.0}
    for batch in batches:
      out = eval_step(batch)
      masked, unmasked = float(out["masked_frames"]), float(out["unmasked_frames"])
      sums["masked_loss"] += float(out["masked_loss"]) * masked
      sums["masked_accuracy"] += float(out["masked_accuracy"]) * masked
      sums["unmasked_accuracy"] += float(out["unmasked_accuracy"]) * unmasked
      sums["masked_frames"] += masked
      sums["unmasked_frames"] += unmasked
    masked, unmasked = max(sums["masked_frames"], 1.0), max(sums["unmasked_frames"], 1.0)
    return {"loss": sums["masked_loss"] / masked, "masked_accuracy": sums["masked_accuracy"] / masked,
            "unmasked_accuracy": sums["unmasked_accuracy"] / unmasked, "masked_frames": sums["masked_frames"]}
