"""SSL pre-training step: k2SSL's CE loss against HuBERT's loss, step time and XLA peak memory, same batch and masks.

  python benchmarks/ssl_pretrain.py                          # base wav2vec2 and Conformer, 4 x 8 s, 4 timed steps
  python benchmarks/ssl_pretrain.py --backbones wav2vec2     # the HuBERT base backbone only
  python benchmarks/ssl_pretrain.py --size smoke --batch 2 --seconds 2 --steps 2   # quick look
  python benchmarks/ssl_pretrain.py --table2                 # k2SSL's Table II: its four rows, speed-up vs row 1
  python benchmarks/ssl_pretrain.py --table2 --size tiny --batch 2 --seconds 4 --steps 2

(The file is not called ssl.py: run as a script, its folder comes first on sys.path, and a benchmarks/ssl.py
would stand in for the standard library's `ssl`, which jax's dependencies import.)

Each row is the recipe's pre-training step (configs/ssl_hubert.py at --size with backbone=<b>, loss=<l>) built
from the real code: the model from `models.get_model` (models.ssl: span masking, the encoder, the head), the loss
of `tasks.ssl.SSLTask` (masked prediction over valid frames, plus the feature penalty for the waveform backbone),
stepped by the trainer's `train.step.make_train_step` (forward, backward, non-finite guard) with the recipe's
optimizer (`optim.make_optimizer`: clip to global norm 10, AdamW with its schedule), jitted with the state
donated. Only the dataset is synthetic: the task is built on the model without reading a corpus.
- HuBERT (the peer): final_proj Dense d_model -> 256, both sides L2-normalised, cosine similarity against all C
  label embeddings [C, 256] / 0.1, softmax cross-entropy; the label embeddings are trained.
- CE (k2SSL, after MelHuBERT): one Dense d_model -> C, / 0.1, softmax cross-entropy.
Same batch, same masks: both start from the same state.rng and take the same steps, so step t draws the same
mask key; the mask configuration (--mask_prob, the recipe's span length) is set equal for both (the recipes
differ: HuBERT 0.8, k2SSL 0.65).

The ratio we get: 1.00. CE is not measurably faster or lighter here (2-core CPU, 4 x 8 s, 100 classes):
  backbone   loss    s / step  CPU s / step  GFLOP / step  temp MiB  time, CPU time, temp, GFLOP / HuBERT
  wav2vec2   HuBERT  12.46     23.43         1432.0        6248.3
  wav2vec2   CE      12.92     22.84         1430.6        6247.8    1.037, 0.975, 0.9999, 0.9990
  conformer  HuBERT  10.04     10.07          769.3        2287.8
  conformer  CE      10.05     10.04          768.8        2287.3    1.001, 0.997, 0.9998, 0.9993
(the wall-time ratios move by a few percent either way between runs on a shared machine; the CPU-time ones less).
Why, when k2SSL reports CE as the faster, lighter loss: fairseq's HuBERT loss (hubert.py compute_pred /
compute_nce) expands the label embeddings against every scored frame, `negs = label_embs.unsqueeze(1).expand(-1,
N, -1)`, concatenates the positives and takes torch.cosine_similarity in float32, so it materialises [C + 1, N,
256] tensors (N masked frames; unmasked ones too when their weight is non-zero) and keeps them for the backward
pass: for HuBERT base's per-GPU batch (1.4M samples, 4,375 frames, about 55% masked) and k2SSL's 504 classes,
504 x 2,400 x 256 float32 values are 1.2 GB per copy. CE is one projection of the masked frames (gathered by
PyTorch) to the classes. Here the cosine scores are a normalisation and one [B, T, 256] x [C, 256] matmul
(losses.masked_prediction.hubert_loss): nothing of size C x N x 256 exists. With static shapes both heads run on
every frame (XLA cannot gather a data-dependent number of frames; the masked / unmasked weights select frames in
the loss), so what differs is the heads' work per frame: d * 256 + 256 * C multiply-adds for HuBERT (final_proj,
then the scores) against d * C for CE. At d = 768 and C = 100 that is 145,408 more for HuBERT per frame, x 1,596
frames x 3 (forward and backward) x 2 FLOP = 1.4 GFLOP: the difference in the GFLOP column, 0.1% of a step that
the encoder (and for wav2vec2 the CNN feature extractor) dominates. The [B, T, C] logits exist in both; HuBERT's
extra [B, T, 256] projections weigh 1.6 MB. The heads cost the same at C = 256 d / (d - 256) classes: 384 for
d = 768, 512 for the base Conformer's d = 512. With iteration 2's 500 (--iteration 2) XLA counts 1433.6 (CE)
against 1433.0 (HuBERT) GFLOP per wav2vec2 step and 769.8 for both on the Conformer; temp memory stays within
0.1%.

Memory is XLA's buffer assignment of the compiled step for this backend (compilation only): "temp" is the peak
of intermediate buffers, "total" adds arguments and outputs (the state is donated, so outputs alias it).
Time: both steps are compiled first, then run in turn (HuBERT then CE, then CE then HuBERT, ...), so that the
load of a shared machine weighs on both alike: --warmup steps each, then the median of --steps, each ended by
block_until_ready. "s / step" is wall time; "CPU s / step" the process's CPU time over the step (all threads),
which other processes' load disturbs less; the 1-minute load average is printed before and after.
Everything runs in --dtype (float32 by default: bfloat16 matmuls are emulated on a CPU). The batch is
benchmarks/asr.py's synthetic voiced audio, lengths in [80%, 100%] of --seconds, with random frame labels
(zero past each utterance's frames, as the input pipeline pads them).

--table2: the four rows of k2SSL's Table II (its speed-up in total GPU hours for the same 300 epochs of LibriSpeech
960 h, against row 1), those of benchmarks/ssl_memory.py (TABLE2_ROWS), timed as above on one batch:
  1 transformer / adamw / hubert        backbone=wav2vec2 (HuBERT base), AdamW after clipping to global norm 10
  2 transformer / scaled_adam / hubert  optimizer=scaled_adam (icefall's ScaledAdam + Eden, with its own clipping)
  3 transformer / scaled_adam / ce      loss=ce (k2SSL's linear head)
  4 zipformer / scaled_adam / ce        backbone=zipformer_waveform (k2SSL's Zipformer: the same extractor, 50 Hz)
Each row is its recipe at --size with its own optimizer; the heads share the recipes' class count (100; 500 with
--iteration 2) and all rows --mask_prob, so every row sees the same audio, labels and masks. "audio s per s" is the
batch's audio seconds over a step's wall time; "speed-up vs row 1" is row 1's time per step over the row's (wall,
CPU), which on one batch is the ratio of time per audio second: the GPU-hour ratio at an equal budget of audio hours
if every row processed its audio as this batch does. That is not all Table II counts. k2SSL's GPU-hour speed-up
also comes from the Zipformer fitting larger batches per GPU (8 GPUs instead of fairseq's 32) and from taking 225k
steps instead of 400k for the same 300 epochs; here one fixed batch is run on one device (on a CPU, with the
machine's cores), so only the compute per audio second differs: rows 2 and 3 differ from row 1 only by the
optimizer's update and the head, row 4 by the encoder.

The ratios we get: (measured by the lead engineer)
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from speechfuse import models, optim, train
from speechfuse.models import encoders
from speechfuse import nn as sf_nn
from speechfuse.config import load_config
from speechfuse.train import step as step_lib
from speechfuse.train.state import TrainState
from speechfuse.tasks import ssl as ssl_task

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import asr  # pylint: disable=g-import-not-at-top,wrong-import-position  # benchmarks/ is a folder of scripts

ROOT = pathlib.Path(__file__).resolve().parent.parent
MIB = 2**20
LOSSES = ("hubert", "ce")  # the peer first
# k2SSL's Table II, row 1 (the peer) first: (name, configs/ssl_hubert.py backbone, optimizer, loss), and the
# paper's speed-up in total GPU hours against row 1.
TABLE2_ROWS = (("transformer", "wav2vec2", "adamw", "hubert"),
               ("transformer", "wav2vec2", "scaled_adam", "hubert"),
               ("transformer", "wav2vec2", "scaled_adam", "ce"),
               ("zipformer", "zipformer_waveform", "scaled_adam", "ce"))
TABLE2_PAPER_SPEEDUP = (1.00, 1.48, 2.12, 3.53)
EDEN_STEPS_PER_EPOCH = 5760.0  # LibriSpeech 960 h in 600 s updates; the trainer derives it from the train split


class SyntheticSSLTask(ssl_task.SSLTask):
  """SSLTask's loss and init on its config's model, without the dataset, targets and CMVN file a run reads."""

  # pylint: disable-next=super-init-not-called
  def __init__(self, config: ml_collections.ConfigDict, cmvn):
    train.Task.__init__(self, config)  # SSLTask.__init__ would open the corpus and read its k-means targets
    self.grid = encoders.frame_grid(config.model.encoder, asr.SAMPLE_RATE)
    self.model = models.get_model(config.model, dtype=jnp.dtype(config.compute_dtype),
                                  num_classes=config.task.num_classes, head=config.task.loss, cmvn=cmvn)


def recipe(size: str, backbone: str, loss: str, args, optimizer: str = "adamw") -> ml_collections.ConfigDict:
  config = load_config(f"{ROOT / 'configs' / 'ssl_hubert.py'}:{size},backbone={backbone},loss={loss},"
                       f"iteration={args.iteration},optimizer={optimizer}")
  config.model.mask.mask_prob = args.mask_prob
  config.compute_dtype = args.dtype
  if config.optimizer.schedule == "eden":
    config.optimizer.eden_steps_per_epoch = EDEN_STEPS_PER_EPOCH  # the step time does not depend on it
  return config


def ssl_batch(args, frame_count, num_classes: int) -> dict:
  """asr.synthetic_batch's audio, with random frame_labels [B, frame_count(samples)] zero past each utterance."""
  batch = asr.synthetic_batch(args.batch, args.seconds, max_labels=1, vocab_size=2)
  rng = np.random.default_rng(1)
  frames = frame_count(batch["audio"].shape[1])
  labels = rng.integers(0, num_classes, (args.batch, frames))
  own = np.array([frame_count(int(n)) for n in batch["audio_lengths"]])
  labels[np.arange(frames)[None] >= own[:, None]] = 0
  return {"audio": batch["audio"], "audio_lengths": batch["audio_lengths"], "frame_labels": labels.astype(np.int32),
          "mask": batch["mask"]}


