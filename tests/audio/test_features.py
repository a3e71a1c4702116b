"""Kaldi-compatible fbank / MFCC / deltas against kaldi-native-fbank and numpy references."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import kaldi_native_fbank as knf
import numpy as np
import pytest
import scipy.signal

from speechfuse.audio import features
from speechfuse.audio import normalize


def _kaldi(waveform: np.ndarray, sample_rate: int, options: knf.FbankOptions | knf.MfccOptions) -> np.ndarray:
  """kaldi-native-fbank features [frames, dim] of one waveform, no dither."""
  options.frame_opts.dither = 0.0
  options.frame_opts.samp_freq = sample_rate
  computer = knf.OnlineFbank(options) if isinstance(options, knf.FbankOptions) else knf.OnlineMfcc(options)
  computer.accept_waveform(sample_rate, waveform.tolist())
  computer.input_finished()
  return np.array([computer.get_frame(i) for i in range(computer.num_frames_ready)], np.float32)


def _kaldi_fbank(waveform: np.ndarray, sample_rate: int, num_mel_bins: int, **frame_options) -> np.ndarray:
  options = knf.FbankOptions()
  options.mel_opts.num_bins = num_mel_bins
  for name, value in frame_options.items():
    setattr(options.frame_opts, name, value)
  return _kaldi(waveform, sample_rate, options)


def _white_noise(rng: np.random.Generator, num_samples: int) -> np.ndarray:
  return np.round(1000.0 * rng.standard_normal(num_samples)).astype(np.float32)


def _speech_like(rng: np.random.Generator, sample_rate: int, seconds: float) -> np.ndarray:
  """A voiced-speech stand-in on the int16 scale: harmonics of a moving pitch through vowel formants.

  Quarter-second syllables (Hann envelopes) cycle through four vowels' formant resonators; 10% of the
  signal is a pause holding only the background noise and 5% is digital silence. The background is a
  1-LSB noise floor and the result is rounded to integers, as in any 16-bit recording. That floor matters
  for a 1e-3 comparison: float32 FFT rounding error is about float-epsilon times the frame's norm in every
  bin, so a bin 120 dB below its frame's peak (possible only in noiseless synthetic audio) carries errors
  of 0.1 or more in log in both kaldi-native-fbank and here, against a float64 reference; with a
  recording's noise floor both stay within about 5e-4 of it.
  """
  n = int(sample_rate * seconds)
  t = np.arange(n) / sample_rate
  pitch = 110.0 + 60.0 * np.sin(2 * np.pi * 0.7 * t) + 30.0 * t / seconds
  phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
  source = sum(np.sin(k * phase) / k for k in range(1, sample_rate // 400))
  vowels = [(700, 1200, 2600), (300, 2300, 3000), (500, 900, 2400), (400, 1900, 2550)]
  syllable = sample_rate // 4
  voiced = np.zeros(n)
  for i, start in enumerate(range(0, n, syllable)):
    segment = source[start : start + syllable]
    for formant in vowels[i % len(vowels)]:
      radius, angle = np.exp(-np.pi * 80.0 / sample_rate), 2 * np.pi * formant / sample_rate
      segment = scipy.signal.lfilter([1 - radius], [1, -2 * radius * np.cos(angle), radius**2], segment)
    voiced[start : start + syllable] = segment * np.hanning(len(segment))
  signal = voiced * (8000.0 / np.abs(voiced).max()) + rng.standard_normal(n)
  signal[int(0.3 * n) : int(0.4 * n)] = rng.standard_normal(int(0.4 * n) - int(0.3 * n))
  signal[int(0.6 * n) : int(0.65 * n)] = 0.0
  return np.round(signal).astype(np.float32)


@pytest.mark.parametrize("sample_rate", [8000, 16000])
@pytest.mark.parametrize("num_mel_bins", [40, 80])
def test_fbank_matches_kaldi_on_white_noise(sample_rate, num_mel_bins):
  rng = np.random.default_rng(sample_rate + num_mel_bins)
  window = sample_rate // 40
  for num_samples in (window, window + 1, sample_rate // 3 + 17, 2 * sample_rate):
    waveform = _white_noise(rng, num_samples)
    expected = _kaldi_fbank(waveform, sample_rate, num_mel_bins)
    actual = np.asarray(features.fbank(waveform, sample_rate, num_mel_bins))
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize("sample_rate", [8000, 16000])
@pytest.mark.parametrize("num_mel_bins", [40, 80])
def test_fbank_matches_kaldi_on_speech_like_audio(sample_rate, num_mel_bins):
  rng = np.random.default_rng(sample_rate * num_mel_bins)
  for seconds in (0.5, 1.37, 3.0):
    waveform = _speech_like(rng, sample_rate, seconds)
    expected = _kaldi_fbank(waveform, sample_rate, num_mel_bins)
    actual = np.asarray(features.fbank(waveform, sample_rate, num_mel_bins))
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-3)


def _float64_fbank(waveform: np.ndarray, sample_rate: int, num_mel_bins: int) -> np.ndarray:
  """Kaldi's default fbank pipeline in float64 numpy, frame by frame."""
  window, shift, fft_size = features.frame_sizes(sample_rate, 25.0, 10.0)
  povey = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / (window - 1))) ** 0.85
  rows = []
  for start in range(0, len(waveform) - window + 1, shift):
    frame = waveform[start : start + window].astype(np.float64)
    frame = frame - frame.mean()
    frame = (frame - 0.97 * np.concatenate([frame[:1], frame[:-1]])) * povey
    rows.append(np.abs(np.fft.rfft(frame, fft_size)) ** 2)
  mel = np.array(rows) @ features.mel_banks(num_mel_bins, fft_size, sample_rate).astype(np.float64)
  return np.log(np.maximum(mel, np.finfo(np.float32).eps))


