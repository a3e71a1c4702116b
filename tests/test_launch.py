"""The launcher fails at start, naming the key, on an override of a key that does not exist or a bad value."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _launch(*args: str, workdir: pathlib.Path) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, str(ROOT / "launch" / "main.py"), f"--workdir={workdir}", *args],
      capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_unknown_config_key_fails_at_once_naming_it(tmp_path):
  result = _launch("--config=configs/asr_conformer_ctc.py:tiny", "--config.no_such_key=1", workdir=tmp_path)
  assert result.returncode != 0
  assert "unknown config key 'no_such_key'" in result.stderr
  assert "Traceback" not in result.stderr
  assert not any(tmp_path.iterdir()), "nothing is written for a config that does not parse"


def test_unknown_nested_key_and_bad_value_name_the_key(tmp_path):
  result = _launch("--config=configs/asr_conformer_ctc.py:tiny", "--config.optimizer.no_such_rate=1",
                   workdir=tmp_path)
  assert result.returncode != 0 and "'no_such_rate'" in result.stderr
  result = _launch("--config=configs/asr_conformer_ctc.py:tiny", "--config.total_steps=many", workdir=tmp_path)
  assert result.returncode != 0 and "total_steps" in result.stderr


def test_unknown_recipe_argument_names_it(tmp_path):
  result = _launch("--config=configs/asr_conformer_ctc.py:tiny,colour=red", workdir=tmp_path)
  assert result.returncode != 0 and "'colour'" in result.stderr


def test_unknown_size_is_one_line(tmp_path):
  result = _launch("--config=configs/asr_conformer_ctc.py:huge", workdir=tmp_path)
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "unknown size 'huge'" in result.stderr.strip().splitlines()[-1]


def test_eval_without_a_checkpoint_is_one_line_and_builds_nothing(tmp_path):
  data = tmp_path / "data"
  result = _launch("--config=configs/asr_conformer_ctc.py:smoke", f"--config.data.data_dir={data}", "--mode=eval",
                   workdir=tmp_path / "run")
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "no checkpoint in" in result.stderr.strip().splitlines()[-1]
  assert not data.exists()  # no corpus built
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["log.txt"]  # no tokenizer, no CMVN