class Step:
  """The recipe's train step on `batch`, compiled, with its state; `run()` times one step."""

  def __init__(self, config: ml_collections.ConfigDict, batch: dict, cmvn):
    task = SyntheticSSLTask(config, cmvn)
    tx, _ = optim.make_optimizer(config.optimizer, total_steps=config.total_steps,
                                 max_grad_norm=config.max_grad_norm)
    tx = task.wrap_optimizer(tx)
    self.batch = jax.device_put(batch)
    variables = nn.unbox(jax.jit(task.init)(jax.random.PRNGKey(0), self.batch))
    params = variables.pop("params")
    zero = lambda: jnp.zeros((), jnp.int32)  # distinct buffers: the state is donated
    self.state = TrainState(step=zero(), params=params, opt_state=tx.init(params), extra=variables,
                            rng=jax.random.PRNGKey(1), nonfinite_run=zero(), nonfinite_total=zero())
    self.params = sf_nn.count_params(params)
    start = time.perf_counter()
    self.step = jax.jit(step_lib.make_train_step(task, tx, grad_accum_steps=1), donate_argnums=0).lower(
        self.state, self.batch).compile()
    self.compile_seconds = time.perf_counter() - start
    self.memory = self.step.memory_analysis()
    cost = self.step.cost_analysis()
    self.gflop = (cost[0] if isinstance(cost, list) else cost).get("flops", float("nan")) / 1e9
    self.seconds: list[float] = []
    self.cpu_seconds: list[float] = []
    self.metrics = None

  def run(self, timed: bool) -> None:
    start, cpu_start = time.perf_counter(), time.process_time()
    self.state, self.metrics = self.step(self.state, self.batch)
    jax.block_until_ready(self.state)
    if timed:
      self.seconds.append(time.perf_counter() - start)
      self.cpu_seconds.append(time.process_time() - cpu_start)


