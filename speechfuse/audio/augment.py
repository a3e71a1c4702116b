"""Data augmentation: SpecAugment on the device; speed perturbation and additive noise on the host.

SpecAugment (Park et al. 2019) masks random frequency bands and time spans of the features inside the
jitted step, independently per example. Time masks are adaptive as in "SpecAugment on large scale
datasets" (Park et al. 2020): each utterance gets floor(multiplicity_ratio * length) time masks (at most
`num_time_masks`), each up to floor(size_ratio * length) frames wide, so that a long utterance is not
under-masked nor a short one wiped out. The defaults are those of the Conformer recipe (Gulati et al.
2020: 2 frequency masks of up to 27 bins, 10 time masks of up to 5% of the utterance) with Park et al.'s
multiplicity ratio 0.04: every utterance of 2.5 s (250 frames) or more gets the full 10 masks, a 1 s one
gets 4 masks of up to 5 frames.

WavLM's utterance mixing (Chen et al. 2022) also runs inside the jitted step: it overlaps a segment of another
utterance of the batch onto some utterances and changes nothing else, so the pseudo-labels stay those of the
primary speaker.

Speed perturbation and noise run per utterance on the host, in the data pipeline, before the front end.
"""

from __future__ import annotations

import fractions
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from speechfuse.audio.io import resample


def spec_augment(
    rng: jax.Array,
    features: jax.Array,
    frame_lengths: jax.Array,
    *,
    num_freq_masks: int = 2,
    max_freq_width: int = 27,
    num_time_masks: int = 10,
    time_mask_multiplicity_ratio: float = 0.04,
    max_time_width_ratio: float = 0.05,
    max_time_width: int | None = None,
    adaptive: bool = True,
    mask_value: float = 0.0,
) -> jax.Array:
  """Masks random frequency bands and time spans of each example, inside its true length only.

  A mask's width is drawn uniformly from {0, ..., max width} and its start uniformly among the positions
  where it fits, independently for every mask of every example. Frequency masks span all of an example's
  valid frames; time masks span all bins. Frames at or past `frame_lengths` are never changed.

  Args:
    rng: PRNG key.
    features: [batch, frames, bins].
    frame_lengths: [batch] integer number of valid frames per example.
    num_freq_masks: frequency masks per example (static).
    max_freq_width: largest frequency mask, in bins (capped at `bins`).
    num_time_masks: time masks per example; with `adaptive` the most any example gets (static).
    time_mask_multiplicity_ratio: with `adaptive`, an example of length L gets
      min(num_time_masks, floor(ratio * L)) time masks.
    max_time_width_ratio: a time mask is at most floor(ratio * L) frames wide (Park et al. 2020's size
      ratio; Park et al. 2019's upper bound p).
    max_time_width: if set, also caps the time mask width in frames (Park et al. 2019's T).
    adaptive: scale the number of time masks with each example's length; if False every example gets
      `num_time_masks`.
    mask_value: what masked cells become (0.0 is the mean of globally normalised features).

  Returns:
    [batch, frames, bins] masked features, same dtype.

  Ratios are applied in exact integer arithmetic: each is replaced by its nearest fraction with a
  denominator of at most 1000 (0.04 is exactly 1/25), so floor(ratio * L) never loses a frame to
  float rounding.
  """
  batch, frames, bins = features.shape
  freq_key, time_key = jax.random.split(rng)
  lengths = jnp.clip(jnp.asarray(frame_lengths, jnp.int32), 0, frames)[:, None]  # [batch, 1]

  freq_width_cap = jnp.full((batch, 1), min(max_freq_width, bins), jnp.int32)
  freq_masked = _random_span_mask(
      freq_key, num_freq_masks, jnp.full((batch, 1), num_freq_masks), freq_width_cap,
      jnp.full((batch, 1), bins), bins)  # [batch, bins]

  time_width_cap = _floor_ratio(lengths, max_time_width_ratio)
  if max_time_width is not None:
    time_width_cap = jnp.minimum(time_width_cap, max_time_width)
  time_width_cap = jnp.minimum(time_width_cap, lengths)
  if adaptive:
    time_mask_count = jnp.minimum(_floor_ratio(lengths, time_mask_multiplicity_ratio), num_time_masks)
  else:
    time_mask_count = jnp.full((batch, 1), num_time_masks)
  time_masked = _random_span_mask(
      time_key, num_time_masks, time_mask_count, time_width_cap, lengths, frames)  # [batch, frames]

  valid = jnp.arange(frames)[None, :] < lengths  # [batch, frames]
  masked = (time_masked[:, :, None] | freq_masked[:, None, :]) & valid[:, :, None]
  return jnp.where(masked, jnp.asarray(mask_value, features.dtype), features)


