"""Synthetic speakers: an eSpeak NG English voice, a voice variant, and prosody (pitch, range, rate).

A voice sets the dialect (pronunciation and phone set), a variant the timbre (formants, breathiness,
the Klatt synthesiser for "klatt*"). Held-out splits get (voice, variant) pairs that train never uses,
so their speakers differ from every training speaker in timbre, not only in pitch or rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

# The English voices of eSpeak NG 1.52 (espeak-ng-data/lang/gmw/en*).
VOICES = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan",
          "en-gb-x-gbcwmd")
# Variants from espeak-ng-data/voices/!v that sound like a person (no whisper, robots or effects).
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
            "klatt3", "Andy", "Annie", "belinda", "ed", "edward", "iven", "linda", "max", "paul", "robert",
            "steph", "travis", "victor", "zac")
PITCH = (30, 70)  # eSpeak's base pitch, 0..100 with 50 the variant's own.
PITCH_RANGE = (30, 90)  # intonation range, 0 monotone .. 100.
RATE = (135, 195)  # words per minute; eSpeak's default is 175.


class Speaker(NamedTuple):
  voice: str
  variant: str
  pitch: int
  pitch_range: int
  rate: int

  @property
  def voice_name(self) -> str:
    """What espeak_SetVoiceByName takes, e.g. "en-us+f3"."""
    return f"{self.voice}+{self.variant}"

  @property
  def id(self) -> str:
    """The speaker label stored with each record, e.g. "en-us+f3-p42-i60-r170"."""
    return f"{self.voice_name}-p{self.pitch}-i{self.pitch_range}-r{self.rate}"


def _prosody(rng: np.random.Generator) -> tuple[int, int, int]:
  return (int(rng.integers(PITCH[0], PITCH[1] + 1)), int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
          int(rng.integers(RATE[0], RATE[1] + 1)))


def sample_speakers(rng: np.random.Generator, counts: Mapping[str, int],
                    train_split: str = "train") -> dict[str, list[Speaker]]:
  """Draws `counts[split]` distinct speakers per split.

  Every split other than `train_split` gets its own (voice, variant) pairs, one speaker each, used by
  no other split; `train_split` cycles through the remaining pairs with different prosody.

  Raises:
    ValueError: more held-out speakers than (voice, variant) pairs leave at least one for training.
  """
  pairs = [(voice, variant) for voice in VOICES for variant in VARIANTS]
  order = rng.permutation(len(pairs))
  pairs = [pairs[i] for i in order]
  held_out = sum(n for split, n in counts.items() if split != train_split)
  if held_out >= len(pairs):
    raise ValueError(f"{held_out} held-out speakers need as many (voice, variant) pairs; "
                     f"there are {len(pairs)}, and training needs at least one")
  speakers: dict[str, list[Speaker]] = {}
  next_pair = 0
  for split, count in counts.items():
    if split == train_split:
      continue
    speakers[split] = [Speaker(*pair, *_prosody(rng)) for pair in pairs[next_pair:next_pair + count]]
    next_pair += count
  train_pairs = pairs[next_pair:]
  train: dict[str, Speaker] = {}
  while len(train) < counts.get(train_split, 0):
    speaker = Speaker(*train_pairs[len(train) % len(train_pairs)], *_prosody(rng))
    train.setdefault(speaker.id, speaker)
  if train_split in counts:
    speakers[train_split] = list(train.values())
  return {split: speakers[split] for split in counts}
