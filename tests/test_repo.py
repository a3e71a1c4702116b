"""Promises the repository makes: the README's two commands, CI running the README's test command verbatim,
and every recipe config importing and building at every size."""

from __future__ import annotations

import pathlib
import re

import pytest

from speechfuse import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
  head = (ROOT / "README.md").read_text().split("\n## ", 1)[0]
  return re.findall(r"```(?:bash|sh)?\n(.+?)\n```", head, flags=re.S)


def test_readme_starts_with_two_commands():
  commands = _readme_commands()
  assert len(commands) == 2, commands
  assert all("\n" not in c for c in commands), "each command is one line"
  setup_and_run, setup_and_test = commands
  assert "launch/" in setup_and_run and "pytest" in setup_and_test


def test_ci_calls_the_readme_test_command_verbatim():
  ci = (ROOT / ".ci" / "run").read_text()
  assert "set -euo pipefail" in ci
  assert _readme_commands()[1] in ci.splitlines()


RECIPES = sorted(p for p in (ROOT / "configs").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
@pytest.mark.parametrize("size", config_lib.SIZES)
def test_every_recipe_builds_at_every_size(path, size):
  config = config_lib.load_config(f"{path}:{size}")
  assert config.size == size
  config_lib.to_dict(config)  # JSON-serialisable, as the launcher writes it
