"""Speech recognition tasks: "asr_ctc" (models.ctc) and "asr_transducer" (models.transducer, pruned RNN-T).

Data: config.data (speechfuse.data.inputs) names the corpus and splits; batches come from the grain pipeline
(speechfuse.data.pipeline) with the run's tokenizer (<workdir>/tokenizer, speechfuse.text.factory). The
features' global CMVN statistics are computed once from the training split and saved as <workdir>/cmvn.json,
so a resumed or evaluated run normalises exactly as it trained.

Loss normalisation (ESPnet / WeNet, `length_normalized_loss=False`): per-utterance negative log-likelihoods are
averaged over the batch's real utterances (`mask`); infeasible utterances (too few frames for their labels,
loss >= losses.ctc.INFEASIBLE_LOSS) are left out and counted. The per-token loss is logged alongside.

Transducer: loss = simple_scale * simple + pruned_scale * pruned (+ ctc_weight * ctc), with icefall's warm-up:
simple_scale goes 1 -> task.simple_loss_scale and pruned_scale 0.1 -> 1 linearly over task.warm_step batches
(then stay). The train iterator stamps each batch with its index (`batch_index`, [batch] int32, saved with the
iterator state), which equals the train step, since the loss function does not see the step.

Fine-tuning (task.init_from): the variables of an exported run (e.g. a configs/ssl_hubert.py encoder) replace the
freshly initialised encoder/... (every leaf, with an error naming any one missing or of another shape; with
task.init_encoder_only=False, every leaf the two models share); the rest (the CTC head, the predictor) stays
initialised and the source's other leaves (its pre-training head) are dropped, all three listed in the log.
task.freeze_encoder_steps > 0 zeroes the loaded encoder's updates for that many first updates (optim.freeze_for_steps:
the update after AdamW is masked, so weight decay does not move it either). data.train_fraction trains on a
fixed labeled subset (inputs.train_source); the CMVN statistics still come from the whole train split.

Decoding in evaluation (speechfuse.decoding, jitted on the device): CTC greedy, with per-utterance confidences
from the frame posteriors (speechfuse.eval.confidence); transducer greedy search (up to
task.max_symbols_per_frame symbols per frame), without confidences (the fusion baselines that read them fuse
CTC models).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from speechfuse import audio, decoding, models, optim, parallel
from speechfuse.data import inputs, pipeline
from speechfuse.eval import confidence as confidence_lib, metrics
from speechfuse.losses import ctc as ctc_lib
from speechfuse.models import acoustic
from speechfuse.text import factory
from speechfuse.train.tasks import base

CMVN_FILE = "cmvn.json"
TOKENIZER_DIR = "tokenizer"


def default_config(name: str = "asr_ctc") -> ml_collections.ConfigDict:
  """config.task for "asr_ctc" / "asr_transducer"."""
  config = ml_collections.ConfigDict()
  config.name = name
  config.cmvn_utterances = 2000  # training utterances the CMVN statistics are computed from
  # Online (streaming) evaluation: attention restricted to chunks of this many encoder frames
  # (16 x 40 ms = 640 ms at x4 subsampling, WeNet's usual choice) with this many chunks of left context (-1: all).
  config.online_chunk_size = 16
  config.online_left_chunks = -1
  # Fine-tuning: variables exported by `launch/main.py --mode=export` (train.export_params) of a run whose model
  # shares this one's encoder (e.g. configs/ssl_hubert.py), loaded at state creation; None trains from scratch.
  config.init_from = ml_collections.config_dict.placeholder(str)
  config.init_encoder_only = True  # load encoder/... only; the rest (the pre-training head) is dropped
  # With init_from: the encoder's updates are zero for this many first updates (optim.freeze_for_steps).
  config.freeze_encoder_steps = 0
  if name == "asr_transducer":
    config.warm_step = 2000  # batches over which the simple / pruned loss blend warms up (icefall)
    config.simple_loss_scale = 0.5  # weight of the simple loss after warm-up (icefall)
    config.ctc_weight = 0.0  # auxiliary CTC loss weight (needs model.ctc_head)
    config.max_symbols_per_frame = 3  # greedy search's bound on symbols emitted per encoder frame
  return config


def data_parallel_unit(config: ml_collections.ConfigDict) -> int:
  """Examples each global batch must be a multiple of: data-parallel devices x accumulation, and processes.

  The pipeline plans global batches and gives each process an equal contiguous slice (its batch_multiple is
  global), so this is also what every process's slice divides the data-parallel work by.
  """
  shape = parallel.mesh_shape(config.mesh, jax.device_count())
  rules = parallel.axis_rules(config.logical_axis_rules)
  data_parallel = math.prod(shape[axis] for axis in parallel.mesh.batch_axes(rules))
  return math.lcm(data_parallel * config.grad_accum_steps, jax.process_count())


class _BatchCounter:
  """Adds `batch_index` int32 [batch] (the batch's position in the stream) to every batch; checkpointable."""

  def __init__(self, iterator: base.CheckpointableIterator):
    self._iterator = iterator
    self._count = 0

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = dict(next(self._iterator))
    batch["batch_index"] = np.full(batch["mask"].shape, self._count, np.int32)
    self._count += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"pipeline": self._iterator.get_state(), "batches": self._count}

  def set_state(self, state: Mapping[str, Any]) -> None:
    self._iterator.set_state(state["pipeline"])
    self._count = int(state["batches"])


