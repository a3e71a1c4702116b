"""Conformer-CTC fine-tuned from a pre-trained encoder (configs/ssl_hubert.py) on a small labeled subset.

  python launch/main.py --config=configs/ssl_hubert.py:tiny --workdir=runs/ssl_tiny
  python launch/main.py --config=configs/ssl_hubert.py:tiny --workdir=runs/ssl_tiny --mode=export  (-> params)
  python launch/main.py --config=configs/finetune_ctc.py:tiny --workdir=runs/ft_tiny \\
      --config.task.init_from=runs/ssl_tiny/<exported params>

The recipe is configs/asr_conformer_ctc.py at the same size (backbone=wav2vec2: with the waveform encoder of
configs/ssl_hubert.py's backbone=wav2vec2 instead), trained on a fixed 10% of the train split
(data.train_fraction, the same utterances for every run), with the encoder frozen for the first updates so
that the new CTC head does not push random gradients into it. Without task.init_from it is the from-scratch
baseline on the same labeled subset (nothing frozen).
"""

from __future__ import annotations

import pathlib

import ml_collections

from speechfuse import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The recipe at `arg`'s size ("smoke", "tiny", "base", "large"), e.g. "tiny,train_fraction=0.1" or
  "base,backbone=wav2vec2" (the encoder of configs/ssl_hubert.py's waveform backbone)."""
  arg = config_lib.parse_arg(arg, size="tiny", train_fraction=0.1, backbone="conformer")
  here = pathlib.Path(__file__)
  config = config_lib.load_config(f"{here.with_name('asr_conformer_ctc.py')}:{arg.size}")
  if arg.backbone != "conformer":
    # The pre-training recipe's encoder, so that its export loads; the waveform encoder reads no fbank (no
    # SpecAugment, no CMVN) and does not stream (its positional convolution spans the utterance).
    config.model.encoder = config_lib.load_config(
        f"{here.with_name('ssl_hubert.py')}:{arg.size},backbone={arg.backbone}").model.encoder
    config.model.encoder.feature_grad_mult = 0.0  # no gradient into the CNN, as fairseq's fine-tuning
    config.model.spec_augment.enabled = False
    config.task.online_chunk_size = 0
  config.data.train_fraction = arg.train_fraction
  # A tenth of the data: fewer updates, and the encoder starts trained.
  config.total_steps = config_lib.by_size(arg.size, smoke=4, tiny=400, base=20_000, large=20_000)
  config.task.freeze_encoder_steps = config_lib.by_size(arg.size, smoke=2, tiny=50, base=2000, large=2000)
  config.optimizer.learning_rate = config_lib.by_size(arg.size, tiny=1e-3, base=5e-4, large=5e-4)
  return config
