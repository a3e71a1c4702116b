"""Tests for speechfuse.text.base: the descriptor and load_tokenizer's errors."""

from __future__ import annotations

import json

import pytest

from speechfuse.text import base
from speechfuse.text.chars import CharTokenizer


def test_descriptor_names_kind_and_loads_from_dir_or_file(tmp_path):
  path = CharTokenizer().save(tmp_path)
  assert json.loads((tmp_path / base.DESCRIPTOR).read_text())["kind"] == "char"
  for where in (tmp_path, path, str(tmp_path)):
    assert base.load_tokenizer(where).encode("hello") == CharTokenizer().encode("hello")


def test_load_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    base.load_tokenizer(tmp_path)
  descriptor = tmp_path / base.DESCRIPTOR
  descriptor.write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    base.load_tokenizer(tmp_path)
  descriptor.write_text(json.dumps({"kind": "phoneme"}))
  with pytest.raises(ValueError, match="phoneme"):
    base.load_tokenizer(tmp_path)
  descriptor.write_text(json.dumps({"kind": "char", "normalizer": {}}))
  with pytest.raises(ValueError, match="alphabet"):
    base.load_tokenizer(tmp_path)