def run_cmvn(workdir: str, train_source, *, num_mel_bins: int, max_utterances: int) -> audio.CMVNStats:
  """The run's feature statistics: <workdir>/cmvn.json, computed from `train_source` and saved on first use."""
  path = os.path.join(workdir, CMVN_FILE)
  if os.path.exists(path):
    return audio.CMVNStats.load(path)
  stats = inputs.feature_stats(train_source, num_mel_bins=num_mel_bins, max_utterances=max_utterances)
  os.makedirs(workdir, exist_ok=True)
  stats.save(path)
  return stats


def merge_pretrained(variables: Mapping[str, Any], pretrained: Mapping[str, Any], prefix: tuple[str, ...] = (), *,
                     source_name: str = "pretrained") -> tuple[dict[str, Any], dict[str, list[str]]]:
  """Replaces the leaves of `variables` under `prefix` (in every collection) by those of `pretrained`.

  Args:
    variables: flax variables {collection: tree}; leaves may be boxed (nn.Partitioned), and stay boxed.
    pretrained: variables of the same layout as numpy arrays (train.load_variables).
    prefix: the subtree to load, e.g. ("encoder",); () loads every leaf the two share.
    source_name: names the source in errors.

  Returns:
    (merged variables, {"loaded": [...], "initialised": [...], "dropped": [...]}) with "collection/a/b" names:
    loaded from `pretrained`, kept as initialised, and the pretrained leaves not used (e.g. a pre-training head).

  Raises:
    ValueError: a leaf under `prefix` is missing from `pretrained` (another architecture), or has another
      shape; the message names it.
  """
  flat = traverse_util.flatten_dict(dict(variables))
  source = traverse_util.flatten_dict(dict(pretrained))
  name = "/".join
  report = {"loaded": [], "initialised": [], "dropped": []}
  used = set()
  for key, leaf in flat.items():
    if key[1:1 + len(prefix)] != prefix or (not prefix and key not in source):
      report["initialised"].append(name(key))
      continue
    if key not in source:
      raise ValueError(f"{name(key)} is not in {source_name}: it holds another architecture or size")
    value = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
    array = source[key]
    if tuple(array.shape) != tuple(value.shape):
      raise ValueError(f"{name(key)} has shape {tuple(array.shape)} in {source_name}, {tuple(value.shape)} in this "
                       "model")
    array = jnp.asarray(array, value.dtype)
    flat[key] = leaf.replace_boxed(array) if isinstance(leaf, nn.Partitioned) else array
    report["loaded"].append(name(key))
    used.add(key)
  report["dropped"] = [name(key) for key in source if key not in used]
  return traverse_util.unflatten_dict(flat), report


