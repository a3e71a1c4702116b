"""Tests of speechfuse.data.schema: the reasons check_example gives, and the int16 conversion."""

from __future__ import annotations

import numpy as np
import pytest

from speechfuse.data import schema

RATE = 16000
ALL_OPTIONAL = ("phonemes", "phoneme_timings", "word_timings", "translation", "video")


def _example(**overrides) -> dict:
  audio = np.ones(RATE // 2, np.int16)
  example = {
      "id": "u1", "audio": audio, "sample_rate": RATE, "text": "two words", "speaker": "s", "duration": 0.5,
      "phonemes": "t uw w", "phoneme_timings": np.array([[0, .1], [.1, .2], [.2, .3]], np.float32),
      "word_timings": np.array([[0, .2], [.2, .5]], np.float32), "translation": "zwei Wörter",
      "video": np.zeros((12, 4, 4), np.uint8), "video_fps": 25.0,
  }
  return {**example, **overrides}


def _check(example: dict, optional_fields=ALL_OPTIONAL) -> str | None:
  return schema.check_example(example, expected_sample_rate=RATE, min_duration=0.1, max_duration=1.0,
                              optional_fields=optional_fields)


def test_a_valid_example_passes():
  assert _check(_example()) is None
  required = {k: v for k, v in _example().items() if k in schema.REQUIRED_FIELDS}
  assert _check(required, optional_fields=()) is None


@pytest.mark.parametrize("overrides, reason", [
    ({"text": " "}, "empty transcript"),
    ({"speaker": ""}, "empty speaker"),
    ({"id": 7}, "wrong type: id is int, expected str"),
    ({"duration": "0.5"}, "wrong type: duration is str, expected a number"),
    ({"audio": np.ones(8000, np.float32)}, "wrong audio type: expected int16 [samples], got float32 [8000]"),
    ({"audio": np.ones((2, 4000), np.int16)}, "wrong audio type: expected int16 [samples], got int16 [2, 4000]"),
    ({"audio": np.zeros(0, np.int16), "duration": 0.0}, "empty audio"),
    ({"sample_rate": 22050}, "unexpected sample rate: 22050 Hz, expected 16000 Hz"),
    ({"duration": 0.7}, "duration mismatch: field says 0.7000 s, audio holds 0.5000 s"),
    ({"audio": np.ones(32000, np.int16), "duration": 2.0}, "duration outside limits: 2.00 s not in [0.1, 1.0] s"),
    ({"audio": np.ones(800, np.int16), "duration": 0.05}, "duration outside limits: 0.05 s not in [0.1, 1.0] s"),
    ({"phoneme_timings": np.zeros((2, 2), np.float32)}, "bad timings: phoneme_timings has 2 rows for 3 units"),
    ({"word_timings": np.array([[0, .2], [.4, .3]], np.float32)},
     "bad timings: word_timings not ordered start <= end within [0, 0.50] s"),
    ({"word_timings": np.array([[0, .2], [.2, .9]], np.float32)},
     "bad timings: word_timings not ordered start <= end within [0, 0.50] s"),
    ({"word_timings": np.zeros((2, 2), np.float64)},
     "bad timings: word_timings must be float32 [n, 2], got float64 [2, 2]"),
    ({"translation": ""}, "empty translation"),
    ({"video": np.zeros((12, 4, 4, 3), np.uint8)},
     "bad video: expected uint8 [frames, height, width], got uint8 [12, 4, 4, 3]"),
    ({"video": np.zeros((0, 4, 4), np.uint8)}, "bad video: no frames"),
    ({"video_fps": 0.0}, "bad video: video_fps must be positive, got 0.0"),
    ({"pitch": 1.0}, "unexpected field: pitch"),
])
def test_reasons(overrides, reason):
  assert _check(_example(**overrides)) == reason


def test_declared_fields_must_be_present():
  example = _example()
  del example["video_fps"], example["phonemes"]
  assert _check(example) == "missing field: phonemes, video_fps"
  with pytest.raises(ValueError, match=r"unknown optional fields \['pitch'\]"):
    schema.features(("pitch",))


def test_reason_kind_is_the_text_before_the_colon():
  assert schema.reason_kind("unreadable audio: cannot read 'a:b.wav'") == "unreadable audio"
  assert schema.reason_kind("empty transcript") == "empty transcript"


def test_int16_conversion_is_exact_for_int16_sources_and_clips():
  pcm = np.array([-32768, -1, 0, 1, 32767], np.int16)
  np.testing.assert_array_equal(schema.waveform_to_int16(pcm / 32768.0), pcm)
  np.testing.assert_array_equal(schema.waveform_to_int16(np.array([-2.0, 2.0])), [-32768, 32767])
