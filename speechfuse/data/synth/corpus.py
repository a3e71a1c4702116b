"""The built-in corpus: English read speech synthesised offline with eSpeak NG, stored as a dataset.

    path = build_builtin_corpus("~/data", size="tiny")   # -> ~/data/builtin_tiny_seed0
    train = speechfuse.data.open_split(path, "train")

Splits are train, dev, test_clean and test_other, as LibriSpeech's. Dev and test speakers use voice
timbres that train never hears, and no transcript occurs in two splits. test_other and 30% of train
are reverberated and mixed with noise (see acoustics.py); dev and test_clean are clean. Records
carry the phones (see espeak.py for the inventory) and word and phone timings in seconds.

Everything is planned from the seed in this process (sentences, speakers, degradations); shards of
utterances are then synthesised by worker processes, each shard in a fresh process because eSpeak's
output depends on what the same process synthesised before. The corpus is therefore the same for
any number of workers, and is cached under a fingerprint of the recipe.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import multiprocessing
import os
import pathlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from speechfuse.audio import resample
from speechfuse.data import storage
from speechfuse.data.synth import acoustics, espeak, speakers, text

# Bump when a change to this package changes the audio, text or labels it produces.
RECIPE_VERSION = 2  # 2: datasets store a per-split index (storage.INDEX_DIR)
SPLITS = ("train", "dev", "test_clean", "test_other")
SAMPLE_RATE = 16000
OPTIONAL_FIELDS = ("phonemes", "phoneme_timings", "word_timings")
_REPORTED: set[pathlib.Path] = set()  # corpora found up to date in this process
UTTERANCES_PER_SHARD = 100  # Each shard pays one process start (~1 s), so not much smaller.
NOISY_TRAIN_FRACTION = 0.3
SNR_DB = (5.0, 20.0)
RT60 = (0.2, 0.8)
DRR_DB = (-3.0, 6.0)


class CorpusSize(NamedTuple):
  """Utterances and speakers per split; an utterance lasts about 3 s on average."""

  utterances: Mapping[str, int]
  speakers: Mapping[str, int]


SIZES: Mapping[str, CorpusSize] = {
    # About 10 minutes: the test and tutorial corpus.
    "tiny": CorpusSize(utterances={"train": 160, "dev": 13, "test_clean": 13, "test_other": 13},
                       speakers={"train": 16, "dev": 4, "test_clean": 4, "test_other": 4}),
    # About 2 hours: the quickstart default.
    "small": CorpusSize(utterances={"train": 1900, "dev": 160, "test_clean": 160, "test_other": 160},
                        speakers={"train": 64, "dev": 8, "test_clean": 8, "test_other": 8}),
    # About 10 hours.
    "medium": CorpusSize(utterances={"train": 9500, "dev": 800, "test_clean": 800, "test_other": 800},
                         speakers={"train": 160, "dev": 12, "test_clean": 12, "test_other": 12}),
    # About 100 hours.
    "large": CorpusSize(utterances={"train": 112800, "dev": 2000, "test_clean": 2000, "test_other": 2000},
                        speakers={"train": 400, "dev": 20, "test_clean": 20, "test_other": 20}),
}


class Utterance(NamedTuple):
  """Everything a worker needs to produce one record."""

  id: str
  sentence: text.Sentence
  speaker: speakers.Speaker
  espeak_seed: int
  degradation: acoustics.Degradation | None


class Shard(NamedTuple):
  split: str
  index: int
  utterances: tuple[Utterance, ...]


def _size(size: str) -> CorpusSize:
  if size not in SIZES:
    raise ValueError(f"unknown built-in corpus size {size!r}; choose from {sorted(SIZES)}")
  return SIZES[size]


def plan_corpus(size: str, seed: int) -> dict[str, list[Utterance]]:
  """The utterances of every split, drawn from `seed`: sentences, speakers and degradations.

  Sentences, speakers and acoustics use separate random streams, so that e.g. a change to the
  speaker table leaves the sentences as they were.
  """
  spec = _size(size)
  text_rng, speaker_rng, utterance_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
  grammar = text.Grammar(text.load_vocabulary())
  sentences = iter(text.unique_sentences(grammar, text_rng, sum(spec.utterances.values())))
  split_speakers = speakers.sample_speakers(speaker_rng, spec.speakers)
  plan: dict[str, list[Utterance]] = {}
  for split in SPLITS:
    noisy_fraction = {"train": NOISY_TRAIN_FRACTION, "test_other": 1.0}.get(split, 0.0)
    utterances = []
    for i in range(spec.utterances[split]):
      degradation = None
      if utterance_rng.random() < noisy_fraction:
        degradation = acoustics.draw_degradation(utterance_rng, SNR_DB, RT60, DRR_DB)
      utterances.append(Utterance(
          id=f"{split}-{i:06d}", sentence=next(sentences),
          speaker=split_speakers[split][i % len(split_speakers[split])],
          espeak_seed=int(utterance_rng.integers(2**31)), degradation=degradation))
    plan[split] = utterances
  return plan


def shards(plan: Mapping[str, Sequence[Utterance]]) -> list[Shard]:
  """The plan cut into shards of `UTTERANCES_PER_SHARD`, split by split, in order."""
  return [Shard(split, start // UTTERANCES_PER_SHARD, tuple(plan[split][start:start + UTTERANCES_PER_SHARD]))
          for split in SPLITS for start in range(0, len(plan[split]), UTTERANCES_PER_SHARD)]


def synthesize_shard(shard: Shard) -> tuple[str, list[dict[str, Any]]]:
  """Synthesises the records of a shard, in order; call it in a fresh process for reproducible audio.

  Returns:
    (shard.split, records in the schema of speechfuse.data.schema with OPTIONAL_FIELDS).
  """
  engine = espeak.ESpeak()
  return shard.split, [_record(engine, utterance) for utterance in shard.utterances]


def _record(engine: espeak.ESpeak, utterance: Utterance) -> dict[str, Any]:
  speaker = utterance.speaker
  engine.set_voice(speaker.voice_name, rate=speaker.rate, pitch=speaker.pitch, pitch_range=speaker.pitch_range)
  synthesis = engine.synthesize(utterance.sentence.spoken, seed=utterance.espeak_seed)
  waveform = resample(synthesis.audio.astype(np.float32) / 32768.0, espeak.SAMPLE_RATE, SAMPLE_RATE)
  if utterance.degradation is not None:
    waveform = acoustics.degrade(waveform, utterance.degradation, SAMPLE_RATE)
  audio = np.clip(np.round(waveform * 32768.0), -32768, 32767).astype(np.int16)
  phones = [phone for word in synthesis.phonemes for phone in word]
  return {
      "id": utterance.id,
      "audio": audio,
      "sample_rate": SAMPLE_RATE,
      "text": utterance.sentence.text,
      "speaker": speaker.id,
      "duration": audio.size / SAMPLE_RATE,
      "phonemes": " ".join(name for name, _, _ in phones),
      # Sample positions at eSpeak's rate; the resampled audio is at least as long, in seconds.
      "phoneme_timings": np.array([(s, e) for _, s, e in phones], np.float64).reshape(-1, 2).astype(np.float32)
                         / np.float32(espeak.SAMPLE_RATE),
      "word_timings": np.array(synthesis.words, np.float64).reshape(-1, 2).astype(np.float32)
                      / np.float32(espeak.SAMPLE_RATE),
  }


def fingerprint(size: str, seed: int) -> str:
  """Hash of everything the corpus depends on: recipe version, size, seed, tables, words, eSpeak."""
  recipe = {
      "recipe_version": RECIPE_VERSION,
      "size": size,
      "spec": _size(size)._asdict(),
      "seed": seed,
      "sample_rate": SAMPLE_RATE,
      "utterances_per_shard": UTTERANCES_PER_SHARD,
      "acoustics": [NOISY_TRAIN_FRACTION, SNR_DB, RT60, DRR_DB, acoustics.NOISE_KINDS],
      "speakers": [speakers.VOICES, speakers.VARIANTS, speakers.PITCH, speakers.PITCH_RANGE, speakers.RATE],
      "words_sha256": hashlib.sha256(text.WORDS_PATH.read_bytes()).hexdigest(),
      "espeakng_loader": importlib.metadata.version("espeakng-loader"),
  }
  return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


class _Progress:
  """Prints shards done, utterances and the estimated time left."""

  def __init__(self, name: str, total_shards: int):
    self.name, self.total, self.done, self.start = name, total_shards, 0, time.monotonic()

  def shard_done(self, split: str, num_records: int) -> None:
    self.done += 1
    elapsed = time.monotonic() - self.start
    eta = elapsed / self.done * (self.total - self.done)
    print(f"[{self.name}] shard {self.done}/{self.total} done ({split}, {num_records} utterances), "
          f"{elapsed:.0f} s elapsed, ETA {eta:.0f} s", flush=True)


def build_builtin_corpus(data_dir: str | os.PathLike, size: str = "tiny", seed: int = 0, *,
                         num_workers: int | None = None, force: bool = False) -> pathlib.Path:
  """Builds the built-in corpus in `data_dir/builtin_<size>_seed<seed>` unless it is there already.

  Args:
    data_dir: where datasets live.
    size: a key of SIZES: "tiny" (~10 min of audio), "small" (~2 h), "medium" (~10 h), "large" (~100 h).
    seed: the corpus is a function of (size, seed) and the recipe.
    num_workers: processes synthesising shards at once (default: the CPU count); the corpus does
      not depend on it.
    force: rebuild even if a complete corpus with the same fingerprint exists.

  Returns:
    The dataset path, for speechfuse.data.open_split / dataset_info.
  """
  name = f"builtin_{size}_seed{seed}"
  path = pathlib.Path(data_dir).expanduser() / name
  recipe_fingerprint = fingerprint(size, seed)
  if not force and storage.is_complete(path, recipe_fingerprint):
    if path not in _REPORTED:  # once per process: evaluation opens the corpus for every split
      logging.info("[%s] up to date at %s", name, path)
      _REPORTED.add(path)
    return path
  work = shards(plan_corpus(size, seed))
  progress = _Progress(name, len(work))
  num_workers = max(1, min(num_workers or os.cpu_count() or 1, len(work)))
  # "spawn" and one shard per process: every shard starts from a freshly loaded eSpeak.
  context = multiprocessing.get_context("spawn")
  with context.Pool(num_workers, maxtasksperchild=1) as pool:
    results = pool.imap(synthesize_shard, work)

    def records(split: str) -> Iterator[dict[str, Any]]:
      # write_dataset asks for the splits in SPLITS order, the order of `work`.
      for shard in (s for s in work if s.split == split):
        shard_split, shard_records = next(results)
        if shard_split != split:
          raise RuntimeError(f"expected a shard of {split!r}, got one of {shard_split!r}: splits read out of order")
        progress.shard_done(split, len(shard_records))
        yield from shard_records

    return storage.write_dataset(
        path.parent, name, {split: lambda split=split: records(split) for split in SPLITS},
        optional_fields=OPTIONAL_FIELDS, expected_sample_rate=SAMPLE_RATE, skip_bad=False,
        fingerprint=recipe_fingerprint,
        description=f"speechfuse built-in corpus, size {size}, seed {seed}: English read speech "
                    f"synthesised with eSpeak NG (recipe version {RECIPE_VERSION}).")
