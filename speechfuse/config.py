"""Config helpers shared by every recipe in configs/: argument parsing, validation, JSON dump.

A recipe is `configs/<name>.py` with `get_config(arg: str | None = None) -> ml_collections.ConfigDict`;
`arg` is a comma-separated list such as "tiny" or "base,seed=3" (big_vision's convention), parsed by
`parse_arg` here so that every recipe understands the same words.
"""

from __future__ import annotations

import ast
import importlib.resources
import importlib.util
import json
import os
import pathlib
from typing import Any

import ml_collections

SIZES = ("smoke", "tiny", "base", "large")


def parse_arg(arg: str | None, *, size: str = "tiny", **defaults: Any) -> ml_collections.ConfigDict:
  """Parses a recipe argument string into a locked ConfigDict of known fields.

  Accepted forms: "" / None (all defaults), "tiny" (a bare size word), "tiny,seed=3", "size=base,runlocal=True".
  Values are Python literals where they parse as such, strings otherwise. Every key must be `size` or one of
  `defaults`; an unknown key raises a ValueError naming it, and so does an unknown size.

  Returns:
    ConfigDict with `size` and every key of `defaults`.
  """
  values: dict[str, Any] = {"size": size, **defaults}
  for token in (arg or "").split(","):
    token = token.strip()
    if not token:
      continue
    if "=" in token:
      key, raw = (s.strip() for s in token.split("=", 1))
      try:
        value = ast.literal_eval(raw)
      except (ValueError, SyntaxError):
        value = raw
    else:
      key, value = "size", token
    if key not in values:
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; known: {sorted(values)}")
    values[key] = value
  if values["size"] not in SIZES:
    raise ValueError(f"unknown size {values['size']!r} in config argument {arg!r}; choose from {SIZES}")
  return ml_collections.ConfigDict(values)


def recipe_path(name: str) -> pathlib.Path:
  """The file of the recipe `name` ("otf", "asr_conformer_ctc.py", "configs/otf.py") among the recipes installed
  with the package (speechfuse.configs: the repository's configs/, editable or not)."""
  file = pathlib.Path(name).name
  file = file if file.endswith(".py") else f"{file}.py"
  path = pathlib.Path(str(importlib.resources.files("speechfuse.configs") / file))
  if not path.is_file():
    known = sorted(p.stem for p in path.parent.glob("*.py") if p.stem != "__init__")
    raise FileNotFoundError(f"no recipe {name!r}; the recipes are {known}")
  return path


def load_config(spec: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config of "configs/<recipe>.py[:<arg>]", as `--config=` gives it to the launcher (for notebooks): the file
  at that path, or else the installed recipe of that name (recipe_path), so that it works from any directory."""
  path, _, arg = os.fspath(spec).partition(":")
  if not os.path.isfile(path):
    path = os.fspath(recipe_path(path))
  module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def by_size(size: str, **table: Any) -> Any:
  """Picks the entry for `size` from keyword arguments (smoke falls back to tiny), e.g. by_size(s, tiny=4, base=12)."""
  if size in table:
    return table[size]
  if size == "smoke" and "tiny" in table:
    return table["tiny"]
  raise ValueError(f"no value for size {size!r}; have {sorted(table)}")


def set_schedule(config: ml_collections.ConfigDict, steps: int | None = None, warmup_steps: int | None = None,
                 learning_rate: float | None = None) -> ml_collections.ConfigDict:
  """A trainer config run for `steps` updates with `warmup_steps` and peak `learning_rate`; None keeps the
  recipe's value. The pipelines (quickstart, ssl_compare) fit member recipes to their budgets with it."""
  if steps is not None:
    config.total_steps = steps
  if warmup_steps is not None:
    config.optimizer.warmup_steps = warmup_steps
  if learning_rate is not None:
    config.optimizer.learning_rate = learning_rate
  return config


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Plain nested dict of a ConfigDict (FieldReferences resolved, tuples kept as lists)."""
  return json.loads(config.to_json_best_effort())


def write_json(config: ml_collections.ConfigDict, workdir: str | os.PathLike, name: str = "config.json") -> str:
  """Writes the resolved config to `workdir/name` (atomically) and returns the path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(os.fspath(workdir), name)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(to_dict(config), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)
  return path
