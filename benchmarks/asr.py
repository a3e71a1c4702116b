"""Conformer-CTC training throughput against PyTorch, and the RNN-T loss memory table, in one command.

  python benchmarks/asr.py                               # tiny and base, 10 timed steps each, then RNN-T memory
  python benchmarks/asr.py --sizes tiny --steps 3 --rnnt=false   # quick look

(a) Training throughput, in seconds of audio per second of wall time (real, unpadded audio of the batch divided
by the median time of one step), of the recipe's Conformer-CTC (configs/asr_conformer_ctc.py at each size)
against a PyTorch model of the same architecture and size, on the same synthetic batch, in this process:
- "speechfuse, recipe": the recipe's model built as the task builds it (`ctc.from_config`: on-device Kaldi
  fbank + global CMVN, SpecAugment, Conv2d x4 subsampling, Conformer with BatchNorm conv modules, dynamic
  chunk training, dropout 0.1, CTC head), stepped by the trainer's own `train.step.make_train_step` on
  `CTCTask.loss` (forward, `speechfuse.losses.ctc_loss` averaged over utterances, backward, the non-finite
  guard) and the recipe's optimizer (`optim.make_optimizer`: clip to global norm 5, AdamW with its schedule);
  one jitted call with the state donated. Its input is int16 waveforms, so the front end and SpecAugment are
  inside the timed step.
- "speechfuse, features in": the same step with the front end and SpecAugment taken out; it reads the
  precomputed, normalised fbank features that PyTorch reads. This is the like-for-like row.
- "PyTorch": Conv2d x4 subsampling written here (the same two 3x3 stride-2 convs + ReLU + linear, x sqrt(d)),
  then transformers' `Wav2Vec2ConformerEncoder` (position_embeddings_type "relative", i.e. rel-pos MHSA with
  pos_bias_u / pos_bias_v; swish; macaron FFNs; conv module with GLU, depthwise kernel 31, BatchNorm; layerdrop
  0; dropout 0.1 on FFN hidden, branch and conv outputs; its unused positional conv embedding removed), a linear
  CTC head, log_softmax, `torch.nn.functional.ctc_loss` (mean over utterances of the per-utterance sum),
  backward, `clip_grad_norm_(5)` and `torch.optim.AdamW` with the same hyper-parameters and no decay on
  vectors; eager mode (no torch.compile), attention through transformers' SDPA path by default. It is fed the
  features computed once on the host by our front end (the model's own fbank + CMVN, jitted), so its step has
  no feature extraction and no SpecAugment, and it attends with a padding mask only: transformers' encoder
  takes no chunk mask, and its attention is dense either way, so a chunk mask would cost it nothing.
Differences that stay: transformers' conv module has no biases and its encoder a final LayerNorm (parameter
counts are printed for both; they agree within 0.1%); our BatchNorm leaves padding out of its statistics.
Everything runs in float32 on the CPU (the base recipe's bfloat16 is for accelerators). XLA uses every core;
PyTorch runs once per --torch_threads value (default: all cores, then 1, since OpenMP's spinning threads slow
down badly on a CPU that other processes share) and the ratio divides by its fastest row. Each variant runs
--warmup steps first (JAX compiles before them; compile time reported apart), then --steps timed steps, each
ended by block_until_ready for JAX; the table gives the median.

(b) XLA's compiled memory analysis of full vs pruned RNN-T loss + gradient (B=8, T=500, U=100, V=500), the table
of benchmarks/rnnt_memory.py, called from there.

The batch: --batch utterances of at most --seconds of 16 kHz audio (a synthetic voiced signal; the speed of
neither model depends on content), lengths drawn in [80%, 100%] of that, labels of up to 15 tokens per second
with a character tokenizer or 5 with a subword one (in the recipe's vocabulary), lengths drawn in [80%, 100%]
of that, ids drawn uniformly. Machine load (1-minute load average) is printed before and
after each timing; other processes on the machine slow both sides alike only if the load stays even.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import statistics
import sys
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from speechfuse import audio as audio_lib
from speechfuse import nn as sf_nn
from speechfuse import optim, train
from speechfuse.config import load_config, recipe_path
from speechfuse.models import acoustic, ctc, encoders
from speechfuse.text import CharTokenizer
from speechfuse.train import step as step_lib
from speechfuse.train.state import TrainState
from speechfuse.tasks import asr_ctc

ROOT = pathlib.Path(__file__).resolve().parent.parent
SAMPLE_RATE = 16000
DEFAULT_BATCH = {"smoke": 8, "tiny": 8, "base": 4, "large": 4}
LABELS_PER_SECOND = {"char": 15.0, "unigram": 5.0}  # characters / SentencePiece pieces in read English


def load_recipe(size: str) -> ml_collections.ConfigDict:
  """configs/asr_conformer_ctc.py at `size`."""
  return load_config(f"{recipe_path('asr_conformer_ctc')}:{size}")


def markdown_table(header: list[str], rows: list[list[str]], align: str) -> str:
  """A Markdown table; align holds one of "l" / "r" per column."""
  rule = ["---:" if a == "r" else "---" for a in align]
  return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule, *rows])


def load_average() -> str:
  return "%.2f" % os.getloadavg()[0]


# The batch.


def synthetic_batch(batch: int, seconds: float, max_labels: int, vocab_size: int, seed: int = 0) -> dict:
  """Host arrays: audio int16 [B, S] (zero past audio_lengths), audio_lengths, labels [B, U], label_lengths, mask."""
  rng = np.random.default_rng(seed)
  samples = int(seconds * SAMPLE_RATE)
  audio_lengths = rng.integers(int(0.8 * samples), samples + 1, batch)
  t = np.arange(samples) / SAMPLE_RATE
  audio = np.zeros((batch, samples), np.int16)
  for i, length in enumerate(audio_lengths):
    pitch = rng.uniform(90, 220) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voiced = 3000 * sum(np.sin(k * phase) / k for k in range(1, 12)) + 30 * rng.standard_normal(samples)
    audio[i, :length] = np.round(voiced[:length]).clip(-32768, 32767)
  label_lengths = rng.integers(int(0.8 * max_labels), max_labels + 1, batch)
  labels = rng.integers(1, vocab_size, (batch, max_labels))
  labels[np.arange(max_labels)[None] >= label_lengths[:, None]] = 0
  return {"audio": audio, "audio_lengths": audio_lengths.astype(np.int32), "labels": labels.astype(np.int32),
          "label_lengths": label_lengths.astype(np.int32), "mask": np.ones(batch, np.float32)}


def cmvn_of(batch: dict, num_mel_bins: int) -> audio_lib.CMVNStats:
  """Global CMVN statistics of the batch's own fbank frames (the task computes them from the training split)."""
  feats, lengths = jax.jit(lambda a, n: audio_lib.fbank(a.astype(jnp.float32), SAMPLE_RATE, num_mel_bins, lengths=n))(
      batch["audio"], batch["audio_lengths"])
  feats, lengths = np.asarray(feats, np.float64), np.asarray(lengths)
  valid = np.arange(feats.shape[1])[None] < lengths[:, None]
  frames = feats[valid]
  return audio_lib.CMVNStats(frames.sum(0), (frames**2).sum(0), int(valid.sum()))


