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

Decoding in evaluation (speechfuse.eval.asr; task.decoding, see default_config). CTC: "greedy" (best path),
"beam" (prefix beam search, jitted on the device like greedy), "beam_lm" (prefix beam search with the word n-gram
LM task.lm_path, k2SSL's Eq. 3): the jitted `decode_step` stops at the log-probabilities and `utterances` runs the
search on the host (speechfuse.decoding.ctc_lm; a dictionary walk over words with no static-shape form), then
the jitted forced alignment. CTC confidences (speechfuse.eval.confidence) read the frame posteriors along the
hypothesis's best alignment (speechfuse.decoding.align), which for greedy is the best path itself. Transducer:
"greedy" (up to task.max_symbols_per_frame symbols per frame) or "beam" (modified beam search), without
confidences (the fusion baselines that read them fuse CTC models). The periodic evaluation during training
(`eval_step`) always decodes greedily: it is a progress signal, and the cheapest.
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
from speechfuse.decoding import align
from speechfuse.data import inputs, pipeline
from speechfuse.eval import confidence as confidence_lib, results
from speechfuse.losses import ctc as ctc_lib
from speechfuse.models import acoustic, ensemble
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
  # model.name="ctc_ensemble" (EBF, models.ensemble) only: one exported-variables path per member, whose
  # encoder/... loads into encoder_<i>/...; the members stay frozen for the whole run.
  config.init_members = ()
  if name == "asr_transducer":
    config.warm_step = 2000  # batches over which the simple / pruned loss blend warms up (icefall)
    config.simple_loss_scale = 0.5  # weight of the simple loss after warm-up (icefall)
    config.ctc_weight = 0.0  # auxiliary CTC loss weight (needs model.ctc_head)
    config.max_symbols_per_frame = 3  # greedy search's bound on symbols emitted per encoder frame
  # Decoding in evaluation (eval.asr.evaluate_asr, offline and online; results of other decodings than greedy go
  # to <workdir>/results/<decoding>/). CTC: "greedy" (fastest), "beam" (prefix beam search, as the OTF paper
  # reports), "beam_lm" (prefix beam search with the word LM below, on the host); transducer: "greedy" or "beam"
  # (modified beam search, one symbol per frame, as k2SSL reports).
  config.decoding = "greedy"
  config.beam = 8 if name == "asr_transducer" else 10  # hypotheses kept per frame (k2SSL: 8; OTF: 10)
  # beam_lm only (k2SSL's Eq. 3: log p_CTC + lm_weight * log p_LM + word_insertion * words, natural logs):
  config.lm_path = ml_collections.config_dict.placeholder(str)  # ARPA word LM, e.g. `speechfuse-prepare lm`
  config.lm_weight = 0.5
  config.word_insertion = 0.0
  # Lexicon-constrained search (wav2letter's lexicon decoder, k2's HLG): only the LM's words may be output, so
  # spelling errors cannot (and words outside the LM's vocabulary cannot either).
  config.lexicon = False
  return config


def decoding_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """config.task's decoding as the results table records it: {"method", then what that method reads}."""
  settings = {"method": config.task.decoding}
  if config.task.decoding != "greedy":
    settings["beam"] = config.task.beam
  if config.task.decoding == "beam_lm":
    settings.update(lm_path=config.task.lm_path, lm_weight=config.task.lm_weight,
                    word_insertion=config.task.word_insertion, lexicon=config.task.lexicon)
  return settings


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
                     source_prefix: tuple[str, ...] | None = None,
                     source_name: str = "pretrained") -> tuple[dict[str, Any], dict[str, list[str]]]:
  """Replaces the leaves of `variables` under `prefix` (in every collection) by those of `pretrained`.

  Args:
    variables: flax variables {collection: tree}; leaves may be boxed (nn.Partitioned), and stay boxed.
    pretrained: variables of the same layout as numpy arrays (train.load_variables).
    prefix: the subtree to load, e.g. ("encoder",); () loads every leaf the two share.
    source_prefix: where that subtree lies in `pretrained` (None: at `prefix`), e.g. ("encoder",) to load a CTC
      model's encoder into an ensemble's ("encoder_1",).
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
    source_key = key if source_prefix is None else (key[0], *source_prefix, *key[1 + len(prefix):])
    where = name(key) if source_key == key else f"{name(source_key)} (for {name(key)})"
    if source_key not in source:
      raise ValueError(f"{where} is not in {source_name}: it holds another architecture or size")
    value = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
    array = source[source_key]
    if tuple(array.shape) != tuple(value.shape):
      raise ValueError(f"{where} has shape {tuple(array.shape)} in {source_name}, {tuple(value.shape)} in this "
                       "model")
    array = jnp.asarray(array, value.dtype)
    flat[key] = leaf.replace_boxed(array) if isinstance(leaf, nn.Partitioned) else array
    report["loaded"].append(name(key))
    used.add(source_key)
  report["dropped"] = [name(key) for key in source if key not in used]
  return traverse_util.unflatten_dict(flat), report


class ASRTask(base.Task):
  """What CTC and transducer training share: data, tokenizer, CMVN, model, evaluation loop."""

  DECODINGS: tuple[str, ...] = ("greedy", "beam")  # config.task.decoding's choices

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
    self._check_members()
    self._check_decoding()
    self._pretrained = None  # {path: variables} read from config.task.init_from / init_members, once

  def _check_decoding(self) -> None:
    task = self.config.task
    if task.decoding not in self.DECODINGS:
      raise ValueError(f"config.task.decoding={task.decoding!r} is unknown for {task.name!r}; choose from "
                       f"{self.DECODINGS}")
    if task.decoding != "greedy" and task.beam < 1:
      raise ValueError(f"config.task.beam must be >= 1, got {task.beam}")
    if task.decoding == "beam_lm":
      if not task.lm_path or not os.path.isfile(task.lm_path):
        raise FileNotFoundError(f"config.task.decoding='beam_lm' needs an ARPA file at config.task.lm_path, got "
                                f"{task.lm_path!r} (write one with `speechfuse-prepare lm`)")
      if task.lm_weight < 0:
        raise ValueError(f"config.task.lm_weight must be >= 0, got {task.lm_weight}")

  # Fine-tuning and ensembles.

  def _check_members(self) -> None:
    members, model = tuple(self.config.task.init_members), self.config.model
    if model.name == ensemble.NAME and len(members) != model.num_members:
      raise ValueError(f"config.model.name={ensemble.NAME!r} needs config.task.init_members: one exported-variables "
                       f"path per member (config.model.num_members={model.num_members}), got {members}")
    if model.name != ensemble.NAME and members:
      raise ValueError(f"config.task.init_members is for config.model.name={ensemble.NAME!r}, not {model.name!r}")

  def _sources(self) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...] | None]]:
    """(label, path, subtree in this model, subtree in the source) of every variables file to load at init."""
    task = self.config.task
    sources = []
    if task.init_from:
      sources.append(("init_from", task.init_from, ("encoder",) if task.init_encoder_only else (), None))
    for i, path in enumerate(task.init_members):
      sources.append((f"init_members[{i}]", path, (ensemble.member_name(i),), ("encoder",)))
    return sources

  def _init_from(self, variables: dict[str, Any]) -> dict[str, Any]:
    """`variables` with the pre-trained ones of config.task.init_from / init_members in place (merge_pretrained)."""
    sources = self._sources()
    if not sources:
      return variables
    first = self._pretrained is None
    if first:
      # Imported here: train.checkpoint imports train.state, which imports this package.
      from speechfuse.train import checkpoint  # pylint: disable=g-import-not-at-top
      self._pretrained = {path: checkpoint.load_variables(path) for _, path, _, _ in sources}
    loaded = set()
    for label, path, prefix, source_prefix in sources:
      variables, report = merge_pretrained(variables, self._pretrained[path], prefix, source_prefix=source_prefix,
                                           source_name=path)
      loaded.update(report["loaded"])
      if first:  # init is traced more than once (shapes, then values): say it once
        logging.info("%s %s: loaded %d arrays: %s", label, path, len(report["loaded"]), ", ".join(report["loaded"]))
        logging.info("%s %s: dropped (not in this model or not loaded): %s", label, path,
                     ", ".join(report["dropped"]) or "none")
    if first:
      initialised = [n for n in report["loaded"] + report["initialised"] if n not in loaded]
      logging.info("%s: newly initialised: %s", ", ".join(f"{label} {path}" for label, path, _, _ in sources),
                   ", ".join(initialised) or "none")
    return variables

  def wrap_optimizer(self, tx):
    if self.config.model.name == ensemble.NAME:
      return optim.freeze(tx, ensemble.is_member)  # members frozen for good
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
      out = self._host_search(jax.tree.map(lambda x: np.asarray(x)[rows], out), np.asarray(batch["mask"]) > 0)
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

  def _method(self, method: str | None) -> str:
    """decode_step's decoding: `method`, or config.task.decoding when None."""
    method = self.config.task.decoding if method is None else method
    if method not in self.DECODINGS:
      raise ValueError(f"decoding method {method!r} is unknown for {self.config.task.name!r}; choose from "
                       f"{self.DECODINGS}")
    return method

  def _host_search(self, out: dict[str, np.ndarray], real: np.ndarray) -> dict[str, np.ndarray]:
    """`out` with tokens and token_lengths, for decodings that finish on the host; `real`: [B] rows to decode."""
    del real
    return out

  def _confidence(self, out: Mapping[str, np.ndarray], i: int) -> float | None:
    """Utterance i's confidence from eval_step's outputs, None where the model gives none."""
    del out, i
    return None

  def evaluate(self, eval_step, batches) -> dict[str, float]:
    return results.summarize(self.utterances(eval_step, batches))