@pytest.mark.parametrize("sample_rate", [8000, 16000])
def test_fbank_is_within_float32_rounding_of_float64(sample_rate):
  # Independent of kaldi-native-fbank: what is left of the 1e-3 above is float32 rounding on both sides.
  waveform = _speech_like(np.random.default_rng(sample_rate), sample_rate, 2.0)
  actual = np.asarray(features.fbank(waveform, sample_rate, 80))
  np.testing.assert_allclose(actual, _float64_fbank(waveform, sample_rate, 80), rtol=0, atol=1e-3)


def test_digital_silence_floors_at_log_float_epsilon_like_kaldi():
  # All-zero frames have zero power; both implementations floor it at float epsilon before the log.
  waveform = np.zeros(4000, np.float32)
  expected = _kaldi_fbank(waveform, 16000, 40)
  actual = np.asarray(features.fbank(waveform, 16000, 40))
  np.testing.assert_array_equal(actual, np.full_like(expected, np.log(np.float32(features.FLOAT_EPSILON))))
  np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


def test_int16_input_equals_float_input():
  waveform = _white_noise(np.random.default_rng(0), 3000)
  np.testing.assert_array_equal(
      np.asarray(features.fbank(waveform.astype(np.int16))), np.asarray(features.fbank(waveform))
  )


@pytest.mark.parametrize(
    "ours, theirs",
    [({"window_type": w}, {"window_type": w}) for w in features.WINDOW_TYPES]
    + [
        ({"snip_edges": False}, {"snip_edges": False}),
        ({"round_to_power_of_two": False}, {"round_to_power_of_two": False}),
        (
            {"preemphasis_coefficient": 0.0, "remove_dc_offset": False},
            {"preemph_coeff": 0.0, "remove_dc_offset": False},
        ),
        ({"frame_length_ms": 20.0, "frame_shift_ms": 7.5}, {"frame_length_ms": 20.0, "frame_shift_ms": 7.5}),
    ],
)
def test_frame_options_match_kaldi(ours, theirs):
  rng = np.random.default_rng(1)
  for num_samples in (400, 5001):
    waveform = _white_noise(rng, num_samples)
    expected = _kaldi_fbank(waveform, 16000, 40, **theirs)
    actual = np.asarray(features.fbank(waveform, 16000, 40, **ours))
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-3)


