"""Shared by the SSL target tests: a small dataset whose "phones" are tones, with phoneme timings.

Each utterance is a sequence of segments (40-160 ms); a segment is a pure tone whose frequency names its phone,
plus a little noise, with short silent gaps between segments. MFCC k-means should recover the phones well,
which gives the quality tests a known good case. Lengths are odd sample counts (not multiples of any hop),
as real utterances are.
"""

from __future__ import annotations

import pathlib

import numpy as np

from speechfuse.data import storage

RATE = 16000
PHONES = {"a": 300.0, "e": 700.0, "i": 1500.0, "o": 2600.0, "u": 4000.0}
# Sample counts: a little over 0.1 s (the shortest a dataset accepts) up to 2.6 s, with odd residues mod 160/320.
LENGTHS = {"train": (1_601, 2_079, 7_203, 11_519, 24_427, 41_003), "dev": (1_759, 9_601, 20_170)}


def tone_record(split: str, index: int, num_samples: int) -> dict:
  rng = np.random.default_rng([index, len(split)])
  waveform = rng.normal(0.0, 30.0, num_samples)
  phones, timings = [], []
  position = int(rng.integers(0, 400))
  while True:
    length = int(rng.integers(640, 2560))
    if position + length > num_samples:
      break
    phone = str(rng.choice(list(PHONES)))
    t = np.arange(length) / RATE
    waveform[position:position + length] += 8000.0 * np.sin(2 * np.pi * PHONES[phone] * t)
    phones.append(phone)
    timings.append((position / RATE, (position + length) / RATE))
    position += length + int(rng.integers(0, 480))
  if not phones:  # utterances shorter than a segment still carry one phone
    phones, timings = ["a"], [(0.0, num_samples / RATE)]
    waveform += 8000.0 * np.sin(2 * np.pi * PHONES["a"] * np.arange(num_samples) / RATE)
  return {"id": f"{split}-{index:02d}", "audio": np.clip(waveform, -32768, 32767).astype(np.int16),
          "sample_rate": RATE, "text": "tones", "speaker": f"{split}-speaker", "duration": num_samples / RATE,
          "phonemes": " ".join(phones), "phoneme_timings": np.asarray(timings, np.float32)}


def write_tone_dataset(root: pathlib.Path) -> pathlib.Path:
  splits = {split: (lambda split=split, lengths=lengths: (tone_record(split, i, n) for i, n in enumerate(lengths)))
            for split, lengths in LENGTHS.items()}
  return storage.write_dataset(root, "tones", splits, optional_fields=("phonemes", "phoneme_timings"),
                               skip_bad=False)
