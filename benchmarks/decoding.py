"""Utterances per second of the batched, jitted CTC prefix beam search against the plain-Python one.

  python benchmarks/decoding.py [--batch 32] [--frames 150] [--vocab 32] [--beam 10] [--repeats 3]

Both run the same algorithm on the same log-probs: `speechfuse.decoding.ctc_prefix_beam_search` (one
`lax.scan` over frames for the whole batch, static beam) and `ctc_lm.prefix_beam_search` without an LM
(a dict of prefixes per utterance, numpy float64 on the host), which is also what the tests compare it
with. The log-probs imitate a trained CTC head: blank-dominated frames with a few confident symbols and
noise, so prefixes collide and merge as in real decoding. Compilation is excluded (one warm-up call);
each timing is the best of --repeats. Prints a Markdown table with the ratio and the share of utterances
whose best hypothesis agrees between the two.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from speechfuse.decoding import ctc_lm, ctc_prefix_beam_search


def ctc_like_log_probs(batch: int, frames: int, vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """([B, T, V] log-probs, [B] lengths between T/2 and T): blank on ~70% of frames, noisy elsewhere."""
  rng = np.random.default_rng(seed)
  logits = rng.standard_normal((batch, frames, vocab)).astype(np.float32)
  labels = np.where(rng.random((batch, frames)) < 0.7, 0, rng.integers(1, vocab, (batch, frames)))
  np.put_along_axis(logits, labels[..., None], 6.0, axis=-1)
  lengths = rng.integers(frames // 2, frames + 1, batch)
  return np.asarray(jax.nn.log_softmax(logits, axis=-1)), lengths


def best_of(repeats: int, fn) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--frames", type=int, default=150)
  parser.add_argument("--vocab", type=int, default=32)
  parser.add_argument("--beam", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  log_probs, lengths = ctc_like_log_probs(args.batch, args.frames, args.vocab)
  device_log_probs, device_lengths = jax.device_put(log_probs), jax.device_put(lengths)

  def jitted():
    return jax.block_until_ready(ctc_prefix_beam_search(device_log_probs, device_lengths, beam=args.beam))

  def host():
    return ctc_lm.prefix_beam_search(log_probs, lengths, beam=args.beam)

  jitted_result, host_result = jitted(), host()  # warm-up (compiles the jitted search)
  agree = np.mean([
      np.array_equal(np.asarray(jitted_result.tokens[b, 0]), host_result.tokens[b, 0])
      for b in range(args.batch)])
  jitted_s = best_of(args.repeats, jitted)
  host_s = best_of(args.repeats, host)

  print(f"CTC prefix beam search: batch {args.batch}, T {args.frames}, V {args.vocab}, beam {args.beam}, "
        f"{jax.devices()[0].platform}")
  print()
  print("| implementation | seconds | utterances/s | ratio |")
  print("|---|---|---|---|")
  print(f"| plain Python (ctc_lm.prefix_beam_search) | {host_s:.3f} | {args.batch / host_s:.1f} | 1.00 |")
  print(f"| batched jitted (ctc_prefix_beam_search) | {jitted_s:.3f} | {args.batch / jitted_s:.1f} "
        f"| {host_s / jitted_s:.2f} |")
  print()
  print(f"best hypotheses identical on {100 * agree:.0f}% of utterances")


if __name__ == "__main__":
  main()
