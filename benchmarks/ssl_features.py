"""Feature extraction with a base wav2vec 2.0 / HuBERT / WavLM: ours (Flax, jitted) against transformers' PyTorch model.

  python benchmarks/ssl_features.py                          # wav2vec2 base, 4 x 10 s, 5 timed calls
  python benchmarks/ssl_features.py --models wav2vec2,wavlm --batch 2 --seconds 5 --calls 3

Both sides run the same weights: a transformers base model (random init, seeded; the speed of neither depends
on the values) is saved to a temporary folder and converted with speechfuse.convert, so the parity tests
guarantee both compute the same hidden states. One call = every hidden state of a padded batch of --batch
utterances of at most --seconds (lengths in [80 %, 100 %]), in evaluation mode, float32, on the CPU:
- "speechfuse": the converted encoder's apply, jitted once per batch shape (compile time reported apart), each
  call ended by block_until_ready; XLA uses every core.
- "PyTorch": transformers' model(input_values, attention_mask, output_hidden_states=True) under
  torch.inference_mode, eager, its default attention implementation; once per --torch_threads value.
Throughput is seconds of real (unpadded) audio per second of wall time, from the median call; the ratio divides
by the fastest PyTorch row. The 1-minute load average is printed before and after: other processes on the
machine slow both sides alike only if it stays even.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from speechfuse import convert  # noqa: E402  (after the path set-up, to run from a checkout)

SAMPLE_RATE = 16000
CONFIGS = {"wav2vec2": "Wav2Vec2Config", "hubert": "HubertConfig", "wavlm": "WavLMConfig"}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
  rule = ["---"] + ["---:"] * (len(header) - 1)
  return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule, *rows])


def batch_of(batch: int, seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  samples = int(seconds * SAMPLE_RATE)
  lengths = rng.integers(int(0.8 * samples), samples + 1, size=batch)
  lengths[0] = samples
  waveform = np.zeros((batch, samples), np.float32)
  for i, n in enumerate(lengths):
    waveform[i, :n] = rng.normal(0, 0.1, n)
  return waveform, lengths


def time_ours(path: str, waveform: np.ndarray, lengths: np.ndarray, calls: int) -> tuple[float, float]:
  module, variables, _ = convert.load_pretrained(path)
  apply = jax.jit(lambda v, w, n: module.apply(v, w, n).hidden)
  start = time.perf_counter()
  jax.block_until_ready(apply(variables, waveform, lengths))
  compile_seconds = time.perf_counter() - start
  seconds = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(apply(variables, jnp.asarray(waveform), jnp.asarray(lengths)))
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds), compile_seconds


def time_torch(model, waveform: np.ndarray, lengths: np.ndarray, calls: int, threads: int) -> float:
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(threads)
  x = torch.from_numpy(waveform)
  mask = torch.from_numpy((np.arange(waveform.shape[1])[None] < lengths[:, None]).astype(np.int64))
  with torch.inference_mode():
    model(x, attention_mask=mask, output_hidden_states=True)  # warm-up
    seconds = []
    for _ in range(calls):
      start = time.perf_counter()
      model(x, attention_mask=mask, output_hidden_states=True)
      seconds.append(time.perf_counter() - start)
  return statistics.median(seconds)


def rows_for(model_type: str, args) -> list[list[str]]:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  hf_model = transformers.AutoModel.from_config(getattr(transformers, CONFIGS[model_type])()).eval()
  waveform, lengths = batch_of(args.batch, args.seconds)
  audio = lengths.sum() / SAMPLE_RATE
  with tempfile.TemporaryDirectory() as tmp:
    hf_model.save_pretrained(os.path.join(tmp, "hf"))
    convert.convert_hf(os.path.join(tmp, "hf"), os.path.join(tmp, "ours"))
    print(f"{model_type}: load {os.getloadavg()[0]:.2f}, timing speechfuse", flush=True)
    ours, compile_seconds = time_ours(os.path.join(tmp, "ours"), waveform, lengths, args.calls)
  torch_rows = []
  for threads in args.torch_threads:
    print(f"{model_type}: load {os.getloadavg()[0]:.2f}, timing PyTorch with {threads} threads", flush=True)
    torch_rows.append((threads, time_torch(hf_model, waveform, lengths, args.calls, threads)))
  best = min(seconds for _, seconds in torch_rows)
  params = sum(p.numel() for p in hf_model.parameters()) / 1e6
  rows = [[f"{model_type} base, speechfuse (compile {compile_seconds:.1f} s)", f"{params:.1f} M",
           f"{ours * 1e3:.0f}", f"{audio / ours:.1f}", f"{best / ours:.2f}x"]]
  rows += [[f"{model_type} base, PyTorch {threads} thread{'s' if threads > 1 else ''}", f"{params:.1f} M",
            f"{seconds * 1e3:.0f}", f"{audio / seconds:.1f}", f"{best / seconds:.2f}x"]
           for threads, seconds in torch_rows]
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="wav2vec2", help="comma-separated: wav2vec2, hubert, wavlm (base sizes)")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seconds", type=float, default=10.0, help="longest utterance")
  parser.add_argument("--calls", type=int, default=5, help="timed calls per implementation (median reported)")
  parser.add_argument("--torch_threads", default=f"{os.cpu_count()},1", help="torch.set_num_threads values")
  args = parser.parse_args()
  args.torch_threads = [int(t) for t in args.torch_threads.split(",")]
  print(f"load average at start: {' '.join('%.2f' % x for x in os.getloadavg())}")
  rows = []
  for model_type in args.models.split(","):
    rows += rows_for(model_type.strip(), args)
  print()
  print(f"{args.batch} utterances of at most {args.seconds:g} s, every hidden state, float32, {os.cpu_count()} CPUs")
  print(markdown_table(["model", "parameters", "ms per call", "audio s / s", "speed vs best PyTorch"], rows))
  print(f"\nload average at end: {' '.join('%.2f' % x for x in os.getloadavg())}")


if __name__ == "__main__":
  main()
