"""The quickstart: the README's main job, at the stage the project has reached.

Today: train the tiny Conformer-CTC recipe (configs/asr_conformer_ctc.py) from scratch on the built-in
corpus, then decode its test splits offline and online and print the WER / CER table. `launch/quickstart.py`
and notebooks/quickstart.ipynb call `run_quickstart`.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any

from absl import logging

from speechfuse import run
from speechfuse.config import load_config
from speechfuse.eval import results

RECIPE = pathlib.Path(__file__).resolve().parents[1] / "configs" / "asr_conformer_ctc.py"


def run_quickstart(size: str, workdir: str | os.PathLike, **overrides: Any) -> dict[str, Any]:
  """Trains and evaluates the CTC recipe at `size` in `workdir`; returns the results table.

  `overrides` set top-level config fields (e.g. total_steps=20). A rerun resumes from the workdir's checkpoints.
  """
  config = load_config(f"{RECIPE}:{size}")
  config.update_from_flattened_dict(overrides)
  stages = (("train", "train the Conformer-CTC model"), ("eval", "decode the test splits"))
  outputs = {}
  for number, (mode, what) in enumerate(stages, 1):
    start = time.time()
    logging.info("quickstart stage %d/%d: %s", number, len(stages), what)
    outputs[mode] = run.run(mode, config, workdir)
    logging.info("quickstart stage %d/%d done in %.0f s", number, len(stages), time.time() - start)
  table = outputs["eval"]
  print(results.markdown_table(table))
  print(f"Per-utterance results and tables: {os.path.join(os.fspath(workdir), 'results')}")
  return table