def measure(configs: dict[str, ml_collections.ConfigDict], batch: dict, cmvn, args) -> dict[str, dict]:
  """Compiles every config's step, then times them in turn (step i of each back to back, the order reversed
  every round), so that the load of a shared machine weighs on all alike. Per config (losses, or Table II's rows):
  wall and CPU seconds (medians), compile seconds, memory, flops, metrics."""
  steps = {name: Step(config, batch, cmvn) for name, config in configs.items()}
  for i in range(args.warmup + args.steps):
    for step in list(steps.values())[::(-1) ** i]:
      step.run(timed=i >= args.warmup)
  results = {}
  for name, step in steps.items():
    metrics = jax.device_get(step.metrics)
    if not math.isfinite(float(metrics["loss"])):
      raise FloatingPointError(f"{name} loss is {metrics['loss']}")
    memory = step.memory
    results[name] = {
        "params": step.params, "seconds": statistics.median(step.seconds),
        "cpu_seconds": statistics.median(step.cpu_seconds), "compile": step.compile_seconds,
        "temp": memory.temp_size_in_bytes,
        "total": memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes,
        "gflop": step.gflop, "loss": float(metrics["loss"]), "masked_fraction": float(metrics["masked_fraction"])}
  return results


def masked_fraction(results: dict[str, dict]) -> float:
  """The fraction of valid frames masked in the last step, which every measured step must share."""
  masked = {r["masked_fraction"] for r in results.values()}
  if len(masked) != 1:
    raise AssertionError(f"the steps saw different masks: masked fractions {masked}")
  return next(iter(masked))


