"""Conformer-CTC fine-tuned from a pre-trained encoder (configs/ssl_hubert.py) on a small labeled subset.

  python launch/main.py --config=configs/ssl_hubert.py:tiny --workdir=runs/ssl_tiny
  python launch/main.py --config=configs/ssl_hubert.py:tiny --workdir=runs/ssl_tiny --mode=export  (-> params)
  python launch/main.py --config=configs/finetune_ctc.py:tiny --workdir=runs/ft_tiny \\
      --config.task.init_from=runs/ssl_tiny/<exported params>

The recipe is configs/asr_conformer_ctc.py at the same size, trained on a fixed 10% of the train split
(data.train_fraction, the same utterances for every run), with the encoder frozen for the first updates so
that the new CTC head does not push random gradients into it. Without task.init_from it is the from-scratch
baseline on the same labeled subset (nothing frozen).
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

from speechfuse import config as config_lib


def _ctc_recipe(arg: str) -> ml_collections.ConfigDict:
  """configs/asr_conformer_ctc.py's config (configs/ is not a package: loaded from its file)."""
  spec = importlib.util.spec_from_file_location("asr_conformer_ctc",
                                                pathlib.Path(__file__).with_name("asr_conformer_ctc.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The recipe at `arg`'s size ("smoke", "tiny", "base", "large"), e.g. "tiny,train_fraction=0.1"."""
  arg = config_lib.parse_arg(arg, size="tiny", train_fraction=0.1)
  config = _ctc_recipe(arg.size)
  config.data.train_fraction = arg.train_fraction
  # A tenth of the data: fewer updates, and the encoder starts trained.
  config.total_steps = config_lib.by_size(arg.size, smoke=4, tiny=400, base=20_000, large=20_000)
  config.task.freeze_encoder_steps = config_lib.by_size(arg.size, smoke=2, tiny=50, base=2000, large=2000)
  config.optimizer.learning_rate = config_lib.by_size(arg.size, tiny=1e-3, base=5e-4, large=5e-4)
  return config