def _floor_ratio(lengths: jax.Array, ratio: float) -> jax.Array:
  """floor(ratio * lengths) in integers, with `ratio` as its nearest fraction of denominator <= 1000."""
  fraction = fractions.Fraction(ratio).limit_denominator(1000)
  return lengths * fraction.numerator // fraction.denominator


def _random_span_mask(
    key: jax.Array,
    max_count: int,
    count: jax.Array,
    max_width: jax.Array,
    extent: jax.Array,
    size: int,
) -> jax.Array:
  """Union of `count` random spans per row, each inside [0, extent).

  Args:
    key: PRNG key.
    max_count: static number of spans drawn per row; only the first `count` are used.
    count: [batch, 1] spans used per row.
    max_width: [batch, 1] widths are uniform on {0, ..., max_width}; must be <= extent.
    extent: [batch, 1] spans start uniformly on {0, ..., extent - width}.
    size: static length of the masked axis.

  Returns:
    [batch, size] bool, True where some used span covers the position.
  """
  batch = count.shape[0]
  width_key, start_key = jax.random.split(key)
  width = jax.random.randint(width_key, (batch, max_count), 0, max_width + 1)
  start = jax.random.randint(start_key, (batch, max_count), 0, extent - width + 1)
  used = jnp.arange(max_count)[None, :] < count  # [batch, max_count]
  position = jnp.arange(size)[None, None, :]
  covered = (position >= start[:, :, None]) & (position < (start + width)[:, :, None]) & used[:, :, None]
  return covered.any(axis=1)