def _aligned(log_probs: jax.Array, lengths: jax.Array, tokens: jax.Array, token_lengths: jax.Array,
             blank_id: int) -> dict[str, jax.Array]:
  """tokens [B, L], token_lengths [B], and best_ids / best_probs [B, T]: each frame's label on the hypothesis's best
  alignment (decoding.align) and its posterior, what CTC confidences read."""
  labels, label_log_probs, _ = align.ctc_forced_align(log_probs, lengths, tokens, token_lengths, blank_id)
  return {"tokens": tokens, "token_lengths": token_lengths, "best_ids": labels, "best_probs": jnp.exp(label_log_probs)}


class CTCTask(ASRTask):
  """CTC training (config.model.name == "ctc")."""

  DECODINGS = ("greedy", "beam", "beam_lm")

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike | None = None):
    super().__init__(config, workdir)
    self._lm = None  # (decoding.NgramLM, token pieces, lexicon) of config.task.lm_path, read on first use

  def init(self, rng, batch):
    return self._init_from(dict(self.model.init(rng, batch["audio"], batch["audio_lengths"])))

  def loss(self, params, extra, batch, rng, *, train):
    (log_probs, lengths), updates = self._apply({"params": params, **extra}, batch["audio"], batch["audio_lengths"],
                                                train=train, rng=rng)
    per_utterance = ctc_lib.ctc_loss(log_probs, lengths, batch["labels"], batch["label_lengths"],
                                     self.tokenizer.blank_id)
    loss, metrics_ = self._average(per_utterance, batch)
    return loss, (metrics_, updates if train else extra)

  def decode_step(self, variables, batch, *, chunk_size: int | None = None, num_left_chunks: int = -1,
                  method: str | None = None):
    """Decodes with `method` (None: config.task.decoding): jit-able.

    Returns:
      lengths [B] encoder frames, loss [B], and for "greedy" (decoding.ctc_greedy) and "beam" (the best of
      decoding.ctc_prefix_beam_search): tokens int32 [B, T], token_lengths [B], best_ids int32 [B, T] and
      best_probs float32 [B, T] (each frame's label on the hypothesis's best alignment and its posterior: the
      argmax for greedy). "beam_lm" returns log_probs float32 [B, T, V] instead of the four: `utterances` runs
      the LM search on the host.
    """
    method = self._method(method)
    blank_id = self.tokenizer.blank_id
    (log_probs, lengths), _ = self._apply(variables, batch["audio"], batch["audio_lengths"], train=False,
                                          chunk_size=chunk_size, num_left_chunks=num_left_chunks)
    out = {"lengths": lengths,
           "loss": ctc_lib.ctc_loss(log_probs, lengths, batch["labels"], batch["label_lengths"], blank_id)}
    if method == "greedy":
      tokens, token_lengths = decoding.ctc_greedy(log_probs, lengths, blank_id)
      return {**out, "tokens": tokens, "token_lengths": token_lengths,
              "best_ids": log_probs.argmax(-1).astype(jnp.int32), "best_probs": jnp.exp(log_probs.max(-1))}
    if method == "beam":
      best = decoding.ctc_prefix_beam_search(log_probs, lengths, beam=self.config.task.beam, blank_id=blank_id)
      return {**out, **_aligned(log_probs, lengths, best.tokens[:, 0], best.lengths[:, 0], blank_id)}
    return {**out, "log_probs": log_probs.astype(jnp.float32)}

  def _host_search(self, out, real):
    """The "beam_lm" search over the real rows (ctc_lm.prefix_beam_search), then the jitted forced alignment."""
    if "tokens" in out:
      return out
    task = self.config.task
    if self._lm is None:
      lm = decoding.NgramLM.from_arpa(task.lm_path)
      self._lm = (lm, decoding.token_pieces(self.tokenizer), lm.words() if task.lexicon else None)
    lm, pieces, lexicon = self._lm
    lengths = np.where(real, out["lengths"], 0)  # padding rows: nothing to search
    best = decoding.ctc_prefix_beam_search(
        out["log_probs"], lengths, beam=task.beam, blank_id=self.tokenizer.blank_id, lm=lm, lm_weight=task.lm_weight,
        word_insertion=task.word_insertion, pieces=pieces, lexicon=lexicon)
    aligned = _aligned(out["log_probs"], lengths, best.tokens[:, 0], best.lengths[:, 0], self.tokenizer.blank_id)
    return {**out, **jax.device_get(aligned)}

  def _confidence(self, out, i):
    length = int(out["lengths"][i])
    tokens, token_conf = confidence_lib.ctc_best_path(out["best_ids"][i], out["best_probs"][i], length,
                                                      self.tokenizer.blank_id)
    return confidence_lib.utterance_confidence(tokens, token_conf, self.tokenizer, out["best_probs"][i], length)

  def eval_step(self, variables, batch):
    return self.decode_step(variables, batch, method="greedy")


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

  def decode_step(self, variables, batch, *, chunk_size: int | None = None, num_left_chunks: int = -1,
                  method: str | None = None):
    """Decodes with `method` (None: config.task.decoding): "greedy" (decoding.transducer_greedy; tokens int32
    [B, T * max_symbols_per_frame]) or "beam" (the best of decoding.modified_beam_search; tokens [B, T]), with
    token_lengths [B] and loss [B] (the blended loss after warm-up)."""
    (losses, _), _ = self._apply(variables, batch["audio"], batch["audio_lengths"], batch["labels"],
                                 batch["label_lengths"], train=False)
    (encoder_out, lengths), _ = self._apply(variables, batch["audio"], batch["audio_lengths"], train=False,
                                            method="encode", chunk_size=chunk_size, num_left_chunks=num_left_chunks)
    apply = lambda name, *args: self.model.apply(variables, *args, method=name)
    searched = (apply("project_encoder", encoder_out), lengths, lambda n: apply("predictor_initial_state", n),
                lambda state, tokens: apply("predictor_step", state, tokens), lambda enc, pred: apply("join", enc, pred))
    if self._method(method) == "greedy":
      tokens, token_lengths = decoding.transducer_greedy(
          *searched, max_symbols_per_frame=self.config.task.max_symbols_per_frame, blank_id=self.tokenizer.blank_id)
    else:
      best = decoding.modified_beam_search(*searched, beam=self.config.task.beam, blank_id=self.tokenizer.blank_id)
      tokens, token_lengths = best.tokens[:, 0], best.lengths[:, 0]
    return {"tokens": tokens, "token_lengths": token_lengths, "loss": self._blend(losses, batch, train=False)}

  def eval_step(self, variables, batch):
    return self.decode_step(variables, batch, method="greedy")