def test_snip_edges_false_reflects_short_waveforms_like_kaldi():
  # Fewer samples than a window: Kaldi reflects the waveform (repeatedly) to fill the frames.
  waveform = _white_noise(np.random.default_rng(2), 300)
  expected = _kaldi_fbank(waveform, 16000, 23, snip_edges=False)
  actual = np.asarray(features.fbank(waveform, 16000, 23, snip_edges=False))
  assert actual.shape == expected.shape == (2, 23)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    "ours",
    [
        {"use_power": False},
        {"use_energy": True},
        {"use_energy": True, "raw_energy": False},
        {"use_energy": True, "energy_floor": 1e9},
        {"low_freq": 100.0, "high_freq": -400.0},
        {"low_freq": 0.0, "high_freq": 7000.0},
    ],
)
def test_spectral_options_match_kaldi(ours):
  waveform = _white_noise(np.random.default_rng(3), 8000)
  options = knf.FbankOptions()
  options.mel_opts.num_bins = 40
  for name, value in ours.items():
    setattr(options.mel_opts if name in ("low_freq", "high_freq") else options, name, value)
  expected = _kaldi(waveform, 16000, options)
  actual = np.asarray(features.fbank(waveform, 16000, 40, **ours))
  assert actual.shape == expected.shape
  if ours.get("energy_floor"):
    assert np.all(actual[:, 0] == np.float32(np.log(1e9)))  # the floor is active on every frame
  np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-3)


def test_linear_mel_energies_match_kaldi_relatively():
  waveform = _white_noise(np.random.default_rng(4), 4000)
  options = knf.FbankOptions()
  options.mel_opts.num_bins = 40
  options.use_log_fbank = False
  expected = _kaldi(waveform, 16000, options)
  actual = np.asarray(features.fbank(waveform, 16000, 40, use_log_fbank=False))
  np.testing.assert_allclose(actual, expected, rtol=1e-3)