class FeaturesIn(nn.Module):
  """Stands in for the front end when the batch's "audio" already holds normalised features [B, T, mel]."""

  def __call__(self, features, lengths, deterministic=True):
    del deterministic
    return features, lengths


# speechfuse.


class SyntheticCTCTask(asr_ctc.CTCTask):
  """CTCTask's loss and init on a given model, without the corpus, tokenizer and CMVN files a run reads."""

  # pylint: disable-next=super-init-not-called
  def __init__(self, config: ml_collections.ConfigDict, model: nn.Module, vocab_size: int):
    train.Task.__init__(self, config)  # ASRTask.__init__ would build the tokenizer and CMVN from a corpus
    self.model = model
    self.tokenizer = types.SimpleNamespace(blank_id=0, vocab_size=vocab_size)


def time_speechfuse(config, model, vocab_size: int, batch: dict, warmup: int, steps: int) -> dict:
  """Trains `model` on `batch` with the trainer's step; seconds per step (median), compile time, params."""
  task = SyntheticCTCTask(config, model, vocab_size)
  tx, _ = optim.make_optimizer(config.optimizer, total_steps=config.total_steps, max_grad_norm=config.max_grad_norm)
  device_batch = jax.device_put({k: v for k, v in batch.items()})
  variables = nn.unbox(jax.jit(task.init)(jax.random.PRNGKey(0), device_batch))
  params = variables.pop("params")
  zero = lambda: jnp.zeros((), jnp.int32)  # distinct buffers: the state is donated
  state = TrainState(step=zero(), params=params, opt_state=tx.init(params), extra=variables,
                     rng=jax.random.PRNGKey(1), nonfinite_run=zero(), nonfinite_total=zero())
  num_params = sf_nn.count_params(params)
  start = time.perf_counter()
  train_step = jax.jit(step_lib.make_train_step(task, tx, grad_accum_steps=1), donate_argnums=0).lower(
      state, device_batch).compile()
  compile_seconds = time.perf_counter() - start
  for _ in range(warmup):
    state, metrics = train_step(state, device_batch)
  jax.block_until_ready(state)
  seconds = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = train_step(state, device_batch)
    jax.block_until_ready(state)
    seconds.append(time.perf_counter() - start)
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    raise FloatingPointError(f"speechfuse loss is {loss}")
  return {"params": num_params, "seconds": statistics.median(seconds), "compile": compile_seconds, "loss": loss}


