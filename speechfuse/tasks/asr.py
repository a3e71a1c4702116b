"""What the speech recognition tasks share ("asr_ctc" in tasks.asr_ctc, "asr_transducer" in tasks.asr_transducer):
data, tokenizer, CMVN, model, fine-tuning, the evaluation loop, and the evaluation driver `ASRTask.evaluate_splits`.

Data: config.data (speechfuse.data.inputs) names the corpus and splits; batches come from the grain pipeline
(speechfuse.data.pipeline) with the run's tokenizer (<workdir>/tokenizer, speechfuse.text.factory). The
features' global CMVN statistics are computed once from a random sample of the training split and saved as
<workdir>/cmvn.json, so a resumed or evaluated run normalises exactly as it trained. Both are made from the train
split only when the workdir lacks them: a trained run evaluates on a dataset that has no train split.

Loss normalisation (ESPnet / WeNet, `length_normalized_loss=False`): per-utterance negative log-likelihoods are
summed over the batch's real, feasible utterances and divided by their count (train_lib.Mean, so micro-batches add
exactly); infeasible utterances (too few frames for their labels, loss >= losses.ctc.INFEASIBLE_LOSS) are left out
and counted. The per-token loss is logged alongside.

Fine-tuning (task.init_from): the variables of an exported run (e.g. a configs/ssl_hubert.py encoder) replace the
freshly initialised encoder/... (every leaf, with an error naming any one missing or of another shape; with
task.init_encoder_only=False, every leaf the two models share); the rest (the CTC head, the predictor) stays
initialised and the source's other leaves (its pre-training head) are dropped (train_lib.merge_pretrained).
task.freeze_encoder_steps > 0 zeroes the loaded encoder's gradients and updates for that many first updates
(optim.freeze_for_steps). data.train_fraction trains on a fixed labeled subset (inputs.train_source); the CMVN
statistics still come from the whole train split.

Evaluation (`ASRTask.evaluate_splits`, `--mode=eval`): the test splits decoded offline (full context) and online.
Online is truly streaming: the encoder runs chunk by chunk through its step API (models.acoustic.online_encode),
chunks of task.online_chunk_size encoder frames with task.online_left_chunks of left context, so no output reads audio
past its chunk and the front end's look-ahead; the table states that latency. The periodic evaluation during training
(`eval_step`) decodes offline and greedily: it is a progress signal, and the cheapest.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from speechfuse import audio, models, optim, parallel, train as train_lib
from speechfuse.data import inputs, pipeline
from speechfuse.eval import results
from speechfuse.losses import ctc as ctc_lib
from speechfuse.models import acoustic, encoders, ensemble
from speechfuse.text import factory

CMVN_FILE = "cmvn.json"
TOKENIZER_DIR = "tokenizer"
MODES = results.MODES  # ("offline", "online")


def default_config(name: str = "asr_ctc") -> ml_collections.ConfigDict:
  """config.task for "asr_ctc" / "asr_transducer"."""
  config = ml_collections.ConfigDict()
  config.name = name
  config.cmvn_utterances = 2000  # a seeded random sample of the training split gives the CMVN statistics
  # Online (streaming) evaluation: chunks of this many encoder frames (16 x 40 ms = 640 ms at x4 subsampling,
  # WeNet's usual choice) with this many chunks of left context (-1: all); 0 chunk frames: no online column.
  config.online_chunk_size = 16
  config.online_left_chunks = -1
  # Fine-tuning: variables exported by `launch/main.py --mode=export` (train.export_params) of a run whose model
  # shares this one's encoder (e.g. configs/ssl_hubert.py), loaded at state creation; None trains from scratch.
  config.init_from = ml_collections.config_dict.placeholder(str)
  config.init_encoder_only = True  # load encoder/... only; the rest (the pre-training head) is dropped
  # With init_from: the encoder's updates are zero for this many first updates (optim.freeze_for_steps).
  config.freeze_encoder_steps = 0
  # model.name="ctc_ensemble" (models.ensemble) only: one exported-variables path per member, whose encoder/...
  # loads into encoder_<i>/...; the members stay frozen for the whole run.
  config.init_members = ()
  if name == "asr_transducer":
    config.warm_step = 2000  # batches over which the simple / pruned loss blend warms up (icefall)
    config.simple_loss_scale = 0.5  # weight of the simple loss after warm-up (icefall)
    config.ctc_weight = 0.0  # auxiliary CTC loss weight (needs model.ctc_head)
    config.max_symbols_per_frame = 3  # greedy search's bound on symbols emitted per encoder frame
  # Decoding in evaluation (evaluate_splits, offline and online; results of other decodings than greedy go to
  # <workdir>/results/<decoding>/). CTC: "greedy" (fastest), "beam" (prefix beam search, as the OTF paper
  # reports), "beam_lm" (prefix beam search with the word LM below, on the host); transducer: "greedy", "beam"
  # (modified beam search, one symbol per frame, as k2SSL reports) or "ctc_greedy" (the auxiliary CTC head).
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
  if config.task.decoding in ("beam", "beam_lm"):
    settings["beam"] = config.task.beam
  if config.task.decoding == "beam_lm":
    settings.update(lm_path=config.task.lm_path, lm_weight=config.task.lm_weight,
                    word_insertion=config.task.word_insertion, lexicon=config.task.lexicon)
  return settings


def online_latency(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The online column's chunking and latency: {"chunk_frames", "left_chunks", "chunk_ms", "lookahead_ms"}, None
  without an online column (task.online_chunk_size 0)."""
  chunk = config.task.online_chunk_size
  if not chunk:
    return None
  chunk_ms, lookahead_ms = acoustic.latency_ms(config.model, chunk)
  return {"chunk_frames": chunk, "left_chunks": config.task.online_left_chunks, "chunk_ms": chunk_ms,
          "lookahead_ms": lookahead_ms}


