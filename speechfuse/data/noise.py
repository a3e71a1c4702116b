"""Noise recordings for additive-noise augmentation (speechfuse.data.pipeline's `noise` option).

A `NoiseBank` holds the noise waveforms a training pipeline adds to utterances: every record of a noise dataset
(e.g. MUSAN's noise part through `speechfuse-prepare manifest`), or, with no dataset, generated white, pink and
brown noise (power spectra 1, 1/f and 1/f^2; ten seconds each, fixed seed), which needs no download.
"""

from __future__ import annotations

import numpy as np
import ml_collections

from speechfuse.data import storage
from speechfuse.data.synth import acoustics

GENERATED_SECONDS = 10.0
GENERATED_KINDS = ("white", "pink", "brown")


class NoiseBank:
  """Noise waveforms `noises`, each [samples] float64 at the pipeline's sample rate."""

  def __init__(self, noises: list[np.ndarray]):
    if not noises or any(len(n) == 0 for n in noises):
      raise ValueError("a noise bank needs at least one non-empty noise recording")
    self.noises = noises

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, sample_rate: int) -> NoiseBank:
    """The bank of config (data.noise): the records of noise.corpus's noise.split, or generated noise."""
    if not config.corpus:
      rng = np.random.default_rng(0)
      samples = int(GENERATED_SECONDS * sample_rate)
      return cls([acoustics.colored_noise(rng, samples, acoustics.NOISE_EXPONENTS[kind]).astype(np.float64)
                  for kind in GENERATED_KINDS])
    source = storage.open_split(config.corpus, config.split)
    noises = []
    for i in range(len(source)):
      record = source[i]
      if record["sample_rate"] != sample_rate:
        raise ValueError(f"noise record {record['id']!r} of {config.corpus} is at {record['sample_rate']} Hz, the "
                         f"data at {sample_rate} Hz")
      noises.append(np.asarray(record["audio"], np.float64))
    return cls(noises)
