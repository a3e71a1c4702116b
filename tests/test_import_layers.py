"""Imports point one way: every module of speechfuse imports only from its own layer or the layers below it.

Layers, bottom up (a package's modules may import each other; a layer imports only from lower ones):
  util        speechfuse.config, speechfuse.logs (recipe arguments, logging setup)
  library     audio, text, data, nn, losses, decoding, optim, parallel (in that order)
  models -> train -> eval -> tasks -> ssl / fusion -> convert -> run -> projects -> cli (the launch scripts' helpers)
The test reads every module's imports (function-level ones included) with `ast`, so a lazy import that hides a
cycle fails too, and names the pair.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "speechfuse"
ORDER = ("config", "logs", "audio", "text", "data", "nn", "losses", "decoding", "optim", "parallel", "models",
         "train", "eval", "tasks", "ssl", "fusion", "convert", "run", "projects", "cli")
# Peers share a rank: they may not import each other either way (ssl and fusion), or they are one utility layer.
RANK = {name: rank for rank, name in enumerate(ORDER)}
RANK.update(logs=RANK["config"], fusion=RANK["ssl"])


def _layer(module: str) -> str:
  """speechfuse.<layer>[.<rest>] -> <layer>."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def _imports(path: pathlib.Path, package: pathlib.Path = PACKAGE) -> list[tuple[str, int]]:
  """(imported speechfuse module, line) of every import in the file, at any depth."""
  module = ".".join(("speechfuse",) + path.relative_to(package).with_suffix("").parts).removesuffix(".__init__")
  out = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out += [(alias.name, node.lineno) for alias in node.names if alias.name.startswith("speechfuse")]
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: resolve against this module's package
        base = module.split(".")[:-node.level] if not path.name == "__init__.py" else module.split(".")[:1 - node.level]
        target = ".".join(base + ([node.module] if node.module else []))
      else:
        target = node.module or ""
      if target.startswith("speechfuse"):
        # `from speechfuse import tasks` imports the module speechfuse.tasks.
        names = [f"{target}.{alias.name}" if target == "speechfuse" else target for alias in node.names]
        out += [(name, node.lineno) for name in names]
  return out


def _modules() -> list[pathlib.Path]:
  return sorted(PACKAGE.rglob("*.py"))


def test_every_layer_is_known():
  layers = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in _modules()} - {"__init__"}
  assert layers <= set(RANK), f"layers missing from tests/test_import_layers.py's ORDER: {sorted(layers - set(RANK))}"


def upward_imports(path: pathlib.Path, package: pathlib.Path = PACKAGE) -> list[str]:
  """"file:line (layer) imports module (layer)" for each import of `path` into its own layer's peers or above."""
  source_layer = path.relative_to(package).parts[0].removesuffix(".py")
  if source_layer == "__init__":
    return []
  upward = []
  for target, line in _imports(path, package):
    target_layer = _layer(target)
    if not target_layer or target_layer == source_layer:
      continue
    if RANK[target_layer] >= RANK[source_layer]:
      upward.append(f"{path.relative_to(package.parent)}:{line} ({source_layer}) imports {target} ({target_layer})")
  return upward


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
  upward = upward_imports(path)
  assert not upward, "imports that run back up:\n" + "\n".join(upward)


def test_an_import_that_runs_back_up_is_named(tmp_path):
  package = tmp_path / "speechfuse"
  (package / "train").mkdir(parents=True)
  (package / "train" / "loop.py").write_text(
      "from speechfuse import parallel\n\ndef f():\n  from speechfuse.eval import results\n"
      "  from speechfuse import tasks\n  from . import state\n  from ..fusion import align\n")
  assert upward_imports(package / "train" / "loop.py", package) == [
      "speechfuse/train/loop.py:4 (train) imports speechfuse.eval (eval)",
      "speechfuse/train/loop.py:5 (train) imports speechfuse.tasks (tasks)",
      "speechfuse/train/loop.py:7 (train) imports speechfuse.fusion (fusion)",
  ]
  (package / "ssl").mkdir()
  (package / "ssl" / "probe.py").write_text("from speechfuse.fusion import spec\n")  # peers: neither way
  assert upward_imports(package / "ssl" / "probe.py", package) == [
      "speechfuse/ssl/probe.py:1 (ssl) imports speechfuse.fusion (fusion)"]