# PyTorch.


def torch_model(encoder_config: ml_collections.ConfigDict, vocab_size: int, num_mel_bins: int, attention: str):
  """Conv2d x4 subsampling + transformers' Wav2Vec2ConformerEncoder + CTC head, sized like `encoder_config`."""
  # pylint: disable=g-import-not-at-top  # the `convert` extra; only table (a) needs it
  import torch
  from transformers import Wav2Vec2ConformerConfig
  from transformers.models.wav2vec2_conformer import modeling_wav2vec2_conformer as hf
  # pylint: enable=g-import-not-at-top

  d = encoder_config.d_model
  if encoder_config.subsampling != "conv2d" or encoder_config.subsampling_factor != 4:
    raise ValueError("the PyTorch model has conv2d x4 subsampling only")
  hf_config = Wav2Vec2ConformerConfig(
      hidden_size=d, num_hidden_layers=encoder_config.num_blocks, num_attention_heads=encoder_config.num_heads,
      intermediate_size=encoder_config.ffn_dim, conv_depthwise_kernel_size=encoder_config.conv_kernel,
      position_embeddings_type="relative", hidden_act="swish", hidden_dropout=encoder_config.dropout_rate,
      activation_dropout=encoder_config.dropout_rate, conformer_conv_dropout=encoder_config.dropout_rate,
      # attention_dropout is both the attention-probability and the MHSA branch dropout there; ours has 0 / 0.1.
      attention_dropout=encoder_config.attention_dropout_rate, layerdrop=0.0, layer_norm_eps=1e-5,
      attn_implementation=attention)

  class ConformerCTC(torch.nn.Module):
    """features [B, T, mel], lengths [B] -> (log_probs [B, T', vocab], lengths' [B])."""

    def __init__(self):
      super().__init__()
      self.subsampling = torch.nn.Sequential(torch.nn.Conv2d(1, d, 3, 2), torch.nn.ReLU(),
                                             torch.nn.Conv2d(d, d, 3, 2), torch.nn.ReLU())
      self.proj = torch.nn.Linear(d * sf_nn.subsampled_length(num_mel_bins), d)
      self.encoder = hf.Wav2Vec2ConformerEncoder(hf_config)
      self.encoder.pos_conv_embed = None  # built but never called in forward with relative positions
      self.head = torch.nn.Linear(d, vocab_size)

    def forward(self, features, lengths):
      x = self.subsampling(features[:, None])  # [B, C, T', F']
      b, c, t, f = x.shape
      x = self.proj(x.transpose(1, 2).reshape(b, t, c * f)) * math.sqrt(d)
      lengths = ((lengths - 1) // 2 - 1) // 2
      valid = torch.arange(t)[None] < lengths[:, None]
      x = self.encoder(x, attention_mask=valid).last_hidden_state
      return torch.log_softmax(self.head(x), dim=-1), lengths

  return ConformerCTC()


def time_torch(config, vocab_size: int, features: np.ndarray, frame_lengths: np.ndarray, batch: dict,
               attention: str, threads: int, warmup: int, steps: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = torch_model(config.model.encoder, vocab_size, features.shape[-1], attention).train()
  params = list(model.parameters())
  opt = config.optimizer
  groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": opt.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
  optimizer = torch.optim.AdamW(groups, lr=opt.learning_rate, betas=(opt.b1, opt.b2), eps=opt.eps)
  x = torch.from_numpy(np.array(features, np.float32))  # a writable copy
  lengths = torch.from_numpy(frame_lengths.astype(np.int64))
  labels = torch.from_numpy(batch["labels"].astype(np.int64))
  label_lengths = torch.from_numpy(batch["label_lengths"].astype(np.int64))

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    log_probs, out_lengths = model(x, lengths)
    per_utterance = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), labels, out_lengths, label_lengths,
                                                 blank=0, reduction="none", zero_infinity=True)
    loss = per_utterance.mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    optimizer.step()
    return float(loss.detach())

  for _ in range(warmup):
    train_step()
  seconds = []
  for _ in range(steps):
    start = time.perf_counter()
    loss = train_step()
    seconds.append(time.perf_counter() - start)
  if not math.isfinite(loss):
    raise FloatingPointError(f"PyTorch loss is {loss}")
  return {"params": sum(p.numel() for p in params), "seconds": statistics.median(seconds), "compile": None,
          "loss": loss}


