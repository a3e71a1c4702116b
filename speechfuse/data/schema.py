"""THE record schema of every speechfuse dataset, and the check that keeps bad records out.

One record is one utterance. Required fields, present in every dataset:

  id           str      unique within its split
  audio        int16    [samples] PCM, mono
  sample_rate  int32    Hz; equal for every record of a dataset
  text         str      transcript, non-empty
  speaker      str      speaker label (disjointness of splits is checked on it)
  duration     float32  seconds, = samples / sample_rate (to within one sample)

Optional fields, declared per dataset (a dataset stores a declared field in every record):

  phonemes         str      space-separated phone symbols
  phoneme_timings  float32  [n_phonemes, 2] start/end seconds, one row per symbol of `phonemes`
  word_timings     float32  [n_words, 2] start/end seconds, one row per word of `text.split()`
  translation      str      target-language text (speech translation, e.g. MuST-C)
  video            uint8    [frames, height, width] grayscale lip ROI, or [frames, height, width, 3] RGB
                            (chosen per dataset with `video_channels`)
  video_fps        float32  frames per second of `video`; stored whenever `video` is declared

On disk each field is a tfds feature (`features`): audio as an int16 `Tensor` rather than tfds's
`Audio` feature, because `Audio` needs TensorFlow and reading must not.

Beside the records each split stores an index (`storage.SplitSource.metadata`): per record, in record
order, its id, num_samples (= len(audio)) and text, so that input pipelines plan batches from lengths
on every host without reading audio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

REQUIRED_FIELDS = ("id", "audio", "sample_rate", "text", "speaker", "duration")
OPTIONAL_FIELDS = ("phonemes", "phoneme_timings", "word_timings", "translation", "video")
TEXT_FIELDS = ("id", "text", "speaker", "phonemes", "translation")

# A record's duration may differ from samples / sample_rate by rounding; one sample of slack.
_DURATION_SLACK_SAMPLES = 1
# Timings may run past the end of the audio by this much (aligners round to their frame rate).
_TIMING_SLACK_SECONDS = 0.05


def check_optional_fields(optional_fields: Sequence[str], video_channels: int = 1) -> tuple[str, ...]:
  """Validates a declaration of optional fields; returns it in schema order, without duplicates."""
  unknown = sorted(set(optional_fields) - set(OPTIONAL_FIELDS))
  if unknown:
    raise ValueError(f"unknown optional fields {unknown}; the schema has {list(OPTIONAL_FIELDS)}")
  if video_channels not in (1, 3):
    raise ValueError(f"video_channels must be 1 (grayscale) or 3 (RGB), got {video_channels}")
  return tuple(f for f in OPTIONAL_FIELDS if f in optional_fields)


def record_fields(optional_fields: Sequence[str]) -> tuple[str, ...]:
  """Every key a record of a dataset with these optional fields carries (video brings video_fps)."""
  fields = REQUIRED_FIELDS + check_optional_fields(optional_fields)
  return fields + ("video_fps",) if "video" in optional_fields else fields


def features(optional_fields: Sequence[str] = (), video_channels: int = 1) -> tfds.features.FeaturesDict:
  """The tfds FeaturesDict of a dataset storing the required fields plus `optional_fields`."""
  optional_fields = check_optional_fields(optional_fields, video_channels)
  spec: dict[str, tfds.features.FeatureConnector] = {
      "id": tfds.features.Text(),
      "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
      "sample_rate": tfds.features.Scalar(dtype=np.int32),
      "text": tfds.features.Text(),
      "speaker": tfds.features.Text(),
      "duration": tfds.features.Scalar(dtype=np.float32),
  }
  for field in ("phonemes", "translation"):
    if field in optional_fields:
      spec[field] = tfds.features.Text()
  for field in ("phoneme_timings", "word_timings"):
    if field in optional_fields:
      spec[field] = tfds.features.Tensor(shape=(None, 2), dtype=np.float32)
  if "video" in optional_fields:
    video_shape = (None, None, None) if video_channels == 1 else (None, None, None, 3)
    # More than one unknown dimension needs a byte encoding in tfds; zlib also shrinks the frames.
    spec["video"] = tfds.features.Tensor(shape=video_shape, dtype=np.uint8, encoding="zlib")
    spec["video_fps"] = tfds.features.Scalar(dtype=np.float32)
  return tfds.features.FeaturesDict(spec)


def waveform_to_int16(waveform: np.ndarray) -> np.ndarray:
  """float waveform [samples] in [-1, 1] -> int16 PCM [samples], clipped.

  Scaled by 32768 so that audio read from an int16 file (which libsndfile divides by 32768)
  comes back to the very same integers.
  """
  scaled = np.round(np.asarray(waveform, dtype=np.float32) * 32768.0)
  return np.clip(scaled, -32768, 32767).astype(np.int16)


def reason_kind(reason: str) -> str:
  """The category of a reason from `check_example` (the text before the first colon)."""
  return reason.split(":", 1)[0]


def check_example(
    example: Mapping[str, Any],
    *,
    expected_sample_rate: int,
    min_duration: float,
    max_duration: float,
    optional_fields: Sequence[str] = (),
    video_channels: int = 1,
) -> str | None:
  """Returns why `example` is not a valid record of the schema, or None if it is.

  A reason reads "<kind>" or "<kind>: <detail>"; reports count records per kind, e.g.
  "empty transcript", "unexpected sample rate: 8000 Hz, expected 16000 Hz",
  "duration outside limits: 42.10 s not in [0.1, 30.0] s".

  Args:
    example: a dict with exactly the keys of `record_fields(optional_fields)`.
    expected_sample_rate: the dataset's sample rate in Hz.
    min_duration, max_duration: the accepted duration range in seconds, inclusive.
    optional_fields: the optional fields the dataset declares; each must be present.
    video_channels: 1 for grayscale video [frames, h, w], 3 for RGB [frames, h, w, 3].
  """
  expected = set(record_fields(optional_fields))
  missing = sorted(expected - set(example))
  if missing:
    return f"missing field: {', '.join(missing)}"
  unexpected = sorted(set(example) - expected)
  if unexpected:
    return f"unexpected field: {', '.join(unexpected)}"
  for field in TEXT_FIELDS:
    if field in example and not isinstance(example[field], str):
      return f"wrong type: {field} is {type(example[field]).__name__}, expected str"
  if not example["id"]:
    return "empty id"
  if not example["speaker"].strip():
    return "empty speaker"
  if not example["text"].strip():
    return "empty transcript"

  for field in ("sample_rate", "duration", "video_fps"):
    if field in example and not isinstance(example[field], (int, float, np.integer, np.floating)):
      return f"wrong type: {field} is {type(example[field]).__name__}, expected a number"

  audio = example["audio"]
  if not isinstance(audio, np.ndarray) or audio.dtype != np.int16 or audio.ndim != 1:
    return f"wrong audio type: expected int16 [samples], got {_describe(audio)}"
  if audio.size == 0:
    return "empty audio"
  sample_rate = example["sample_rate"]
  if sample_rate != expected_sample_rate:
    return f"unexpected sample rate: {sample_rate} Hz, expected {expected_sample_rate} Hz"
  duration = float(example["duration"])
  audio_duration = audio.size / expected_sample_rate
  if abs(duration - audio_duration) > _DURATION_SLACK_SAMPLES / expected_sample_rate + 1e-6:
    return f"duration mismatch: field says {duration:.4f} s, audio holds {audio_duration:.4f} s"
  if not min_duration <= duration <= max_duration:
    return f"duration outside limits: {duration:.2f} s not in [{min_duration}, {max_duration}] s"

  for field, count in (("phoneme_timings", "phonemes"), ("word_timings", "text")):
    if field in example:
      units = example[count].split() if count in example else None
      reason = _check_timings(field, example[field], units, duration)
      if reason:
        return reason
  for field in ("phonemes", "translation"):
    if field in example and not example[field].strip():
      return f"empty {field}"
  if "video" in example:
    return _check_video(example["video"], example["video_fps"], video_channels)
  return None


def _check_timings(field: str, timings: Any, units: list[str] | None, duration: float) -> str | None:
  """Reason why `timings` [n, 2] float32 are not start/end times of `units` within the audio."""
  if not isinstance(timings, np.ndarray) or timings.dtype != np.float32 or timings.ndim != 2 or (
      timings.shape[1] != 2):
    return f"bad timings: {field} must be float32 [n, 2], got {_describe(timings)}"
  if units is not None and timings.shape[0] != len(units):
    return f"bad timings: {field} has {timings.shape[0]} rows for {len(units)} units"
  if timings.size and (np.any(timings[:, 0] > timings[:, 1]) or timings.min() < 0 or (
      timings.max() > duration + _TIMING_SLACK_SECONDS)):
    return f"bad timings: {field} not ordered start <= end within [0, {duration:.2f}] s"
  return None


def _check_video(video: Any, fps: Any, channels: int) -> str | None:
  """Reason why `video` is not uint8 [frames, h, w] (or [..., 3]) at a positive frame rate."""
  rank = 3 if channels == 1 else 4
  if not isinstance(video, np.ndarray) or video.dtype != np.uint8 or video.ndim != rank or (
      rank == 4 and video.shape[-1] != 3):
    layout = "[frames, height, width]" if channels == 1 else "[frames, height, width, 3]"
    return f"bad video: expected uint8 {layout}, got {_describe(video)}"
  if video.shape[0] == 0:
    return "bad video: no frames"
  if not float(fps) > 0:
    return f"bad video: video_fps must be positive, got {fps}"
  return None


def _describe(value: Any) -> str:
  if isinstance(value, np.ndarray):
    return f"{value.dtype} {list(value.shape)}"
  return type(value).__name__
