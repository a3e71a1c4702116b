"""Conformer transducer trained with the pruned RNN-T loss (icefall's pruned_transducer_stateless recipe shape).

  python launch/main.py --config=configs/asr_conformer_transducer.py:tiny --workdir=runs/rnnt_tiny

Data, sizes, encoder and optimizer follow configs/asr_conformer_ctc.py (read its comments); this file changes
the task, the model head and what differs for transducers.
"""

from __future__ import annotations

import pathlib

import ml_collections

from speechfuse import config as config_lib
from speechfuse.models import transducer
from speechfuse.tasks import asr


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The recipe at `arg`'s size ("smoke", "tiny", "base", "large"), optionally "<size>,architecture=transformer"."""
  parsed = config_lib.parse_arg(arg, size="tiny", architecture="conformer")
  size = parsed.size
  config = config_lib.load_config(f"{pathlib.Path(__file__).with_name('asr_conformer_ctc.py')}:{arg or ''}")
  ctc_model = config.model
  config.model = transducer.default_config(parsed.architecture, size)
  config.model.encoder = ctc_model.encoder  # the CTC recipe's encoder settings (dynamic chunks, dropout)
  # ... and its front end and SpecAugment: the defaults' heavy masking (10 time masks, 27 bins) left the tiny
  # transducer at 92 % dev CER after 400 steps, the CTC recipe's light masking at 75 % (projects/k2ssl README).
  config.model.frontend = ctc_model.frontend
  config.model.spec_augment = ctc_model.spec_augment
  # Predictor and joiner widths: icefall uses 512 for base-size models; smaller for the CPU sizes.
  config.model.predictor_dim = config_lib.by_size(size, smoke=64, tiny=256, base=512, large=512)
  config.model.joiner_dim = config_lib.by_size(size, smoke=64, tiny=256, base=512, large=512)
  config.model.ctc_head = True  # auxiliary CTC: steadies early training and gives a CTC decoding path too
  config.task = asr.default_config("asr_transducer")
  # Warm-up of the simple / pruned blend, in steps (icefall: 2000 at its batch sizes).
  config.task.warm_step = config_lib.by_size(size, smoke=2, tiny=500, base=2000, large=2000)
  config.task.ctc_weight = 0.1
  config.best_checkpoint_metric = "cer"
  return config
