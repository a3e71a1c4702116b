"""The ASR evaluation driver: any checkpoint of an ASR recipe -> WER / CER per test split, offline and online.

    table = evaluate_asr(config, workdir)                      # latest checkpoint in workdir, config.data.test_splits
    table = evaluate_asr(config, workdir, splits=["dev"], checkpoint="exported/params")

Writes <workdir>/results/{<split>.<mode>.jsonl, results.json, results.md} (speechfuse.eval.results), or
<workdir>/results/<decoding>/... when config.task.decoding is not "greedy"; the table records the decoding. Offline
decodes with full context; online restricts attention to chunks of config.task.online_chunk_size encoder frames
with config.task.online_left_chunks of left context (the chunk mode that dynamic chunk training prepares for).
Both modes decode with config.task.decoding (see speechfuse.train.tasks.asr): the task's `decode_step` runs jitted,
and for "beam_lm" stops at the log-probabilities, which `task.utterances` searches with the LM on the host.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from absl import logging

from speechfuse import parallel
from speechfuse.eval import results
from speechfuse.train import checkpoint as checkpoint_lib, loop
from speechfuse.train.tasks import asr


def evaluate_asr(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, splits: Sequence[str] | None = None,
                 checkpoint: str | os.PathLike | None = None) -> dict[str, Any]:
  """Decodes `splits` (default config.data.test_splits) offline and online and writes the results.

  Args:
    config: the run's config (an "asr_ctc" or "asr_transducer" task).
    workdir: the run directory: tokenizer, CMVN statistics, checkpoints; results go to
      results.results_dir(workdir, config.task.decoding).
    splits: corpus split names.
    checkpoint: variables written by train.export_params / average_checkpoints; None for the latest train
      checkpoint in workdir.

  Returns:
    The results table (speechfuse.eval.results): {"step", "checkpoint", "online_chunk_size", "decoding",
    "splits": {split: {"offline": {"wer", "cer", "loss", "confidence", "utterances"}, "online": {...}}}}.

  Raises:
    FileNotFoundError: no checkpoint in workdir and none given.
    ValueError: the config's task is not an ASR task.
  """
  run = loop.prepare(config, workdir)
  run.manager.close()
  if not isinstance(run.task, asr.ASRTask):
    raise ValueError(f"config.task.name={config.task.name!r} is not an ASR task; evaluate_asr needs asr_ctc or "
                     "asr_transducer")
  step = int(jax.device_get(run.state.step))
  if checkpoint is not None:
    variables = checkpoint_lib.load_variables(checkpoint)
    source = os.fspath(checkpoint)
  elif step == 0:
    raise FileNotFoundError(f"no checkpoint to evaluate in {checkpoint_lib.checkpoint_dir(workdir)}")
  else:
    variables = run.state.variables
    source = f"{checkpoint_lib.checkpoint_dir(workdir)}/{step}"
  task = run.task
  modes = {"offline": None, "online": config.task.online_chunk_size}
  out_dir = results.results_dir(workdir, config.task.decoding)
  table = {"step": step, "checkpoint": source, "online_chunk_size": config.task.online_chunk_size,
           "decoding": asr.decoding_settings(config), "splits": {}}
  with parallel.sharding_context(run.mesh, run.rules):
    for split in splits or tuple(config.data.test_splits):
      table["splits"][split] = {}
      for mode, chunk_size in modes.items():
        decode = jax.jit(functools.partial(task.decode_step, chunk_size=chunk_size,
                                           num_left_chunks=config.task.online_left_chunks))

        def eval_step(host_batch, decode=decode):
          return jax.device_get(decode(variables, run.global_batch(host_batch)))

        records = task.utterances(eval_step, task.split_input(split, **run.shard()))
        table["splits"][split][mode] = results.summarize(records)
        name = f"{split}.{mode}.jsonl" if jax.process_count() == 1 else f"{split}.{mode}.{jax.process_index()}.jsonl"
        results.write_jsonl(records, os.path.join(out_dir, name))
        figures = table["splits"][split][mode]
        logging.info("%s %s (%s): WER %.2f%% CER %.2f%% (%d utterances)", split, mode, config.task.decoding,
                     100 * figures["wer"], 100 * figures["cer"], figures["utterances"])
  if jax.process_index() == 0:
    results.write_table(table, out_dir)
  return table
