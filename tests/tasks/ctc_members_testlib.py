"""Shared by the fusion and ensemble tests: a one-block smoke CTC recipe on a small written corpus, and "exported"
member runs with generic random variables (a run directory with tokenizer/, cmvn.json and export/params)."""

from __future__ import annotations

import functools
import pathlib

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import speech_testlib

from speechfuse import tasks
from speechfuse.train import checkpoint, state as state_lib

COUNTS = {"train": 8, "dev": 3}


def write_noise_corpus(root: pathlib.Path) -> pathlib.Path:
  """8 training and 3 dev utterances of noise with two-word transcripts, 0.75-1.5 s."""
  return speech_testlib.write_corpus(root, "noise_words", COUNTS,
                                     functools.partial(speech_testlib.noise_word_records, min_samples=12000))


def smoke_ctc_config(dataset: pathlib.Path) -> ml_collections.ConfigDict:
  """configs/asr_conformer_ctc.py:smoke with one Conformer block on `dataset`, float32, dev as the test split."""
  config = speech_testlib.recipe("asr_conformer_ctc", "smoke")
  config.data.corpus = str(dataset)
  config.data.bucket_boundaries_seconds = (1.0, 1.5)
  config.data.max_batch_seconds = 8.0
  config.data.test_splits = ("dev",)
  config.compute_dtype = "float32"
  config.model.encoder.num_blocks = 1
  return config


def random_fill(shapes, seed: int):
  """Random arrays for a tree of jax.ShapeDtypeStruct: normal / sqrt(fan-in), norm scales and variances in
  [0.5, 1.5]."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if path[-1].key in ("scale", "var"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def random_variables(config: ml_collections.ConfigDict, workdir: pathlib.Path, seed: int) -> dict:
  """Variables of config's model with generic random values (the task's assets are written to `workdir`).

  XLA compiles the real initialisers slowly on CPU; normal values scaled by 1/sqrt(fan-in) serve as well, with
  positive norm scales and running variances.
  """
  task = tasks.get_task(config, workdir)
  example = state_lib.example_batch(next(task.make_input("train", seed=0, shard_index=0, shard_count=1)))
  shapes = jax.eval_shape(lambda: nn.unbox(task.init(jax.random.key(0), example)))
  return random_fill(shapes, seed)


def write_member(config: ml_collections.ConfigDict, run_dir: pathlib.Path, seed: int) -> pathlib.Path:
  """A run directory as `--mode=export` leaves it, with random_variables: returns <run_dir>/export/params."""
  path = run_dir / "export" / "params"
  checkpoint.write_variables(path, random_variables(config, run_dir, seed))
  return path
