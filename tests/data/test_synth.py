"""Tests of the built-in corpus: eSpeak binding, text, speakers, acoustics, and the built dataset."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from speechfuse.data import dataset_info, open_split
from speechfuse.data.synth import acoustics, corpus, espeak, speakers, text

HELD_OUT = ("dev", "test_clean", "test_other")
# A few utterances per split: enough to exercise every code path of a build in seconds.
_MICRO = corpus.CorpusSize(utterances={"train": 3, "dev": 1, "test_clean": 1, "test_other": 2},
                           speakers={"train": 2, "dev": 1, "test_clean": 1, "test_other": 1})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return corpus.build_builtin_corpus(tmp_path_factory.mktemp("data"), "tiny", num_workers=2)


@pytest.fixture(scope="module")
def records(tiny):
  return {split: [open_split(tiny, split)[i] for i in range(len(open_split(tiny, split)))]
          for split in corpus.SPLITS}


@pytest.fixture(scope="module")
def engine():
  return espeak.ESpeak()


def test_tiny_is_about_ten_minutes_with_enough_speakers(tiny):
  info = dataset_info(tiny)
  assert list(info["splits"]) == list(corpus.SPLITS)
  assert 8 / 60 < info["total_hours"] < 12 / 60
  assert info["splits"]["train"]["hours"] > 0.75 * info["total_hours"]
  assert info["speakers"] >= 24
  assert all(not s["skipped"] for s in info["splits"].values())


def test_every_split_carries_its_index(tiny, records):
  for split in corpus.SPLITS:
    metadata = open_split(tiny, split).metadata()
    assert metadata["id"] == [r["id"] for r in records[split]]
    assert metadata["text"] == [r["text"] for r in records[split]]
    assert metadata["num_samples"].tolist() == [len(r["audio"]) for r in records[split]]


def test_held_out_speakers_and_sentences_are_disjoint_from_train(records):
  train_texts = {r["text"] for r in records["train"]}
  train_timbres = {r["speaker"].rsplit("-p", 1)[0] for r in records["train"]}
  seen_speakers = {r["speaker"] for r in records["train"]}
  for split in HELD_OUT:
    split_speakers = {r["speaker"] for r in records[split]}
    assert not split_speakers & seen_speakers, split
    assert not {s.rsplit("-p", 1)[0] for s in split_speakers} & train_timbres, split
    assert not {r["text"] for r in records[split]} & train_texts, split
    seen_speakers |= split_speakers


def test_timings_are_ordered_and_within_the_audio(records):
  for record in (r for split in records.values() for r in split):
    phones, words = record["phoneme_timings"], record["word_timings"]
    assert record["phonemes"].split() and len(record["phonemes"].split()) == len(phones)
    assert len(words) == len(record["text"].split())
    for timings in (phones, words):
      assert np.all(timings[:, 0] < timings[:, 1])
      assert np.all(timings[1:, 0] >= timings[:-1, 1] - 1e-6)  # no overlap, in order
      assert timings.min() >= 0 and timings.max() <= record["duration"] + 1e-6


def _snr_proxy_db(audio: np.ndarray) -> float:
  """Loud-frame to quiet-frame energy ratio: high for clean speech with pauses, low under noise."""
  frames = audio[: audio.size // 400 * 400].astype(np.float64).reshape(-1, 400)
  energy = np.mean(frames**2, axis=1) + 1.0
  return float(10 * np.log10(np.percentile(energy, 95) / np.percentile(energy, 10)))


def test_test_other_is_noisier_than_test_clean(records):
  clean = np.median([_snr_proxy_db(r["audio"]) for r in records["test_clean"]])
  other = np.median([_snr_proxy_db(r["audio"]) for r in records["test_other"]])
  assert other < clean - 5


def test_second_call_hits_the_cache(tiny, caplog):
  marker = tiny / "COMPLETE.json"
  before = marker.stat().st_mtime_ns
  corpus._REPORTED.discard(tiny)
  with caplog.at_level("INFO"):
    assert corpus.build_builtin_corpus(tiny.parent, "tiny") == tiny
    assert corpus.build_builtin_corpus(tiny.parent, "tiny") == tiny
  assert sum("up to date" in r.getMessage() for r in caplog.records) == 1  # said once per process
  assert marker.stat().st_mtime_ns == before


class _Rebuilt(Exception):
  """Raised instead of planning a corpus: proves that a build started."""


def test_rebuilds_when_the_recipe_changes_or_when_forced(tiny, monkeypatch):
  def plan(*args):
    raise _Rebuilt(args)

  monkeypatch.setattr(corpus, "plan_corpus", plan)
  assert corpus.build_builtin_corpus(tiny.parent, "tiny") == tiny
  with pytest.raises(_Rebuilt):
    corpus.build_builtin_corpus(tiny.parent, "tiny", force=True)
  monkeypatch.setattr(corpus, "RECIPE_VERSION", corpus.RECIPE_VERSION + 1)
  with pytest.raises(_Rebuilt):
    corpus.build_builtin_corpus(tiny.parent, "tiny")


def test_a_shard_is_identical_in_two_fresh_processes(monkeypatch):
  monkeypatch.setitem(corpus.SIZES, "micro", _MICRO)
  shard = corpus.shards(corpus.plan_corpus("micro", 0))[-1]  # test_other: degraded too
  assert any(u.degradation for u in shard.utterances) and len(shard.utterances) > 1
  with multiprocessing.get_context("spawn").Pool(2, maxtasksperchild=1) as pool:
    (_, first), (_, second) = pool.map(corpus.synthesize_shard, [shard, shard], chunksize=1)
  for a, b in zip(first, second, strict=True):
    assert a["audio"].tobytes() == b["audio"].tobytes()
    np.testing.assert_array_equal(a["phoneme_timings"], b["phoneme_timings"])


def test_plan_depends_only_on_the_seed():
  first, second = corpus.plan_corpus("tiny", 0), corpus.plan_corpus("tiny", 0)
  other = corpus.plan_corpus("tiny", 1)
  assert first == second and first != other
  assert corpus.fingerprint("tiny", 0) != corpus.fingerprint("tiny", 1)
  assert sum(u.degradation is not None for u in first["test_other"]) == len(first["test_other"])
  assert not any(u.degradation for split in ("dev", "test_clean") for u in first[split])


def test_unknown_size_is_rejected(tmp_path):
  with pytest.raises(ValueError, match="unknown built-in corpus size 'huge'"):
    corpus.build_builtin_corpus(tmp_path, "huge")


def test_engine_gives_word_and_phone_timings_that_tile_each_word(engine):
  engine.set_voice("en-gb-x-rp+m3", rate=170, pitch=50, pitch_range=50)
  sentence = "she was reading an interesting book in the garden"
  synthesis = engine.synthesize(sentence + ".", seed=1)
  assert synthesis.audio.dtype == np.int16 and synthesis.audio.size > espeak.SAMPLE_RATE
  assert len(synthesis.words) == len(synthesis.phonemes) == len(sentence.split())
  for (start, end), phones in zip(synthesis.words, synthesis.phonemes):
    assert phones[0][1] == start and phones[-1][2] == end
    assert all(a[2] == b[1] for a, b in zip(phones, phones[1:]))
  assert [p for w in synthesis.phonemes for p, _, _ in w] == engine.phonemize(sentence)


def test_phonemize_uses_ipa_without_stress(engine):
  engine.set_voice("en-us", rate=175, pitch=50, pitch_range=50)
  assert engine.phonemize("the quick brown fox") == [
      "ð", "ə", "k", "w", "ɪ", "k", "b", "ɹ", "aʊ", "n", "f", "ɑː", "k", "s"]


def test_unknown_voice_raises(engine):
  with pytest.raises(espeak.ESpeakError, match="no-such-voice"):
    engine.set_voice("no-such-voice", rate=175, pitch=50, pitch_range=50)


@pytest.mark.parametrize("spoken, alone, starts", [
    (["ð", "eə", "w", "ɜː", "ɹ"], [["ð", "eə"], ["w", "ɜː"]], [0, 2]),  # linking r joins the word before
    (["a", "t", "a"], [["a", "t"], ["eɪ"]], [0, 2]),  # "a" alone is the letter's name
    (["ɪ", "n", "ð", "ə"], [["ɪ", "n"], ["ð", "ə"]], [0, 2]),
])
def test_split_points_align_merged_words(spoken, alone, starts):
  assert espeak._split_points(spoken, alone) == starts


def test_vocabulary_has_over_a_thousand_lemmas_and_sentences_use_it():
  vocabulary = text.load_vocabulary()
  lemmas = (len(vocabulary.nouns) + len(vocabulary.verbs) + len(vocabulary.adjectives) + len(vocabulary.adverbs)
            + len(vocabulary.prepositions))
  assert lemmas >= 1000 and len(vocabulary.words()) >= 2000
  sentences = text.unique_sentences(text.Grammar(vocabulary), np.random.default_rng(0), 300)
  assert len({s.text for s in sentences}) == 300
  assert all(set(s.words) <= vocabulary.words() for s in sentences)
  assert any(s.question for s in sentences) and all(s.spoken[-1] in ".?" for s in sentences)


def test_vocabulary_errors_name_the_line(tmp_path):
  path = tmp_path / "words.tsv"
  path.write_text("noun\tcat\tcats\nverb\tt\tjump\n")
  with pytest.raises(ValueError, match=r"words.tsv:2"):
    text.load_vocabulary(path)


def test_speakers_of_held_out_splits_have_unseen_timbres():
  counts = {"train": 50, "dev": 10, "test_clean": 10, "test_other": 10}
  drawn = speakers.sample_speakers(np.random.default_rng(0), counts)
  assert {split: len(s) for split, s in drawn.items()} == counts
  timbres = {split: {s.voice_name for s in group} for split, group in drawn.items()}
  for a in counts:
    for b in counts:
      assert a == b or not timbres[a] & timbres[b]
  assert len({s.id for group in drawn.values() for s in group}) == sum(counts.values())
  with pytest.raises(ValueError, match="held-out"):
    speakers.sample_speakers(np.random.default_rng(0), {"train": 1, "dev": 1000})


def test_degrade_keeps_length_and_reaches_the_snr():
  rng = np.random.default_rng(0)
  speech = np.sin(np.arange(16000) * 0.05).astype(np.float32) * 0.5
  for noise in acoustics.NOISE_KINDS:
    degradation = acoustics.Degradation(noise=noise, snr_db=10.0, rt60=0.3, drr_db=40.0, seed=3)
    degraded = acoustics.degrade(speech, degradation, 16000)
    assert degraded.shape == speech.shape and np.abs(degraded).max() <= 0.95 + 1e-6
    # With almost no reverberation (DRR 40 dB) the residual is the noise.
    noise_power = np.mean((degraded - speech) ** 2)
    assert 8.5 < 10 * np.log10(np.mean(speech**2) / noise_power) < 11.5, noise
  draw = acoustics.draw_degradation(rng, corpus.SNR_DB, corpus.RT60, corpus.DRR_DB)
  assert corpus.SNR_DB[0] <= draw.snr_db <= corpus.SNR_DB[1] and draw.noise in acoustics.NOISE_KINDS


def test_noise_colours_have_their_spectral_slope():
  rng = np.random.default_rng(0)
  for exponent in (0.0, 1.0, 2.0):
    noise = acoustics.colored_noise(rng, 2**15, exponent)
    spectrum = np.abs(np.fft.rfft(noise)) ** 2
    low, high = spectrum[100:1000].mean(), spectrum[5000:10000].mean()
    assert np.sqrt(np.mean(noise**2)) == pytest.approx(1.0, rel=1e-3)
    assert (low / high > 3) == (exponent > 0)
  room = acoustics.room_impulse_response(rng, 16000, rt60=0.5, drr_db=0.0)
  assert room.size == 8000 and room[0] == 1.0 and np.sum(room[1:] ** 2) == pytest.approx(1.0, rel=1e-4)
