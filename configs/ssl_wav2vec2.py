"""wav2vec 2.0 pre-training on unlabeled audio: contrastive prediction of quantized conv features.

  python launch/main.py --config=configs/ssl_wav2vec2.py:tiny --workdir=runs/w2v_tiny

Args: size (smoke, tiny, base, large). The encoder, data, schedule and budget are configs/ssl_hubert.py's with
backbone=wav2vec2 (base = wav2vec 2.0 base: 12 x 768, conv features 512); the objective is tasks.ssl_contrastive
(2 x 320 Gumbel codebook, 100 distractors, diversity weight 0.1, feature penalty 10), mask 0.65 x 10 frames as
wav2vec 2.0. No targets are written first. Fine-tune from its export as from configs/ssl_hubert.py's.
"""

from __future__ import annotations

import pathlib

import ml_collections

from speechfuse import config as config_lib
from speechfuse.tasks import ssl_contrastive


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The recipe at `arg`'s size, e.g. "tiny"."""
  arg = config_lib.parse_arg(arg, size="tiny")
  config = config_lib.load_config(f"{pathlib.Path(__file__).with_name('ssl_hubert.py')}:{arg.size},backbone=wav2vec2")
  config.task = ssl_contrastive.default_config()
  config.model.mask.mask_prob = 0.65  # wav2vec 2.0
  config.model.mask.mask_length = 10
  config.best_checkpoint_metric = "contrastive_accuracy"
  config.best_checkpoint_mode = "max"
  return config
