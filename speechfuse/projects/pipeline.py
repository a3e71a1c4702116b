"""Multi-stage jobs (every project's pipeline): named stages run in order, each once.

    stages = [pipeline.Stage("sl", "train the supervised model", lambda: run.run("train", sl_config, sl_dir)), ...]
    outputs = pipeline.run_stages(stages, workdir)      # {"sl": <what the stage returned>, ...}

A finished stage's output (JSON-serialisable) is recorded in <workdir>/stages.json, written atomically after each
stage, so a killed job started again skips the finished stages and re-enters the interrupted one (whose trainer
resumes from its own last checkpoint). Every stage logs a progress line: its number, what it does, and when it ends
its wall time and the job's elapsed time.

Helpers the stages of such jobs share: `share_files` (a run's tokenizer / CMVN statistics copied into the next
run's directory before it starts), `train_to_end` (a trainer run that must reach its last step), `recipe` (a
member recipe on the job's corpus), `write_text` (atomic), and `use_compile_cache` (JAX's persistent cache in the job's
directory, so that runs of one architecture compile once).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
from absl import logging

from speechfuse import config as config_lib, run

STAGES_FILE = "stages.json"


@dataclasses.dataclass(frozen=True)
class Stage:
  """One step of a job: `run()` returns a JSON-serialisable output (a results table, a path, None)."""
  name: str
  description: str
  run: Callable[[], Any]


def _load(path: str) -> dict[str, Any]:
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _save(done: dict[str, Any], path: str) -> None:
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(done, f, indent=2)
  os.replace(path + ".tmp", path)


def run_stages(stages: Sequence[Stage], workdir: str | os.PathLike) -> dict[str, Any]:
  """Runs the stages not yet recorded as finished in `workdir`; returns every stage's output by name.

  Raises:
    ValueError: two stages share a name.
  """
  names = [stage.name for stage in stages]
  if len(set(names)) != len(names):
    raise ValueError(f"stage names must be unique, got {names}")
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(os.fspath(workdir), STAGES_FILE)
  done = _load(path)
  start = time.time()
  for number, stage in enumerate(stages, 1):
    prefix = f"stage {number}/{len(stages)} [{stage.name}]"
    if stage.name in done:
      logging.info("%s: done in an earlier run, skipped", prefix)
      continue
    logging.info("%s: %s", prefix, stage.description)
    stage_start = time.time()
    done[stage.name] = stage.run()
    _save(done, path)
    logging.info("%s: finished in %.0f s (job: %.1f min elapsed)", prefix, time.time() - stage_start,
                 (time.time() - start) / 60)
  return {name: done[name] for name in names}


def share_files(source_dir: str | os.PathLike, target_dir: str | os.PathLike, names: Sequence[str]) -> None:
  """Copies the files or folders `names` of the run in `source_dir` into `target_dir` where it lacks them
  (each atomically: copied under a temporary name, then renamed); nothing to do when both are the same run.

  Raises:
    FileNotFoundError: `source_dir` lacks one of `names`.
  """
  if os.path.abspath(source_dir) == os.path.abspath(target_dir):
    return
  os.makedirs(target_dir, exist_ok=True)
  for name in names:
    source, target = os.path.join(source_dir, name), os.path.join(target_dir, name)
    if os.path.exists(target):
      continue
    if not os.path.exists(source):
      raise FileNotFoundError(f"{source} is missing: the run in {source_dir} writes it before the others start")
    tmp = target + ".tmp"
    if os.path.isdir(source):
      shutil.rmtree(tmp, ignore_errors=True)
      shutil.copytree(source, tmp)
    else:
      shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def train_to_end(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> int:
  """Trains `config` in `workdir` to config.total_steps (resuming) and returns that step.

  Raises:
    RuntimeError: training stopped early (SIGTERM), so that the stage is not recorded as finished.
  """
  state = run.run("train", config, workdir)
  step = int(jax.device_get(state.step))
  if step < config.total_steps:
    raise RuntimeError(f"training in {workdir} stopped at step {step} of {config.total_steps}; rerun the job to "
                       "resume it")
  return step


def recipe(name: str, arg: str, data: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The member recipe configs/<name>.py at `arg` (installed recipes: speechfuse.config.recipe_path), with the
  fields of `data` replacing those of its data section, so that every stage of a job reads one corpus."""
  config = config_lib.load_config(f"{config_lib.recipe_path(name)}:{arg}")
  config.data.update(dict(data))
  return config


def use_compile_cache(workdir: str | os.PathLike) -> None:
  """Compiled programs go to <workdir>/compile_cache (JAX's persistent cache): a job's many runs and decodings of
  one architecture compile once."""
  jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir), "compile_cache"))


def write_text(path: str | os.PathLike, text: str) -> str:
  """Writes `text` to `path` atomically (a temporary sibling, then renamed); returns the path."""
  path = os.fspath(path)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)
  return path
