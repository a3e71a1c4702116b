"""Tests of the shared recipe-argument parser and the config JSON dump."""

from __future__ import annotations

import json

import ml_collections
import pytest

from speechfuse import config as config_lib


def test_parse_arg_sizes_and_overrides():
  assert config_lib.parse_arg(None).size == "tiny"
  assert config_lib.parse_arg("base").size == "base"
  arg = config_lib.parse_arg("large,seed=3,runlocal=True,name=abc", seed=0, runlocal=False, name="")
  assert (arg.size, arg.seed, arg.runlocal, arg.name) == ("large", 3, True, "abc")


def test_parse_arg_rejects_unknown_key_and_size():
  with pytest.raises(ValueError, match="'colour'"):
    config_lib.parse_arg("tiny,colour=red", seed=0)
  with pytest.raises(ValueError, match="'huge'"):
    config_lib.parse_arg("huge")


def test_by_size_falls_back_from_smoke_to_tiny():
  assert config_lib.by_size("smoke", tiny=2, base=12) == 2
  assert config_lib.by_size("base", tiny=2, base=12) == 12
  with pytest.raises(ValueError, match="large"):
    config_lib.by_size("large", tiny=2, base=12)


def test_write_json_round_trips(tmp_path):
  config = ml_collections.ConfigDict({"seed": 1, "mesh": [("data", -1)], "model": {"dim": 4}})
  path = config_lib.write_json(config, tmp_path / "run")
  assert json.loads(open(path).read()) == {"seed": 1, "mesh": [["data", -1]], "model": {"dim": 4}}


def test_load_config_reads_a_recipe_with_its_argument(tmp_path):
  recipe = tmp_path / "recipe.py"
  recipe.write_text("from speechfuse import config\n"
                    "def get_config(arg=None):\n"
                    "  return config.parse_arg(arg, seed=0)\n")
  assert config_lib.load_config(f"{recipe}:base,seed=2").to_dict() == {"size": "base", "seed": 2}
  assert config_lib.load_config(recipe).size == "tiny"
  with pytest.raises(FileNotFoundError, match="missing.py"):
    config_lib.load_config(tmp_path / "missing.py")