def data_parallel_unit(config: ml_collections.ConfigDict) -> int:
  """Examples each global batch must be a multiple of: data-parallel devices x accumulation, and processes.

  The pipeline plans global batches and gives each process an equal contiguous slice (its batch_multiple is
  global), so this is also what every process's slice divides the data-parallel work by.
  """
  shape = parallel.mesh_shape(config.mesh, jax.device_count())
  rules = parallel.axis_rules(config.logical_axis_rules)
  data_parallel = math.prod(shape[axis] for axis in parallel.mesh.batch_axes(rules))
  return math.lcm(data_parallel * config.grad_accum_steps, jax.process_count())


def run_cmvn(workdir: str, train_source: Callable[[], Any], *, num_mel_bins: int,
             max_utterances: int) -> audio.CMVNStats:
  """The run's feature statistics: <workdir>/cmvn.json, computed from `train_source()` and saved on first use."""
  path = os.path.join(workdir, CMVN_FILE)
  if os.path.exists(path):
    return audio.CMVNStats.load(path)
  stats = inputs.feature_stats(train_source(), num_mel_bins=num_mel_bins, max_utterances=max_utterances)
  os.makedirs(workdir, exist_ok=True)
  stats.save(path)
  return stats


def check_run_assets(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
  """Raises FileNotFoundError (one line naming the file) unless `workdir` holds what evaluating its ASR model
  reads besides a checkpoint: the tokenizer, and the CMVN statistics for fbank encoders."""
  needed = [TOKENIZER_DIR] + ([CMVN_FILE] if acoustic.needs_cmvn(config.model) else [])
  for name in needed:
    path = os.path.join(os.fspath(workdir), name)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} is missing: evaluation reads the tokenizer and CMVN statistics its run "
                              "trained with")