@pytest.mark.parametrize("sample_rate", [8000, 16000])
def test_mel_banks_match_kaldi(sample_rate):
  fft_size = features.frame_sizes(sample_rate, 25.0, 10.0)[2]
  for num_mel_bins in (23, 40, 80):
    mel_options = knf.MelBanksOptions()
    mel_options.num_bins = num_mel_bins
    frame_options = knf.FrameExtractionOptions()
    frame_options.samp_freq = sample_rate
    expected = knf.MelBanks(mel_options, frame_options).get_matrix()  # [bins, fft_size // 2 + 1]
    actual = features.mel_banks(num_mel_bins, fft_size, sample_rate)
    assert actual.shape == (fft_size // 2 + 1, num_mel_bins)
    np.testing.assert_allclose(actual.T, expected, rtol=0, atol=3e-5)  # Kaldi builds them in float32


def test_frame_sizes_and_counts_match_kaldi():
  assert features.frame_sizes(16000, 25.0, 10.0) == (400, 160, 512)
  assert features.frame_sizes(8000, 25.0, 10.0) == (200, 80, 256)
  assert features.frame_sizes(16000, 25.0, 10.0, round_to_power_of_two=False) == (400, 160, 400)
  waveform = _white_noise(np.random.default_rng(5), 2000)
  for snip_edges in (True, False):
    for num_samples in (1, 79, 80, 81, 159, 399, 400, 401, 559, 560, 561, 2000):
      expected = _kaldi_fbank(waveform[:num_samples], 16000, 23, snip_edges=snip_edges).shape[0]
      assert features.num_frames(num_samples, 400, 160, snip_edges) == expected, (snip_edges, num_samples)
      lengths = np.array([num_samples])
      assert features.num_frames(jnp.asarray(lengths), 400, 160, snip_edges)[0] == expected


@pytest.mark.parametrize("snip_edges", [True, False])
def test_padded_batch_equals_unpadded(snip_edges):
  rng = np.random.default_rng(6)
  lengths = [16000, 5231, 400, 399, 0, 11111]
  waves = [_speech_like(rng, 16000, n / 16000) if n >= 4000 else _white_noise(rng, n) for n in lengths]
  batch = np.zeros((len(waves), max(lengths)), np.float32)
  for row, wave in zip(batch, waves):
    row[: len(wave)] = wave
    row[len(wave) :] = 5000.0  # loud padding: it must not leak into any valid frame
  feats, frame_lengths = features.fbank(batch, lengths=np.array(lengths), snip_edges=snip_edges)
  feats, frame_lengths = np.asarray(feats), np.asarray(frame_lengths)
  assert feats.shape == (len(lengths), features.num_frames(max(lengths), 400, 160, snip_edges), 80)
  for wave, row, count in zip(waves, feats, frame_lengths):
    assert count == features.num_frames(len(wave), 400, 160, snip_edges)
    if count:
      unpadded = np.asarray(features.fbank(wave, snip_edges=snip_edges))
      np.testing.assert_allclose(row[:count], unpadded, rtol=0, atol=1e-5)
    assert not row[count:].any()


def test_fbank_jits_with_traced_lengths():
  rng = np.random.default_rng(7)
  batch = _white_noise(rng, 2 * 8000).reshape(2, 8000)
  compute = jax.jit(lambda w, n: features.fbank(w, 16000, 40, lengths=n))
  for lengths in ([8000, 3000], [1000, 7999]):
    feats, frame_lengths = compute(batch, jnp.asarray(lengths))
    eager, eager_lengths = features.fbank(batch, 16000, 40, lengths=np.array(lengths))
    np.testing.assert_array_equal(frame_lengths, eager_lengths)
    np.testing.assert_allclose(feats, eager, rtol=0, atol=1e-4)  # XLA may fuse and reorder float32 sums
  assert compute._cache_size() == 1  # one compilation for both sets of lengths


def test_dither_needs_a_key_and_is_reproducible():
  waveform = _white_noise(np.random.default_rng(8), 4000)
  with pytest.raises(ValueError, match="dither"):
    features.fbank(waveform, dither=1.0)
  key = jax.random.key(0)
  first = np.asarray(features.fbank(waveform, dither=1.0, rng=key))
  np.testing.assert_array_equal(first, np.asarray(features.fbank(waveform, dither=1.0, rng=key)))
  other = np.asarray(features.fbank(waveform, dither=1.0, rng=jax.random.key(1)))
  clean = np.asarray(features.fbank(waveform))
  assert np.abs(first - other).max() > 0
  assert np.abs(first - clean).max() < 0.1  # dither of 1 LSB barely moves loud noise
  silent = np.asarray(features.fbank(np.zeros(4000, np.float32), dither=1.0, rng=key))
  assert silent.min() > np.log(features.FLOAT_EPSILON) + 5  # dither's point: no log(epsilon) on silence


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: features.fbank(np.zeros(399)), "zero frames"),
        (lambda: features.fbank(np.zeros((2, 399)), lengths=np.array([1, 2])), "zero frames"),
        (lambda: features.fbank(np.zeros(1000), frame_length_ms=0.05), "window"),
        (lambda: features.fbank(np.zeros(1000), window_type="kaiser"), "window_type"),
        (lambda: features.fbank(np.zeros(1000), low_freq=9000.0), "mel range"),
        (lambda: features.fbank(np.zeros(1000), num_mel_bins=256), "cover no FFT bin"),
        (lambda: features.fbank(np.zeros(1000), lengths=np.array([5])), "lengths"),
        (lambda: features.fbank(np.zeros((2, 1000)), lengths=np.array([5])), "lengths"),
        (lambda: features.fbank(np.zeros((1, 2, 1000))), "waveform"),
        (lambda: features.fbank(np.zeros(1000), sample_rate=0), "sample_rate"),
        (lambda: features.mfcc(np.zeros(1000), num_ceps=30), "num_ceps"),
    ],
)
def test_bad_input_raises_clear_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call()