# The tables.


def throughput_rows(size: str, args) -> tuple[list[list[str]], str]:
  config = load_recipe(size)
  tokenizer_kind = config.tokenizer.kind
  vocab_size = CharTokenizer().vocab_size if tokenizer_kind == "char" else config.tokenizer.vocab_size
  batch_size = args.batch.get(size, DEFAULT_BATCH.get(size, 4))
  max_labels = int(round(args.seconds * LABELS_PER_SECOND.get(tokenizer_kind, 5.0)))
  batch = synthetic_batch(batch_size, args.seconds, max_labels, vocab_size)
  audio_seconds = batch["audio_lengths"].sum() / SAMPLE_RATE
  num_mel_bins = config.model.frontend.num_mel_bins
  cmvn = cmvn_of(batch, num_mel_bins)
  dtype = jnp.float32

  recipe_model = ctc.from_config(config.model, dtype, vocab_size=vocab_size, cmvn=cmvn)
  # The recipe's front end, applied once (deterministic: no dither) to make the features both others read.
  frontend = acoustic.make_frontend(config.model, cmvn)
  features, frame_lengths = jax.jit(lambda a, n: frontend.apply({}, a, n, deterministic=True))(
      batch["audio"], batch["audio_lengths"])
  features, frame_lengths = np.asarray(features, np.float32), np.asarray(frame_lengths, np.int32)
  features_model = ctc.CTCModel(frontend=FeaturesIn(), spec_augment=acoustic.SpecAugment(enabled=False),
                                encoder=encoders.make_encoder(config.model.encoder, dtype), vocab_size=vocab_size,
                                dtype=dtype)
  features_batch = {**batch, "audio": features, "audio_lengths": frame_lengths}

  results = []
  if "recipe" in args.variants:
    results.append(("speechfuse, recipe", f"int16 [{batch_size}, {batch['audio'].shape[1]}]",
                    lambda: time_speechfuse(config, recipe_model, vocab_size, batch, args.warmup, args.steps)))
  results.append(("speechfuse, features in", f"fbank [{batch_size}, {features.shape[1]}, {num_mel_bins}]",
                   lambda: time_speechfuse(config, features_model, vocab_size, features_batch, args.warmup,
                                           args.steps)))
  for threads in args.torch_threads:
    results.append((f"PyTorch (transformers, {args.torch_attention}), {threads} thread{'s' * (threads > 1)}",
                    f"fbank [{batch_size}, {features.shape[1]}, {num_mel_bins}]",
                    lambda threads=threads: time_torch(config, vocab_size, features, frame_lengths, batch,
                                                       args.torch_attention, threads, args.warmup, args.steps)))
  measured = []
  for name, inputs, run in results:
    before = load_average()
    result = run()
    measured.append((name, inputs, result, before, load_average()))
    print(f"  {size} / {name}: {result['seconds']:.3f} s/step, loss {result['loss']:.1f}", file=sys.stderr)
  # The ratio is against PyTorch's fastest thread setting: the most favourable figure for it.
  torch_seconds = min(r["seconds"] for name, _, r, _, _ in measured if name.startswith("PyTorch"))
  rows = []
  for name, inputs, result, before, after in measured:
    rate = audio_seconds / result["seconds"]
    ratio = torch_seconds / result["seconds"]
    compile_cell = "-" if result["compile"] is None else f"{result['compile']:.1f}"
    rows.append([size, name, f"{result['params']:,}", inputs, f"{result['seconds']:.3f}", compile_cell,
                 f"{rate:.1f}", f"{ratio:.2f}", f"{before} / {after}"])
  note = (f"{size}: batch {batch_size} x <= {args.seconds:g} s ({audio_seconds:.1f} s of real audio), labels <= "
          f"{max_labels} ({tokenizer_kind}, vocabulary {vocab_size}), {config.model.encoder.num_blocks} blocks x "
          f"d {config.model.encoder.d_model}, {config.model.encoder.num_heads} heads, FFN "
          f"{config.model.encoder.ffn_dim}, conv kernel {config.model.encoder.conv_kernel}")
  return rows, note