def backbone_rows(backbone: str, args) -> tuple[list[list[str]], str]:
  configs = {loss: recipe(args.size, backbone, loss, args) for loss in LOSSES}
  peer = configs[LOSSES[0]]
  frame_count = encoders.frame_grid(peer.model.encoder, asr.SAMPLE_RATE).frame_count
  batch = ssl_batch(args, frame_count, peer.task.num_classes)
  cmvn = asr.cmvn_of(batch, peer.model.frontend.num_mel_bins) if backbone == "conformer" else None
  before = asr.load_average()
  results = measure(configs, batch, cmvn, args)
  load = f"{before} / {asr.load_average()}"
  for loss, result in results.items():
    print(f"  {backbone} / {loss}: {result['seconds']:.3f} s/step, temp {result['temp'] / MIB:.0f} MiB, "
          f"loss {result['loss']:.2f}", file=sys.stderr)
  masked = masked_fraction(results)
  reference = results[LOSSES[0]]
  rows = []
  for loss, result in results.items():
    rows.append([backbone, loss, f"{result['params']:,}", f"{result['seconds']:.2f}", f"{result['cpu_seconds']:.2f}",
                 f"{result['compile']:.0f}", f"{result['gflop']:.1f}", f"{result['temp'] / MIB:.1f}",
                 f"{result['total'] / MIB:.1f}", f"{result['seconds'] / reference['seconds']:.3f}",
                 f"{result['cpu_seconds'] / reference['cpu_seconds']:.3f}",
                 f"{result['temp'] / reference['temp']:.4f}", f"{result['gflop'] / reference['gflop']:.4f}"])
  encoder = peer.model.encoder
  frames = frame_count(batch["audio"].shape[1])
  note = (f"{backbone}: {encoder.num_blocks} blocks x d {encoder.d_model}, {peer.task.num_classes} classes, "
          f"{frames} encoder frames per row, {masked:.1%} of them masked in the last step "
          f"(mask_prob {args.mask_prob}, span {peer.model.mask.mask_length}); 1-minute load average before / after "
          f"timing: {load}")
  return rows, note


