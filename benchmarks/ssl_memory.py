"""k2SSL's long-input memory case: XLA's peak memory of one pre-training step on 6 utterances of 60 s, compiled only.

  python benchmarks/ssl_memory.py                            # base, 6 x 60 s, the four rows of k2SSL's Table II
  python benchmarks/ssl_memory.py --size smoke --batch 2 --seconds 4     # quick look

k2SSL (section III) moves from HuBERT's Transformer to the Zipformer because self-attention's memory grows with the
square of the input length and SSL gains from long inputs and large batches; its test batch is six 60 s utterances.
Each row is configs/ssl_hubert.py's train step at --size for one of Table II's rows (the peer first):
  transformer / adamw / hubert       backbone=wav2vec2 (HuBERT base), fairseq's Adam with its cosine schedule
  transformer / scaled_adam / hubert optimizer=scaled_adam (icefall's ScaledAdam + Eden)
  transformer / scaled_adam / ce     loss=ce (k2SSL's linear head)
  zipformer / scaled_adam / ce       backbone=zipformer_waveform (the same extractor under Zipformer stacks)
built from the real code (models.get_model, tasks.ssl's loss, train.step.make_train_step with the recipe's
optimizer) and compiled on abstract shapes (jax.eval_shape of the state; nothing is initialised or run), so base
at 6 x 60 s compiles on a laptop. "temp" is the peak of XLA's intermediate buffers for this backend, "total" adds
arguments and outputs (the state is donated, so outputs alias it); the ratios divide by the first row. The batch is
benchmarks/asr.py's synthetic audio, padded to --seconds, with random 50 Hz frame labels.

Results are in speechfuse/projects/k2ssl/README.md. XLA's CPU and GPU buffer assignments differ: compare rows of one
backend, not against the paper's V100 gigabytes.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from speechfuse import optim
from speechfuse.config import load_config
from speechfuse.models import encoders
from speechfuse.train import step as step_lib
from speechfuse.train.state import TrainState

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import asr  # pylint: disable=g-import-not-at-top,wrong-import-position  # benchmarks/ is a folder of scripts
import ssl_pretrain  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = pathlib.Path(__file__).resolve().parent.parent
MIB = 2**20


def recipe(size: str, backbone: str, optimizer: str, loss: str, dtype: str) -> ml_collections.ConfigDict:
  config = load_config(f"{ROOT / 'configs' / 'ssl_hubert.py'}:{size},backbone={backbone},loss={loss},"
                       f"optimizer={optimizer}")
  config.compute_dtype = dtype
  return config


def compile_step(config: ml_collections.ConfigDict, batch: dict) -> dict:
  """The recipe's train step compiled on the abstract state for `batch`: parameters, compile seconds, memory."""
  task = ssl_pretrain.SyntheticSSLTask(config, cmvn=None)
  if config.optimizer.schedule == "eden":
    config.optimizer.eden_steps_per_epoch = 5760.0  # LibriSpeech 960 h in 600 s updates; memory does not depend on it
  tx, _ = optim.make_optimizer(config.optimizer, total_steps=config.total_steps, max_grad_norm=config.max_grad_norm)
  tx = task.wrap_optimizer(tx)

  def initial_state(batch):
    variables = dict(nn.unbox(task.init(jax.random.PRNGKey(0), batch)))
    params = variables.pop("params")
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=tx.init(params), extra=variables,
                      rng=jax.random.PRNGKey(1), nonfinite_run=zero, nonfinite_total=zero)

  state = jax.eval_shape(initial_state, batch)
  start = time.perf_counter()
  compiled = jax.jit(step_lib.make_train_step(task, tx, grad_accum_steps=1), donate_argnums=0).lower(
      state, batch).compile()
  memory = compiled.memory_analysis()
  return {"params": sum(x.size for x in jax.tree.leaves(state.params)),
          "compile": time.perf_counter() - start, "temp": memory.temp_size_in_bytes,
          "total": memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="base", help="configs/ssl_hubert.py size (smoke, tiny, base, large)")
  parser.add_argument("--batch", type=int, default=6, help="utterances per batch")
  parser.add_argument("--seconds", type=float, default=60.0, help="padded length of every utterance")
  parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"), help="compute dtype")
  args = parser.parse_args()
  # ssl_pretrain.ssl_batch reads batch / seconds from its args; its mask_prob and iteration are set by the recipes.
  batch_args = argparse.Namespace(batch=args.batch, seconds=args.seconds)
  results = []
  for name, backbone, optimizer, loss in ssl_pretrain.TABLE2_ROWS:
    config = recipe(args.size, backbone, optimizer, loss, args.dtype)
    frame_count = encoders.frame_grid(config.model.encoder, asr.SAMPLE_RATE).frame_count
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                         ssl_pretrain.ssl_batch(batch_args, frame_count, config.task.num_classes))
    result = compile_step(config, batch)
    print(f"  {name} / {optimizer} / {loss}: temp {result['temp'] / MIB:.0f} MiB, compiled in "
          f"{result['compile']:.0f} s", file=sys.stderr)
    results.append(((name, optimizer, loss), result))
  reference = results[0][1]
  rows = [[*labels, f"{r['params']:,}", f"{r['temp'] / MIB:,.0f}", f"{r['total'] / MIB:,.0f}",
           f"{r['temp'] / reference['temp']:.3f}", f"{r['total'] / reference['total']:.3f}", f"{r['compile']:.0f}"]
          for labels, r in results]
  header = ["backbone", "optimizer", "loss", "parameters", "temp MiB", "total MiB", "temp / row 1", "total / row 1",
            "compile s"]
  print(f"SSL pre-training step (forward + loss + backward + optimizer), configs/ssl_hubert.py:{args.size}, "
        f"{args.batch} x {args.seconds:g} s, {args.dtype}, compiled only; jax {jax.__version__} "
        f"({jax.default_backend()}, {os.cpu_count()} cores)")
  print()
  print(asr.markdown_table(header, rows, "lllrrrrrr"))


if __name__ == "__main__":
  main()
