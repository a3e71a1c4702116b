"""A converted checkpoint: a directory of flax variables (train.load_variables reads it, so `task.init_from` takes
it) with `speechfuse.json` beside them: the encoder's config (config.model.encoder) and where it came from.

  CKPT/            orbax variables {"params": {"encoder": ..., ["final_proj": ..., "label_embeddings": ...]}}
  CKPT/speechfuse.json  {"encoder": {...}, "source": "...", "format": "hf" | "fairseq", "model_type": "hubert"}

It is written under a temporary name and renamed when whole, so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any

import ml_collections

from speechfuse import train as train_lib
from speechfuse.train import checkpoint

INFO = "speechfuse.json"


def write(out: str | os.PathLike, variables: dict[str, Any], info: dict[str, Any]) -> str:
  """Writes `variables` and `info` (INFO's fields) to the new directory `out`, atomically; returns its path."""
  out = pathlib.Path(out).absolute()
  if out.exists():
    raise FileExistsError(f"{out} exists; choose another output path or remove it")
  out.parent.mkdir(parents=True, exist_ok=True)
  staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
  shutil.rmtree(staging, ignore_errors=True)
  try:
    checkpoint.write_variables(staging, variables)
    (staging / INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(staging, out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return os.fspath(out)


def read_info(path: str | os.PathLike) -> dict[str, Any]:
  """The speechfuse.json of converted checkpoint `path`; a FileNotFoundError names what is missing."""
  info = pathlib.Path(path) / INFO
  if not info.is_file():
    raise FileNotFoundError(f"{info} not found: {path} is not a converted checkpoint (speechfuse-convert writes one)")
  return json.loads(info.read_text())


def encoder_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """config.model.encoder of converted checkpoint `path` (every attribute of its encoder)."""
  return ml_collections.ConfigDict(read_info(path)["encoder"])


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
  """(variables as numpy arrays, info) of converted checkpoint `path`."""
  info = read_info(path)
  return train_lib.load_variables(path), info