def table2(args) -> None:
  """Times k2SSL's Table II rows on one batch and prints their table, the paper's speed-ups beside the measured."""
  configs = {f"{name} / {optimizer} / {loss}": recipe(args.size, backbone, loss, args, optimizer)
             for name, backbone, optimizer, loss in TABLE2_ROWS}
  grids = {encoders.frame_grid(c.model.encoder, asr.SAMPLE_RATE).name for c in configs.values()}
  classes = {c.task.num_classes for c in configs.values()}
  if len(grids) != 1 or len(classes) != 1:
    raise ValueError(f"Table II's rows need one batch: frame grids {grids}, classes {classes}")
  peer = next(iter(configs.values()))
  frame_count = encoders.frame_grid(peer.model.encoder, asr.SAMPLE_RATE).frame_count
  batch = ssl_batch(args, frame_count, peer.task.num_classes)
  before = asr.load_average()
  results = measure(configs, batch, None, args)
  load = f"{before} / {asr.load_average()}"
  masked = masked_fraction(results)
  audio_seconds = float(np.sum(batch["audio_lengths"])) / asr.SAMPLE_RATE
  reference = next(iter(results.values()))
  rows = []
  for i, ((name, _, optimizer, loss), (label, result), paper) in enumerate(
      zip(TABLE2_ROWS, results.items(), TABLE2_PAPER_SPEEDUP), 1):
    print(f"  {label}: {result['seconds']:.3f} s/step, temp {result['temp'] / MIB:.0f} MiB, "
          f"loss {result['loss']:.2f}", file=sys.stderr)
    rows.append([str(i), name, optimizer, loss, f"{result['params']:,}", f"{result['seconds']:.2f}",
                 f"{result['cpu_seconds']:.2f}", f"{result['gflop']:.1f}", f"{result['temp'] / MIB:.1f}",
                 f"{audio_seconds / result['seconds']:.2f}", f"{reference['seconds'] / result['seconds']:.2f}",
                 f"{reference['cpu_seconds'] / result['cpu_seconds']:.2f}", f"{paper:.2f}"])
  header = ["row", "backbone", "optimizer", "loss", "parameters", "s / step", "CPU s / step", "GFLOP / step",
            "temp MiB", "audio s per s", "speed-up vs row 1", "CPU speed-up vs row 1", "paper (GPU hours)"]
  print(f"k2SSL Table II rows: SSL pre-training step (forward + loss + backward + the row's optimizer), "
        f"configs/ssl_hubert.py:{args.size}, batch {args.batch} x <= {args.seconds:g} s ({audio_seconds:.1f} s of "
        f"audio), {args.dtype}, {args.steps} timed steps after {args.warmup} warm-up, jax {jax.__version__} "
        f"({jax.default_backend()}, {os.cpu_count()} cores); speed-up = row 1's time per step / the row's")
  print()
  print(f"- {peer.task.num_classes} classes, {frame_count(batch['audio'].shape[1])} encoder frames per utterance, "
        f"{masked:.1%} of them masked in the last step (mask_prob {args.mask_prob}); 1-minute load average before / "
        f"after timing: {load}")
  print()
  print(asr.markdown_table(header, rows, "llllrrrrrrrrr"))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="base", help="configs/ssl_hubert.py size (smoke, tiny, base, large)")
  parser.add_argument("--backbones", default="wav2vec2,conformer", help="comma-separated: wav2vec2, conformer")
  parser.add_argument("--batch", type=int, default=4, help="utterances per batch")
  parser.add_argument("--seconds", type=float, default=8.0, help="longest utterance of the batch")
  parser.add_argument("--steps", type=int, default=4, help="timed steps per loss (median reported)")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (after compiling)")
  parser.add_argument("--iteration", type=int, default=1, choices=(1, 2), help="targets: 1 = 100 classes, 2 = 500")
  parser.add_argument("--mask_prob", type=float, default=0.8, help="the same for every loss (or Table II row)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
  parser.add_argument("--table2", action="store_true", help="time k2SSL's Table II rows instead (--backbones unused)")
  args = parser.parse_args()
  if args.table2:
    table2(args)
    return
  rows, notes = [], []
  for backbone in (b.strip() for b in args.backbones.split(",") if b.strip()):
    backbone_rows_, note = backbone_rows(backbone, args)
    rows += backbone_rows_
    notes.append(note)
  header = ["backbone", "loss", "parameters", "s / step", "CPU s / step", "compile s", "GFLOP / step", "temp MiB",
            "total MiB", "time / HuBERT", "CPU time / HuBERT", "temp / HuBERT", "GFLOP / HuBERT"]
  print(f"SSL pre-training step (forward + loss + backward + clip + AdamW), configs/ssl_hubert.py:{args.size}, "
        f"batch {args.batch} x <= {args.seconds:g} s, {args.dtype}, {args.steps} timed steps after {args.warmup} "
        f"warm-up, jax {jax.__version__} ({jax.default_backend()}, {os.cpu_count()} cores); ratios divide by the "
        "HuBERT loss's row")
  print()
  for note in notes:
    print(f"- {note}")
  print()
  print(asr.markdown_table(header, rows, "llrrrrrrrrrrr"))


if __name__ == "__main__":
  main()
