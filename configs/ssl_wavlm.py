"""WavLM pre-training: HuBERT's masked prediction with gated relative position bias and utterance mixing.

  python launch/main.py --config=configs/ssl_wavlm.py:tiny --workdir=runs/wavlm_tiny

Args: size (smoke, tiny, base, large), iteration=1|2. configs/ssl_hubert.py with backbone=wav2vec2 (the same
targets, written first on the same 50 Hz grid) plus WavLM's two changes (Chen et al., 2022): the encoder's gated
relative position bias (320 buckets up to 800 frames, nn.relative_bias) and denoising by utterance mixing (20 %
of training utterances get up to half their length of another utterance at [-5, 5] dB; targets unchanged).
"""

from __future__ import annotations

import pathlib

import ml_collections

from speechfuse import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The recipe at `arg`'s size, e.g. "tiny", "base,iteration=2"."""
  arg = config_lib.parse_arg(arg, size="tiny", iteration=1)
  config = config_lib.load_config(f"{pathlib.Path(__file__).with_name('ssl_hubert.py')}:{arg.size},"
                                  f"backbone=wav2vec2,iteration={arg.iteration}")
  config.model.encoder.relative_position_buckets = 320
  config.model.encoder.max_relative_distance = 800
  config.task.mix_prob = 0.2
  return config