@pytest.mark.parametrize(
    "sample_rate, ours",
    [(8000, {}), (16000, {})]
    + [
        (16000, ours)
        for ours in (
            {"use_energy": False},
            {"cepstral_lifter": 0.0},
            {"raw_energy": False},
            {"num_mel_bins": 40, "num_ceps": 20},
        )
    ],
)
def test_mfcc_matches_kaldi(sample_rate, ours):
  rng = np.random.default_rng(9)
  options = knf.MfccOptions()
  for name, value in ours.items():
    setattr(options.mel_opts, "num_bins", value) if name == "num_mel_bins" else setattr(options, name, value)
  for waveform in (_white_noise(rng, sample_rate), _speech_like(rng, sample_rate, 1.3)):
    expected = _kaldi(waveform, sample_rate, options)
    actual = np.asarray(features.mfcc(waveform, sample_rate, **ours))
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-3)


def _kaldi_deltas(feats: np.ndarray, order: int, window: int) -> np.ndarray:
  """Kaldi's DeltaFeatures, written out loop by loop in float64."""
  scales = [np.ones(1)]
  for _ in range(order):
    previous = scales[-1]
    current = np.zeros(len(previous) + 2 * window)
    for j in range(-window, window + 1):
      for k in range(len(previous)):
        current[j + k + window] += j * previous[k]
    scales.append(current / sum(j * j for j in range(-window, window + 1)))
  frames, dim = feats.shape
  out = np.zeros((frames, dim * (order + 1)))
  for t in range(frames):
    for i, scale in enumerate(scales):
      half = (len(scale) - 1) // 2
      for j in range(-half, half + 1):
        out[t, i * dim : (i + 1) * dim] += scale[j + half] * feats[min(max(t + j, 0), frames - 1)]
  return out


@pytest.mark.parametrize("order, window", [(2, 2), (1, 3), (3, 1)])
def test_add_deltas_matches_kaldi_formula(order, window):
  rng = np.random.default_rng(10)
  for frames in (1, 3, 40):
    feats = rng.standard_normal((frames, 5)).astype(np.float32)
    expected = _kaldi_deltas(feats.astype(np.float64), order, window)
    np.testing.assert_allclose(features.add_deltas(feats, order, window), expected, rtol=1e-5, atol=1e-5)


def test_add_deltas_batch_honours_frame_lengths():
  rng = np.random.default_rng(11)
  feats = rng.standard_normal((3, 30, 4)).astype(np.float32)
  frame_lengths = np.array([30, 7, 0])
  out = np.asarray(features.add_deltas(feats, frame_lengths=frame_lengths))
  assert out.shape == (3, 30, 12)
  for row, feat, count in zip(out, feats, frame_lengths):
    if count:
      np.testing.assert_allclose(row[:count], _kaldi_deltas(feat[:count].astype(np.float64), 2, 2), atol=1e-5)
    assert not row[count:].any()


def test_mfcc_39_is_mfcc_with_deltas_batched():
  rng = np.random.default_rng(12)
  waves = [_speech_like(rng, 16000, 1.0), _speech_like(rng, 16000, 0.6)]
  batch = np.zeros((2, 16000), np.float32)
  for row, wave in zip(batch, waves):
    row[: len(wave)] = wave
  feats, frame_lengths = features.mfcc_39(batch, lengths=np.array([len(w) for w in waves]))
  assert feats.shape == (2, 98, 39)
  for row, wave, count in zip(np.asarray(feats), waves, np.asarray(frame_lengths)):
    single = np.asarray(features.mfcc_39(wave))
    assert single.shape == (count, 39)
    np.testing.assert_allclose(row[:count], single, rtol=0, atol=1e-4)
    np.testing.assert_allclose(single[:, :13], np.asarray(features.mfcc(wave)), rtol=0, atol=1e-6)
    assert not row[count:].any()