def mix_utterances(
    rng: jax.Array,
    audio: jax.Array,
    lengths: jax.Array,
    *,
    prob: float,
    max_ratio: float = 0.5,
    energy_db: tuple[float, float] = (-5.0, 5.0),
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Adds a segment of another utterance of the batch to each utterance with probability `prob`.

  WavLM's utterance mixing (Chen et al., "WavLM", IEEE JSTSP 2022). With probability `prob` (never when L_i = 0 or
  the batch holds one utterance), utterance i of L_i valid samples is mixed with:
    interferer j, uniform over the other utterances of the batch;
    segment length n, uniform on {0, ..., min(floor(max_ratio * L_i), L_j)} samples;
    start s in i, uniform on {0, ..., L_i - n}; source start r in j, uniform on {0, ..., L_j - n};
    energy ratio e ~ U(energy_db) dB and gain = sqrt(E_i / (10^(e / 10) E_j)), with E the mean square over the
    valid samples of the whole utterance (the convention of the WavLM-style fairseq UtteranceMixingDataset and
    NeMo's WavLMAugmentation; not over the overlap), or 0 when E_j = 0;
    mixed[i, s:s + n] = audio[i, s:s + n] + gain * audio[j, r:r + n].
  Every draw and energy comes from the unmixed batch. Samples outside [s, s + n), padding included, are returned
  unchanged; so is every utterance not mixed.

  Args:
    rng: PRNG key.
    audio: [batch, samples] float waveforms.
    lengths: [batch] integer number of valid samples per utterance.
    prob: probability that an utterance is mixed (WavLM: 0.2).
    max_ratio: the segment is at most floor(max_ratio * L_i) samples, in exact integer arithmetic as in
      `spec_augment` (static).
    energy_db: range of 10 * log10(E_i / (gain^2 E_j)).

  Returns:
    (mixed [batch, samples] of the input's dtype, info): info holds [batch] arrays mixed (bool), interferer (j),
    start (s), source_start (r), length (n; 0 when not mixed), gain (0 when not mixed) and energy_ratio_db (e).
  """
  batch, samples = audio.shape
  keys = jax.random.split(rng, 6)
  lengths = jnp.clip(jnp.asarray(lengths, jnp.int32), 0, samples)
  interferer = (jnp.arange(batch) + jax.random.randint(keys[0], (batch,), 1, max(batch, 2))) % batch
  mixed = (jax.random.uniform(keys[1], (batch,)) < prob) & (lengths > 0) & (batch > 1)
  source_lengths = lengths[interferer]
  max_length = jnp.minimum(_floor_ratio(lengths, max_ratio), source_lengths)
  length = jnp.where(mixed, jax.random.randint(keys[2], (batch,), 0, max_length + 1), 0)
  start = jax.random.randint(keys[3], (batch,), 0, lengths - length + 1)
  source_start = jax.random.randint(keys[4], (batch,), 0, source_lengths - length + 1)
  ratio_db = jax.random.uniform(keys[5], (batch,), minval=energy_db[0], maxval=energy_db[1])

  x = jnp.asarray(audio, jnp.float32)
  positions = jnp.arange(samples)[None, :]
  energy = jnp.sum(jnp.where(positions < lengths[:, None], x * x, 0.0), axis=1) / jnp.maximum(lengths, 1)
  source_energy = energy[interferer]
  gain = jnp.sqrt(energy / (jnp.maximum(source_energy, jnp.finfo(jnp.float32).tiny) * 10.0 ** (ratio_db / 10.0)))
  gain = jnp.where(mixed & (source_energy > 0), gain, 0.0)
  offset = positions - start[:, None]  # [batch, samples]: position inside the segment
  inside = (offset >= 0) & (offset < length[:, None])
  source = jnp.take_along_axis(x[interferer], jnp.clip(offset + source_start[:, None], 0, samples - 1), axis=1)
  out = jnp.where(inside, x + gain[:, None] * source, x).astype(jnp.asarray(audio).dtype)
  info = {"mixed": mixed, "interferer": interferer, "start": start, "source_start": source_start, "length": length,
          "gain": gain, "energy_ratio_db": ratio_db}
  return out, info


def speed_perturbed_length(num_samples: int, sample_rate: int, factor: float) -> int:
  """Samples that `speed_perturb` returns: ceil(num_samples * sample_rate / round(sample_rate * factor)).

  For 16 kHz and the factors 0.9 / 1.0 / 1.1 this is ceil(num_samples / factor); Lhotse rounds instead,
  so the two differ by at most one sample.
  """
  return -(-num_samples * sample_rate // round(sample_rate * factor))


def speed_perturb(waveform: np.ndarray, sample_rate: int, factor: float) -> np.ndarray:
  """Plays `waveform [samples]` `factor` times faster, changing pitch and tempo together (Kaldi, Lhotse).

  The signal is treated as if it had been recorded at round(sample_rate * factor) Hz and resampled to
  `sample_rate`: a factor of 1.1 shortens it by 1/1.1 and moves every frequency up by 10%.

  Returns:
    [speed_perturbed_length(samples, sample_rate, factor)] waveform of the input's float dtype.
  """
  if factor <= 0:
    raise ValueError(f"speed perturbation factor must be positive, got {factor}")
  return resample(waveform, round(sample_rate * factor), sample_rate)


def random_speed_perturb(
    rng: np.random.Generator,
    waveform: np.ndarray,
    sample_rate: int,
    factors: Sequence[float] = (0.9, 1.0, 1.1),
) -> np.ndarray:
  """`speed_perturb` with a factor drawn uniformly from `factors` (Ko et al. 2015's 0.9 / 1.0 / 1.1)."""
  return speed_perturb(waveform, sample_rate, factors[rng.integers(len(factors))])


def add_noise(
    rng: np.random.Generator, waveform: np.ndarray, noise: np.ndarray, snr_db: float
) -> np.ndarray:
  """Adds `noise` scaled so that the signal-to-noise power ratio is `snr_db`.

  The noise is tiled (if shorter) and cropped at a random offset to the waveform's length. Powers are
  mean squares over the whole utterance. A silent waveform or silent noise admits no finite scale, so
  the waveform comes back unchanged rather than as NaN.

  Args:
    rng: picks the noise offset.
    waveform: [samples] float.
    noise: [noise_samples] float, at the waveform's sample rate.
    snr_db: 10 * log10(signal power / added noise power).

  Returns:
    [samples] noisy waveform of the input's float dtype.
  """
  waveform = np.asarray(waveform)
  noise = np.asarray(noise, np.float64)
  if noise.size == 0:
    raise ValueError("noise holds no samples")
  num_samples = waveform.shape[-1]
  offset = rng.integers(noise.size)
  repeats = -(-(offset + num_samples) // noise.size)
  segment = np.tile(noise, repeats)[offset:offset + num_samples]
  signal_power = np.mean(np.square(waveform, dtype=np.float64)) if num_samples else 0.0
  noise_power = np.mean(np.square(segment)) if num_samples else 0.0
  if signal_power == 0.0 or noise_power == 0.0:
    return waveform.copy()
  scale = np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
  return (waveform + scale * segment).astype(waveform.dtype)


def random_add_noise(
    rng: np.random.Generator,
    waveform: np.ndarray,
    noises: Sequence[np.ndarray],
    snr_range: tuple[float, float] = (0.0, 20.0),
) -> np.ndarray:
  """`add_noise` with a noise picked uniformly from `noises` and an SNR uniform in `snr_range` (dB)."""
  noise = noises[rng.integers(len(noises))]
  return add_noise(rng, waveform, noise, rng.uniform(*snr_range))