def throughput_table(args) -> str:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  rows, notes = [], []
  for size in args.sizes:
    size_rows, note = throughput_rows(size, args)
    rows += size_rows
    notes.append(note)
  header = ["size", "implementation", "parameters", "step input", "s / step (median)", "compile s",
            "audio s / s", "ours / PyTorch", "load before / after"]
  lines = [f"Conformer-CTC training step (forward + CTC + backward + clip + AdamW), float32, "
           f"{args.steps} timed steps after {args.warmup} warm-up, jax {jax.__version__} "
           f"({jax.default_backend()}, {os.cpu_count()} cores), torch {torch.__version__}, "
           f"transformers {transformers.__version__}; 'ours / PyTorch' divides by PyTorch's fastest row", ""]
  lines += [f"- {note}" for note in notes]
  lines += ["", markdown_table(header, rows, "llrlrrrrl")]
  return "\n".join(lines)


def rnnt_table() -> str:
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  import rnnt_memory  # pylint: disable=g-import-not-at-top  # benchmarks/ is a folder of scripts, not a package

  return rnnt_memory.memory_table(batch=8, frames=500, max_labels=100, vocab=500, dim=256, s_range=5,
                                  dtype=jnp.float32)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="tiny,base", help="recipe sizes, comma-separated (smoke, tiny, base, large)")
  parser.add_argument("--steps", type=int, default=10, help="timed steps per implementation (median reported)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (JAX compiles before these)")
  parser.add_argument("--seconds", type=float, default=10.0, help="longest utterance of the batch")
  parser.add_argument("--batch", default="", help="per-size batch overrides, e.g. 'tiny=8,base=4' (defaults "
                      + ", ".join(f"{k}={v}" for k, v in DEFAULT_BATCH.items()) + ")")
  parser.add_argument("--torch_threads", default=f"{os.cpu_count()},1",
                      help="torch.set_num_threads values, one PyTorch row each (default: all cores, then 1)")
  parser.add_argument("--torch_attention", default="sdpa", choices=("sdpa", "eager"),
                      help="transformers' attention implementation")
  parser.add_argument("--variants", default="recipe,features", help="speechfuse rows: 'recipe,features' or 'features'")
  parser.add_argument("--asr", default="true", choices=("true", "false"), help="print table (a)")
  parser.add_argument("--rnnt", default="true", choices=("true", "false"), help="print table (b)")
  args = parser.parse_args()
  args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
  args.batch = {k.strip(): int(v) for k, v in (item.split("=") for item in args.batch.split(",") if item.strip())}
  args.variants = set(args.variants.split(","))
  args.torch_threads = [int(t) for t in args.torch_threads.split(",")]
  print(f"load average at start: {' '.join('%.2f' % x for x in os.getloadavg())}")
  if args.asr == "true":
    print()
    print(throughput_table(args))
  if args.rnnt == "true":
    print()
    print(rnnt_table())
  print()
  print(f"load average at end: {' '.join('%.2f' % x for x in os.getloadavg())}")


if __name__ == "__main__":
  main()
