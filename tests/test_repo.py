"""Promises the repository makes: the README's two commands, CI running the README's test command verbatim,
every recipe config importing and building at every size, and the package (recipes included) installing whole."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

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


def test_pyproject_lists_every_package():
  """pyproject.toml names the packages one by one (so that configs/ installs as speechfuse.configs): all of them."""
  import tomllib  # pylint: disable=g-import-not-at-top
  listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
  found = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "speechfuse").rglob("__init__.py")}
  assert listed == found | {"speechfuse.configs"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_non_editable_install_finds_its_recipes_from_anywhere(tmp_path):
  """`pip install .` (a wheel, not the checkout): the quickstart's pipeline reads its recipes from the package."""
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(tmp_path / "wheel")],
                 check=True, capture_output=True, timeout=600)
  wheel = next((tmp_path / "wheel").glob("speechfuse-*.whl"))
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                  str(wheel)], check=True, capture_output=True, timeout=600)
  script = ("import speechfuse, sys; assert speechfuse.__file__.startswith(sys.argv[1]), speechfuse.__file__\n"
            "from speechfuse.config import load_config, recipe_path\n"
            "from speechfuse.projects.otf import pipeline\n"
            "otf = load_config(f\"{recipe_path('otf')}:smoke\")\n"
            "stages = pipeline.stages(otf, 'job')\n"
            "configs = [pipeline.sl_config(otf), pipeline.pretrain_config(otf), pipeline.finetune_config(otf, 'p')]\n"
            "print(len(stages), recipe_path('otf'))\n")
  result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "site")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
  assert result.returncode == 0, result.stderr[-2000:]
  count, path = result.stdout.split()
  assert int(count) == 13 and path.startswith(str(tmp_path / "site"))