class ASRTask(train_lib.Task):
  """What CTC and transducer training share: data, tokenizer, CMVN, model, evaluation loop.

  Subclasses give `decode_step(variables, batch, *, mode, method)`: a batch decoded offline or online (the encoder
  output from `_encode`), which `evaluate_splits` jits once per mode.
  """

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
    # The train split is opened only to make what the workdir lacks (an evaluation-only dataset has none).
    self.tokenizer = factory.build_tokenizer(
        config.tokenizer, lambda: inputs.train_source(config.data).metadata()["text"],  # the index: no audio read
        os.path.join(self.workdir, TOKENIZER_DIR))
    self.cmvn = None
    if acoustic.needs_cmvn(config.model):
      # Feature statistics from the whole split, labeled or not: the same as a pre-training run's (tasks.ssl).
      self.cmvn = run_cmvn(self.workdir, lambda: inputs.open_split(config.data, config.data.train_split),
                           num_mel_bins=config.model.frontend.num_mel_bins, max_utterances=config.task.cmvn_utterances)
    self.model = models.get_model(config.model, dtype=jnp.dtype(config.compute_dtype),
                                  vocab_size=self.tokenizer.vocab_size, cmvn=self.cmvn)
    self._check_members()
    self._check_decoding()
    self._check_online()
    self._pretrained = None  # {path: variables} read from config.task.init_from / init_members, once

  def _check_online(self) -> None:
    task = self.config.task
    if task.online_chunk_size < 0:
      raise ValueError(f"config.task.online_chunk_size={task.online_chunk_size} must be >= 0 (0: no online column)")
    if task.online_chunk_size and not encoders.streams(self.config.model.encoder):
      raise ValueError(f"config.task.online_chunk_size={task.online_chunk_size}: the "
                       f"{self.config.model.encoder.architecture} encoder does not stream"
                       + (" (set config.model.encoder.conv_context='chunk' or 'causal': a symmetric conv module "
                          "looks ahead in every block)" if "conv_context" in self.config.model.encoder else "")
                       + "; set config.task.online_chunk_size=0 for offline results only")

  def _check_decoding(self) -> None:
    task = self.config.task
    if task.decoding not in self.DECODINGS:
      raise ValueError(f"config.task.decoding={task.decoding!r} is unknown for {task.name!r}; choose from "
                       f"{self.DECODINGS}")
    if task.decoding in ("beam", "beam_lm") and task.beam < 1:
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
      self._pretrained = {path: train_lib.load_variables(path) for _, path, _, _ in sources}
    loaded = set()
    for label, path, prefix, source_prefix in sources:
      variables, report = train_lib.merge_pretrained(variables, self._pretrained[path], prefix,
                                                 source_prefix=source_prefix, source_name=path)
      loaded.update(report["loaded"])
      if first:  # init is traced more than once (shapes, then values): say it once
        logging.info("%s %s: loaded %d arrays, dropped %d (not in this model or not loaded)", label, path,
                     len(report["loaded"]), len(report["dropped"]))
        logging.debug("%s %s: loaded %s; dropped %s", label, path, ", ".join(report["loaded"]),
                      ", ".join(report["dropped"]) or "none")
    if first:
      initialised = [n for n in report["loaded"] + report["initialised"] if n not in loaded]
      logging.info("newly initialised: %d arrays (%s)", len(initialised), ", ".join(
          sorted({name.split("/")[1] for name in initialised if "/" in name})) or "none")
    return variables

  def wrap_optimizer(self, tx):
    if self.config.model.name == ensemble.NAME:
      return optim.freeze(tx, ensemble.is_member)  # members frozen for good
    steps = self.config.task.freeze_encoder_steps
    if steps <= 0 or not self.config.task.init_from:  # a random encoder is never frozen: the scratch baseline
      return tx
    return optim.freeze_for_steps(tx, steps, lambda path: bool(path) and getattr(path[0], "key", None) == "encoder")

  # Data.

  def split_input(self, split: str, *, shard_index: int, shard_count: int) -> train_lib.CheckpointableIterator:
    """One pass over the corpus split named `split` (e.g. "test_clean"), evaluation batches."""
    return pipeline.make_eval_iterator(inputs.open_split(self.config.data, split), self.tokenizer,
                                       self.data_config, shard_index=shard_index, shard_count=shard_count)

  def make_input(self, split: str, *, seed: int, shard_index: int,
                 shard_count: int) -> train_lib.CheckpointableIterator:
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

  def _encode(self, variables, batch, *, mode: str) -> tuple[jax.Array, jax.Array]:
    """The encoder output [B, T, D] and lengths [B] of a batch in evaluation, `mode` "offline" (full context) or
    "online" (chunk by chunk through the encoder's step, models.acoustic.online_encode)."""
    if mode == "offline":
      return self.model.apply(variables, batch["audio"], batch["audio_lengths"], method="encode")
    if mode != "online":
      raise ValueError(f"unknown decoding mode {mode!r}; choose from {MODES}")
    task = self.config.task
    return acoustic.online_encode(self.model, variables, batch["audio"], batch["audio_lengths"],
                                  chunk_size=task.online_chunk_size, num_left_chunks=task.online_left_chunks)

  @staticmethod
  def _average(per_utterance: jax.Array, batch: Mapping[str, jax.Array],
               feasible: jax.Array | None = None) -> tuple[train_lib.Mean, dict[str, train_lib.Mean]]:
    """The loss over real, feasible utterances (as a Mean), and the metrics that go with it. `feasible` [B] bool
    defaults to per_utterance < INFEASIBLE_LOSS."""
    if feasible is None:
      feasible = per_utterance < ctc_lib.INFEASIBLE_LOSS
    weights = batch["mask"] * feasible
    loss = train_lib.mean_of(per_utterance, weights)
    return loss, {"loss_per_token": train_lib.Mean(loss.total, (batch["label_lengths"] * weights).sum()),
                  "infeasible_fraction": train_lib.mean_of((~feasible).astype(jnp.float32), batch["mask"])}

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

  def eval_step(self, variables, batch):
    return self.decode_step(variables, batch, mode="offline", method="greedy")

  def evaluate_splits(self, variables: Mapping[str, Any], *, splits: Sequence[str] | None = None,
                      step: int | None = None, source: str = "") -> dict[str, Any]:
    """Decodes `splits` (default config.data.test_splits) offline and online (module docstring) and writes the
    per-utterance results and the table to results.results_dir(workdir, config.task.decoding).

    Args:
      variables: the model's variables (host arrays: train.latest_variables / load_variables).
      step, source: the checkpoint's step (None for exported variables) and path, recorded in the table.

    Returns:
      The results table (speechfuse.eval.results): {"step", "checkpoint", "online", "decoding", "splits": {split:
      {"offline": {"wer", "cer", "loss", "confidence", "utterances"}, "online": {...}}}}.
    """
    config = self.config
    mesh = parallel.create_mesh(config.mesh)
    rules = parallel.axis_rules(config.logical_axis_rules)
    latency = online_latency(config)
    modes = MODES if latency else MODES[:1]
    out_dir = results.results_dir(self.workdir, config.task.decoding)
    table = {"step": step, "checkpoint": source, "online": latency, "decoding": decoding_settings(config),
             "splits": {}}
    shard = {"shard_index": jax.process_index(), "shard_count": jax.process_count()}
    with parallel.sharding_context(mesh, rules):
      variables = parallel.put_replicated(dict(variables), mesh)
      # One jitted function per mode for every split: each compiles once per bucket shape.
      decoders = {mode: jax.jit(functools.partial(self.decode_step, mode=mode), out_shardings=parallel.replicated(mesh))
                  for mode in modes}
      for split in splits or tuple(config.data.test_splits):
        table["splits"][split] = {}
        for mode in modes:

          def eval_step(host_batch, decode=decoders[mode]):
            return jax.device_get(decode(variables, parallel.global_batch(host_batch, mesh, rules)))

          records = self.utterances(eval_step, self.split_input(split, **shard))
          figures = table["splits"][split][mode] = results.summarize(records)
          name = f"{split}.{mode}.jsonl" if jax.process_count() == 1 else f"{split}.{mode}.{jax.process_index()}.jsonl"
          results.write_jsonl(records, os.path.join(out_dir, name))
          logging.info("%s %s (%s): WER %.2f%% CER %.2f%% (%d utterances)", split, mode, config.task.decoding,
                       100 * figures["wer"], 100 * figures["cer"], figures["utterances"])
    if jax.process_index() == 0:
      results.write_table(table, out_dir)
    return table
