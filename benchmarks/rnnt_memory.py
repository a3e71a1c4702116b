"""Memory of full vs pruned RNN-T (loss + gradient, joiner included), from XLA's compiled memory analysis.

    python benchmarks/rnnt_memory.py                 # B=8, T=500, U=100, V=500, s_range 5: compile only
    python benchmarks/rnnt_memory.py --time_batch 2  # also times one step of each at B=2, T=100, U=20

Both variants differentiate the whole objective w.r.t. the joiner's parameters and its inputs (encoder and
prediction-network outputs [B, T, D] and [B, U+1, D]), so the joiner activations and logits count:
- full:   logits = joiner(enc[:, :, None] + pred[:, None]) on [B, T, U+1, V], then `rnnt_loss`;
- pruned: icefall's recipe, `pruned_rnnt_loss` = simple loss of linear projections to [B, T, V] and
  [B, U+1, V], prune ranges, joiner on [B, T, s_range, V], pruned loss; objective 0.5 * simple + pruned.
The joiner is tanh(enc + pred) @ W, icefall's Joiner after its input projections. Numbers are XLA's
buffer assignment for the current backend (compilation only, nothing is allocated): "temp" is the peak of
intermediate buffers, "total" adds arguments and outputs.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from speechfuse.losses import pruned_rnnt_loss, rnnt_loss

MIB = 2**20


def joiner(w_out: jax.Array, enc: jax.Array, pred: jax.Array) -> jax.Array:
  """[..., D] x 2 -> logits [..., V]."""
  return jnp.tanh(enc + pred) @ w_out


def full_objective(params, enc, pred, logit_lengths, labels, label_lengths):
  logits = joiner(params["w_out"], enc[:, :, None], pred[:, None])  # [B, T, U+1, V]
  return rnnt_loss(logits, logit_lengths, labels, label_lengths).sum()


def pruned_objective(params, enc, pred, logit_lengths, labels, label_lengths, *, s_range):
  am, lm = enc @ params["simple_am"], pred @ params["simple_lm"]  # [B, T, V], [B, U+1, V]
  pruned_loss, simple_loss = pruned_rnnt_loss(
      am, lm, lambda e, p: joiner(params["w_out"], e, p), logit_lengths, labels, label_lengths,
      joiner_inputs=(enc, pred), s_range=s_range)
  return (0.5 * simple_loss + pruned_loss).sum()


def make_inputs(batch: int, frames: int, max_labels: int, vocab: int, dim: int, dtype, seed: int = 0):
  rng = np.random.default_rng(seed)
  params = {name: jnp.asarray(rng.standard_normal((dim, vocab)) / np.sqrt(dim), dtype)
            for name in ("w_out", "simple_am", "simple_lm")}
  enc = jnp.asarray(rng.standard_normal((batch, frames, dim)), dtype)
  pred = jnp.asarray(rng.standard_normal((batch, max_labels + 1, dim)), dtype)
  logit_lengths = jnp.asarray(rng.integers(frames * 3 // 4, frames + 1, batch).clip(max=frames), jnp.int32)
  label_lengths = jnp.asarray(rng.integers(max_labels // 2, max_labels + 1, batch), jnp.int32)
  labels = jnp.asarray(rng.integers(1, vocab, (batch, max_labels)), jnp.int32)
  return params, enc, pred, logit_lengths, labels, label_lengths


def compiled_steps(inputs, max_labels: int, s_range: int):
  """[(variant, joiner rows per frame, compiled value_and_grad w.r.t. (params, enc, pred))], full first."""
  variants = [("full", max_labels + 1, full_objective),
              (f"pruned (s_range {s_range})", s_range, lambda *a: pruned_objective(*a, s_range=s_range))]
  return [(name, rows, jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2))).lower(*inputs).compile())
          for name, rows, fn in variants]


def memory_table(batch, frames, max_labels, vocab, dim, s_range, dtype) -> str:
  shapes = jax.eval_shape(lambda: make_inputs(batch, frames, max_labels, vocab, dim, dtype))
  lines = [f"RNN-T loss + gradient, B={batch} T={frames} U={max_labels} V={vocab} D={dim} "
           f"{jnp.dtype(dtype).name}, backend {jax.default_backend()}", "",
           "| variant | joiner logits | arguments MiB | temp (peak) MiB | outputs MiB | total MiB |",
           "|---|---|---:|---:|---:|---:|"]
  temps, totals = [], []
  for name, rows, step in compiled_steps(shapes, max_labels, s_range):
    memory = step.memory_analysis()
    temps.append(memory.temp_size_in_bytes)
    totals.append(memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes)
    lines.append(f"| {name} | [{batch}, {frames}, {rows}, {vocab}] | "
                 f"{memory.argument_size_in_bytes / MIB:.1f} | {temps[-1] / MIB:.1f} | "
                 f"{memory.output_size_in_bytes / MIB:.1f} | {totals[-1] / MIB:.1f} |")
  lines.append(f"| ratio full / pruned | | | {temps[0] / temps[1]:.1f}x | | {totals[0] / totals[1]:.1f}x |")
  return "\n".join(lines)


def time_table(batch, frames, max_labels, vocab, dim, s_range, dtype, repeats: int = 3) -> str:
  inputs = make_inputs(batch, frames, max_labels, vocab, dim, dtype)
  lines = [f"One step (loss + gradient), B={batch} T={frames} U={max_labels} V={vocab} D={dim}, "
           f"best of {repeats}", "", "| variant | ms |", "|---|---:|"]
  for name, _, step in compiled_steps(inputs, max_labels, s_range):
    jax.block_until_ready(step(*inputs))
    seconds = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(step(*inputs))
      seconds.append(time.perf_counter() - start)
    lines.append(f"| {name} | {1e3 * min(seconds):.1f} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--frames", type=int, default=500)
  parser.add_argument("--labels", type=int, default=100)
  parser.add_argument("--vocab", type=int, default=500)
  parser.add_argument("--dim", type=int, default=256, help="joiner hidden size")
  parser.add_argument("--s_range", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--time_batch", type=int, default=0,
                      help="if > 0, also time one executed step at this batch with T=100, U=20")
  args = parser.parse_args()
  dtype = jnp.dtype(args.dtype)
  print(memory_table(args.batch, args.frames, args.labels, args.vocab, args.dim, args.s_range, dtype))
  if args.time_batch:
    print()
    print(time_table(args.time_batch, 100, 20, args.vocab, args.dim, args.s_range, dtype))


if __name__ == "__main__":
  main()