class ASRTask(base.Task):
  """What CTC and transducer training share: data, tokenizer, CMVN, model, evaluation loop."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike | None = None):
    super().__init__(config, workdir)
    if workdir is None:
      raise ValueError(f"task {config.task.name!r} keeps its tokenizer and CMVN statistics in the run's workdir; "
                       "build it with tasks.get_task(config, workdir)")
    self.data_config = config.data.copy_and_resolve_references()
    unit = data_parallel_unit(config)
    # Batch sizes must split over the data-parallel devices (and micro-batches): round the multiple up.
    self.data_config.batch_multiple = math.lcm(config.data.batch_multiple, unit)
    labeled = inputs.train_source(config.data)
    self.tokenizer = factory.build_tokenizer(
        config.tokenizer, lambda: labeled.metadata()["text"],  # from the index: no audio read
        os.path.join(self.workdir, TOKENIZER_DIR))
    # Feature statistics from the whole split, labeled or not: the same as a pre-training run's (tasks.ssl).
    self.cmvn = self._cmvn(inputs.open_split(config.data, config.data.train_split))
    self.model = models.get_model(config.model, dtype=jnp.dtype(config.compute_dtype),
                                  vocab_size=self.tokenizer.vocab_size, cmvn=self.cmvn)
    self._pretrained = None  # variables read from config.task.init_from, once

  # Fine-tuning.

  def _init_from(self, variables: dict[str, Any]) -> dict[str, Any]:
    """`variables` with the pre-trained ones of config.task.init_from in place (see merge_pretrained)."""
    task = self.config.task
    if not task.init_from:
      return variables
    first = self._pretrained is None
    if first:
      # Imported here: train.checkpoint imports train.state, which imports this package.
      from speechfuse.train import checkpoint  # pylint: disable=g-import-not-at-top
      self._pretrained = checkpoint.load_variables(task.init_from)
    merged, report = merge_pretrained(variables, self._pretrained, ("encoder",) if task.init_encoder_only else (),
                                      source_name=task.init_from)
    if first:  # init is traced more than once (shapes, then values): say it once
      logging.info("init_from %s: loaded %d arrays: %s", task.init_from, len(report["loaded"]),
                   ", ".join(report["loaded"]))
      logging.info("init_from %s: newly initialised: %s", task.init_from, ", ".join(report["initialised"]) or "none")
      logging.info("init_from %s: dropped (not in this model or not loaded): %s", task.init_from,
                   ", ".join(report["dropped"]) or "none")
    return merged

  def wrap_optimizer(self, tx):
    steps = self.config.task.freeze_encoder_steps
    if steps <= 0 or not self.config.task.init_from:  # a random encoder is never frozen: the scratch baseline
      return tx
    return optim.freeze_for_steps(tx, steps, lambda path: bool(path) and getattr(path[0], "key", None) == "encoder")

  def _cmvn(self, train_source) -> audio.CMVNStats:
    return run_cmvn(self.workdir, train_source, num_mel_bins=self.config.model.frontend.num_mel_bins,
                    max_utterances=self.config.task.cmvn_utterances)

  # Data.

  def split_input(self, split: str, *, shard_index: int, shard_count: int) -> base.CheckpointableIterator:
    """One pass over the corpus split named `split` (e.g. "test_clean"), evaluation batches."""
    return pipeline.make_eval_iterator(inputs.open_split(self.config.data, split), self.tokenizer,
                                       self.data_config, shard_index=shard_index, shard_count=shard_count)

  def make_input(self, split: str, *, seed: int, shard_index: int, shard_count: int) -> base.CheckpointableIterator:
    if split == "train":
      return pipeline.make_train_iterator(inputs.train_source(self.config.data), self.tokenizer, self.data_config,
                                          seed=seed, shard_index=shard_index, shard_count=shard_count)
    if split == "eval":
      return self.split_input(self.config.data.eval_split, shard_index=shard_index, shard_count=shard_count)
    raise ValueError(f"unknown split {split!r}; ASR tasks have 'train' and 'eval'")

  # Model.

  def _apply(self, variables, *args, train: bool, rng: jax.Array | None = None, **kwargs):
    """model.apply; in training with fresh RNG streams and the updated non-parameter collections."""
    if not train:
      return self.model.apply(variables, *args, train=False, **kwargs), {}
    keys = jax.random.split(rng, len(acoustic.RNG_STREAMS))
    rngs = dict(zip(acoustic.RNG_STREAMS, keys))
    mutable = sorted(variables.keys() - {"params"})
    out, updates = self.model.apply(variables, *args, train=True, rngs=rngs, mutable=mutable, **kwargs)
    return out, dict(updates)

  @staticmethod
  def _average(per_utterance: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean over real, feasible utterances, and the metrics that go with it."""
    feasible = per_utterance < ctc_lib.INFEASIBLE_LOSS
    weights = batch["mask"] * feasible
    count = jnp.maximum(weights.sum(), 1.0)
    total = jnp.where(weights > 0, per_utterance, 0.0).sum()
    tokens = jnp.maximum((batch["label_lengths"] * weights).sum(), 1.0)
    infeasible = (batch["mask"] * ~feasible).sum() / jnp.maximum(batch["mask"].sum(), 1.0)
    return total / count, {"loss_per_token": total / tokens, "infeasible_fraction": infeasible}

  # Evaluation.

  def utterances(self, eval_step: Callable[[Mapping[str, np.ndarray]], Any],
                 batches: Iterable[Mapping[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Per-utterance results of this process's examples: id, reference, hypothesis, loss, confidence."""
    offset_rows = jax.process_index()
    records = []
    for batch in batches:
      out = eval_step(batch)
      local = len(batch["mask"])
      rows = slice(offset_rows * local, (offset_rows + 1) * local)  # outputs are gathered over processes
      out = jax.tree.map(lambda x: np.asarray(x)[rows], out)
      for i in np.flatnonzero(np.asarray(batch["mask"]) > 0):
        reference = self.tokenizer.decode(batch["labels"][i, :batch["label_lengths"][i]])
        records.append({
            "id": str(batch["ids"][i]),
            "reference": reference,
            "hypothesis": self.tokenizer.decode(out["tokens"][i, :out["token_lengths"][i]]),
            "loss": float(out["loss"][i]),
            "confidence": self._confidence(out, i),
        })
    return records

  def _confidence(self, out: Mapping[str, np.ndarray], i: int) -> float | None:
    """Utterance i's confidence from eval_step's outputs, None where the model gives none."""
    del out, i
    return None

  def evaluate(self, eval_step, batches) -> dict[str, float]:
    return summarize(self.utterances(eval_step, batches))


def summarize(records: list[dict[str, Any]]) -> dict[str, float]:
  """Loss (mean per utterance over feasible ones), CER, WER (corpus level) and mean confidence (where the
  records have one) of `records`.

  Fills each record's errors: word_errors, words, char_errors, chars. With several processes the sums are
  added over all of them.
  """
  references = [r["reference"] for r in records]
  hypotheses = [r["hypothesis"] for r in records]
  words, chars = metrics.word_errors(references, hypotheses), metrics.char_errors(references, hypotheses)
  for i, record in enumerate(records):
    record.update(word_errors=words.errors[i], words=words.lengths[i], char_errors=chars.errors[i],
                  chars=chars.lengths[i])
  losses = [r["loss"] for r in records if r["loss"] < ctc_lib.INFEASIBLE_LOSS]
  confidences = [r["confidence"] for r in records if r["confidence"] is not None]
  sums = np.array([words.total_errors, words.total_length, chars.total_errors, chars.total_length,
                   sum(losses), len(losses), sum(confidences), len(confidences), len(records)], np.float64)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top  # multi-host only
    sums = np.asarray(multihost_utils.process_allgather(sums)).sum(axis=0)
  summary = {"loss": sums[4] / max(sums[5], 1), "wer": sums[0] / max(sums[1], 1), "cer": sums[2] / max(sums[3], 1),
             "utterances": float(sums[8])}
  if sums[7]:
    summary["confidence"] = sums[6] / sums[7]
  return summary


class CTCTask(ASRTask):
  """CTC training (config.model.name == "ctc")."""

  def init(self, rng, batch):
    return self._init_from(dict(self.model.init(rng, batch["audio"], batch["audio_lengths"])))

  def loss(self, params, extra, batch, rng, *, train):
    (log_probs, lengths), updates = self._apply({"params": params, **extra}, batch["audio"], batch["audio_lengths"],
                                                train=train, rng=rng)
    per_utterance = ctc_lib.ctc_loss(log_probs, lengths, batch["labels"], batch["label_lengths"],
                                     self.tokenizer.blank_id)
    loss, metrics_ = self._average(per_utterance, batch)
    return loss, (metrics_, updates if train else extra)

  def decode_step(self, variables, batch, *, chunk_size: int | None = None, num_left_chunks: int = -1):
    """Greedy decoding: tokens int32 [B, T] and token_lengths [B] (decoding.ctc_greedy), best_ids int32 [B, T]
    and best_probs float32 [B, T] (the frames' argmax and its posterior, for confidences), lengths [B], loss [B]."""
    (log_probs, lengths), _ = self._apply(variables, batch["audio"], batch["audio_lengths"], train=False,
                                          chunk_size=chunk_size, num_left_chunks=num_left_chunks)
    loss = ctc_lib.ctc_loss(log_probs, lengths, batch["labels"], batch["label_lengths"], self.tokenizer.blank_id)
    tokens, token_lengths = decoding.ctc_greedy(log_probs, lengths, self.tokenizer.blank_id)
    return {"tokens": tokens, "token_lengths": token_lengths, "best_ids": log_probs.argmax(-1).astype(jnp.int32),
            "best_probs": jnp.exp(log_probs.max(-1)), "lengths": lengths, "loss": loss}

  def _confidence(self, out, i):
    length = int(out["lengths"][i])
    tokens, token_conf = confidence_lib.ctc_best_path(out["best_ids"][i], out["best_probs"][i], length,
                                                      self.tokenizer.blank_id)
    return confidence_lib.utterance_confidence(tokens, token_conf, self.tokenizer, out["best_probs"][i], length)

  def eval_step(self, variables, batch):
    return self.decode_step(variables, batch)


class TransducerTask(ASRTask):
  """Pruned RNN-T training (config.model.name == "transducer")."""

  def make_input(self, split, *, seed, shard_index, shard_count):
    iterator = super().make_input(split, seed=seed, shard_index=shard_index, shard_count=shard_count)
    return _BatchCounter(iterator) if split == "train" else iterator

  def init(self, rng, batch):
    return self._init_from(dict(self.model.init(rng, batch["audio"], batch["audio_lengths"], batch["labels"],
                                                batch["label_lengths"])))

  def _blend(self, losses: Mapping[str, jax.Array], batch, train: bool) -> jax.Array:
    """Per-utterance blended loss: icefall's warm-up schedule in training, its end point otherwise."""
    task = self.config.task
    if train:
      progress = jnp.minimum(batch["batch_index"][0].astype(jnp.float32) / max(task.warm_step, 1), 1.0)
    else:
      progress = 1.0
    simple_scale = 1.0 - progress * (1.0 - task.simple_loss_scale)
    pruned_scale = 0.1 + 0.9 * progress
    blended = simple_scale * losses["simple"] + pruned_scale * losses["pruned"]
    if task.ctc_weight:
      if "ctc" not in losses:
        raise ValueError("config.task.ctc_weight > 0 needs config.model.ctc_head = True")
      blended = blended + task.ctc_weight * losses["ctc"]
    return blended

  def loss(self, params, extra, batch, rng, *, train):
    (losses, _), updates = self._apply({"params": params, **extra}, batch["audio"], batch["audio_lengths"],
                                       batch["labels"], batch["label_lengths"], train=train, rng=rng)
    loss, metrics_ = self._average(self._blend(losses, batch, train), batch)
    for name, value in losses.items():
      metrics_[f"{name}_loss"], _ = self._average(value, batch)
    return loss, (metrics_, updates if train else extra)

  def decode_step(self, variables, batch, *, chunk_size: int | None = None, num_left_chunks: int = -1):
    """Greedy search (decoding.transducer_greedy): tokens int32 [B, T * max_symbols_per_frame], token_lengths
    [B], and loss [B] (the blended loss after warm-up)."""
    (losses, _), _ = self._apply(variables, batch["audio"], batch["audio_lengths"], batch["labels"],
                                 batch["label_lengths"], train=False)
    (encoder_out, lengths), _ = self._apply(variables, batch["audio"], batch["audio_lengths"], train=False,
                                            method="encode", chunk_size=chunk_size, num_left_chunks=num_left_chunks)
    apply = lambda method, *args: self.model.apply(variables, *args, method=method)
    tokens, token_lengths = decoding.transducer_greedy(
        apply("project_encoder", encoder_out), lengths, lambda n: apply("predictor_initial_state", n),
        lambda state, tokens: apply("predictor_step", state, tokens), lambda enc, pred: apply("join", enc, pred),
        max_symbols_per_frame=self.config.task.max_symbols_per_frame, blank_id=self.tokenizer.blank_id)
    return {"tokens": tokens, "token_lengths": token_lengths, "loss": self._blend(losses, batch, train=False)}

  def eval_step(self, variables, batch):
    return self.decode_step(variables, batch)
