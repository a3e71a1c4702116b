"""End to end (slow): the README's main job at smoke size, and the quickstart notebook, on a fresh data dir."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_script_trains_and_prints_the_results_table(tmp_path):
  env = {**os.environ, "SPEECHFUSE_DATA": str(tmp_path / "data")}
  workdir = tmp_path / "run"
  result = subprocess.run([sys.executable, "launch/quickstart.py", "--size=smoke", f"--workdir={workdir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| split | WER offline | CER offline | WER online | CER online | utterances |" in result.stdout
  table = json.loads((workdir / "results" / "results.json").read_text())
  assert set(table["splits"]) == {"test_clean", "test_other"}
  assert json.loads((workdir / "config.json").read_text())["size"] == "smoke"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  # The kernel process inherits these.
  monkeypatch.setenv("SPEECHFUSE_DATA", str(tmp_path / "data"))
  monkeypatch.setenv("QUICKSTART_WORKDIR", str(tmp_path / "run"))
  notebook = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
  nbclient.NotebookClient(notebook, timeout=1200, kernel_name="python3",
                          resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
  outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                    for o in cell.get("outputs", []))
  assert "trained to step" in outputs
  assert (tmp_path / "run" / "results" / "results.md").exists()