def _batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  lengths = np.array([12000, 7000, 3100])
  batch = np.zeros((3, 12000), np.float32)
  for row, n in zip(batch, lengths):
    row[:n] = _speech_like(rng, 16000, n / 16000)
  return batch, lengths


def test_frontend_fbank_with_global_and_utterance_normalization():
  batch, lengths = _batch(np.random.default_rng(13))
  plain, frame_lengths = features.fbank(batch, lengths=lengths)
  stats = normalize.accumulate(normalize.CMVNStats.empty(80), plain, frame_lengths)
  mean, std = tuple(stats.mean().tolist()), tuple(stats.std().tolist())
  cases = {
      "none": plain,
      "global": normalize.apply_global_cmvn(plain, mean, std, frame_lengths),
      "utterance": normalize.per_utterance_cmvn(plain, frame_lengths),
  }
  for normalization, expected in cases.items():
    frontend = features.LogMelFrontend(normalization=normalization, mean=mean, std=std)
    apply = jax.jit(lambda w, n, frontend=frontend: frontend.apply({}, w, n))
    feats, out_lengths = apply(batch, lengths)
    np.testing.assert_array_equal(out_lengths, frame_lengths)
    np.testing.assert_allclose(feats, expected, rtol=0, atol=1e-3)
    assert not np.asarray(feats)[2, frame_lengths[2] :].any()


def test_frontend_mfcc39_dtype_and_dither_stream():
  batch, lengths = _batch(np.random.default_rng(14))
  frontend = features.LogMelFrontend(kind="mfcc39", dither=1.0, dtype=jnp.bfloat16)
  feats, frame_lengths = frontend.apply({}, batch, lengths)
  assert feats.shape == (3, 73, 39) and feats.dtype == jnp.bfloat16
  expected, _ = features.mfcc_39(batch, lengths=lengths)
  np.testing.assert_allclose(np.asarray(feats, np.float32), expected, rtol=1e-2, atol=0.1)
  dithered, _ = frontend.apply({}, batch, lengths, deterministic=False, rngs={"dither": jax.random.key(0)})
  assert np.abs(np.asarray(dithered, np.float32) - np.asarray(feats, np.float32)).max() > 0


def test_frontend_rejects_bad_configuration():
  batch, lengths = _batch(np.random.default_rng(15))
  with pytest.raises(ValueError, match="mean and std"):
    features.LogMelFrontend(normalization="global").apply({}, batch, lengths)
  with pytest.raises(ValueError, match="80"):
    features.LogMelFrontend(normalization="global", mean=(0.0,) * 40, std=(1.0,) * 40).apply({}, batch, lengths)
  with pytest.raises(ValueError, match="kind"):
    features.LogMelFrontend(kind="spectrogram").apply({}, batch, lengths)


def test_frontend_is_a_first_layer():
  class Model(nn.Module):

    @nn.compact
    def __call__(self, waveform, lengths):
      feats, frame_lengths = features.LogMelFrontend(num_mel_bins=40)(waveform, lengths)
      return nn.Dense(8)(feats), frame_lengths

  batch, lengths = _batch(np.random.default_rng(16))
  variables = Model().init(jax.random.key(0), batch, lengths)
  assert set(variables["params"]) == {"Dense_0"}  # the front end has no parameters
  out, frame_lengths = jax.jit(Model().apply)(variables, batch, lengths)
  assert out.shape == (3, 73, 8) and list(frame_lengths) == [73, 42, 17]
