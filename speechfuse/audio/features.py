"""Kaldi-compatible log-mel filterbank and MFCC features in JAX, and the Flax front-end module.

The numerics follow Kaldi's compute-fbank-feats / compute-mfcc-feats as kaldi-native-fbank implements
them, frame by frame: extract (snip_edges, or reflection at the edges), dither, DC removal, raw log
energy, pre-emphasis (the first sample uses itself as its predecessor), window, zero-pad to the FFT
size, power spectrum, triangular mel banks, log floored at float32 epsilon. Every step is per frame, so
a padded utterance gets exactly the frames of the unpadded one; frames beyond an utterance's true
length are zeroed. Constants (window, mel banks, DCT, lifter) are computed in numpy at trace time.

Waveforms are on the int16 scale ([-32768, 32767]) as Kaldi expects; `dither` is in those units too.
Shapes are static: the number of output frames depends only on the padded length, `lengths` may be
traced.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from speechfuse.audio import normalize

WINDOW_TYPES = ("povey", "hann", "hanning", "hamming", "rectangular", "blackman")
FLOAT_EPSILON = float(np.finfo(np.float32).eps)  # Kaldi's log floor, std::numeric_limits<float>::epsilon()
_HIGHEST = jax.lax.Precision.HIGHEST  # TF32 matmuls on GPUs would cost ~1e-3 relative on mel energies


def frame_sizes(
    sample_rate: float, frame_length_ms: float, frame_shift_ms: float, round_to_power_of_two: bool = True
) -> tuple[int, int, int]:
  """(window_size, window_shift, fft_size) in samples, computed as Kaldi does (float32, truncated).

  Raises:
    ValueError: the sample rate or frame config gives an empty window or a zero shift.
  """
  if sample_rate <= 0:
    raise ValueError(f"sample_rate must be positive, got {sample_rate}")
  # Kaldi computes samp_freq * 0.001f * ms in float32 and truncates; float64 would round 0.1 ms cases
  # differently.
  millis = np.float32(sample_rate) * np.float32(0.001)
  window_size = int(millis * np.float32(frame_length_ms))
  window_shift = int(millis * np.float32(frame_shift_ms))
  if window_size < 2 or window_shift < 1:
    raise ValueError(
        f"frame_length_ms={frame_length_ms} and frame_shift_ms={frame_shift_ms} at sample_rate={sample_rate} "
        f"give a window of {window_size} samples and a shift of {window_shift}; need at least 2 and 1"
    )
  fft_size = 1 << (window_size - 1).bit_length() if round_to_power_of_two else window_size
  return window_size, window_shift, fft_size


def num_frames(num_samples: Any, window_size: int, window_shift: int, snip_edges: bool = True) -> Any:
  """Kaldi's frame count for `num_samples` (an int, a numpy or a jax integer array).

  snip_edges: 1 + (n - window) // shift, 0 if n < window; otherwise n / shift rounded to nearest.
  """
  if snip_edges:
    return (num_samples >= window_size) * (1 + (num_samples - window_size) // window_shift)
  return (num_samples + window_shift // 2) // window_shift


def window_function(window_type: str, window_size: int, blackman_coeff: float = 0.42) -> np.ndarray:
  """The analysis window [window_size] float32 (computed in float64 as Kaldi does).

  "hann" is the periodic Hann window (kaldi-native-fbank's), "hanning" Kaldi's symmetric one, and
  "povey" is hanning ** 0.85, which goes to zero at the edges like Hann but is closer to Hamming.
  """
  i = np.arange(window_size, dtype=np.float64)
  a = 2 * np.pi / (window_size - 1)
  if window_type == "povey":
    window = (0.5 - 0.5 * np.cos(a * i)) ** 0.85
  elif window_type == "hann":
    window = 0.5 - 0.5 * np.cos(2 * np.pi / window_size * i)
  elif window_type == "hanning":
    window = 0.5 - 0.5 * np.cos(a * i)
  elif window_type == "hamming":
    window = 0.54 - 0.46 * np.cos(a * i)
  elif window_type == "rectangular":
    window = np.ones_like(i)
  elif window_type == "blackman":
    window = blackman_coeff - 0.5 * np.cos(a * i) + (0.5 - blackman_coeff) * np.cos(2 * a * i)
  else:
    raise ValueError(f"unknown window_type {window_type!r}; choose from {WINDOW_TYPES}")
  return window.astype(np.float32)


def mel_scale(freq: np.ndarray | float) -> np.ndarray:
  """Kaldi's mel scale, 1127 ln(1 + f / 700)."""
  return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)


def mel_banks(
    num_mel_bins: int, fft_size: int, sample_rate: float, low_freq: float = 20.0, high_freq: float = 0.0
) -> np.ndarray:
  """Kaldi's triangular mel filters as a matrix [fft_size // 2 + 1, num_mel_bins] float32.

  Bin m spans mels (left, right) = mel(low) + (m, m + 2) * delta with delta = (mel(high) - mel(low)) /
  (num_mel_bins + 1), peaking at 1 in its centre; the weight of FFT bin k is taken at its centre
  frequency k * sample_rate / fft_size. As in Kaldi the Nyquist bin gets no weight. high_freq <= 0 is
  an offset from the Nyquist frequency.

  Raises:
    ValueError: bad frequency range, fewer than 3 bins, or a bin that covers no FFT bin.
  """
  nyquist = 0.5 * sample_rate
  high = high_freq if high_freq > 0 else nyquist + high_freq
  if not 0.0 <= low_freq < nyquist or not 0.0 < high <= nyquist or high <= low_freq:
    raise ValueError(
        f"bad mel range: low_freq={low_freq}, high_freq={high_freq} (-> {high}) with Nyquist {nyquist}"
    )
  if num_mel_bins < 3:
    raise ValueError(f"num_mel_bins must be at least 3, got {num_mel_bins}")
  mel_low, mel_high = mel_scale(low_freq), mel_scale(high)
  delta = (mel_high - mel_low) / (num_mel_bins + 1)
  edges = mel_low + delta * np.arange(num_mel_bins + 2)
  left, center, right = edges[:-2], edges[1:-1], edges[2:]
  fft_mels = mel_scale(sample_rate / fft_size * np.arange(fft_size // 2))[:, None]
  rising = (fft_mels - left) / (center - left)
  falling = (right - fft_mels) / (right - center)
  inside = (fft_mels > left) & (fft_mels < right)
  weights = np.where(inside, np.where(fft_mels <= center, rising, falling), 0.0)
  empty = np.flatnonzero(~inside.any(axis=0))
  if empty.size:
    raise ValueError(
        f"mel bins {empty.tolist()} cover no FFT bin: num_mel_bins={num_mel_bins} is too large for "
        f"fft_size={fft_size} between {low_freq} and {high} Hz"
    )
  nyquist_row = np.zeros((1, num_mel_bins))
  return np.concatenate([weights, nyquist_row]).astype(np.float32)


def dct_matrix(num_ceps: int, num_mel_bins: int) -> np.ndarray:
  """The first num_ceps rows of Kaldi's orthonormal DCT-II, transposed: [num_mel_bins, num_ceps] float32."""
  n = np.arange(num_mel_bins, dtype=np.float64)
  k = np.arange(num_ceps, dtype=np.float64)[:, None]
  dct = np.sqrt(2.0 / num_mel_bins) * np.cos(np.pi / num_mel_bins * (n + 0.5) * k)
  dct[0] = np.sqrt(1.0 / num_mel_bins)
  return dct.T.astype(np.float32)


def lifter_coefficients(num_ceps: int, cepstral_lifter: float) -> np.ndarray:
  """Kaldi's sinusoidal liftering weights 1 + Q/2 sin(pi i / Q), [num_ceps] float32."""
  i = np.arange(num_ceps, dtype=np.float64)
  return (1.0 + 0.5 * cepstral_lifter * np.sin(np.pi * i / cepstral_lifter)).astype(np.float32)


def _as_batch(waveform: Any, lengths: Any) -> tuple[jax.Array, jax.Array, bool]:
  """([batch, samples] float32, lengths [batch] int32 clipped to the padded length, was_single)."""
  waveform = jnp.asarray(waveform).astype(jnp.float32)
  if waveform.ndim == 1:
    if lengths is not None:
      raise ValueError("lengths is only for a padded batch [batch, samples]; got one waveform [samples]")
    return waveform[None], jnp.full((1,), waveform.shape[0], jnp.int32), True
  if waveform.ndim != 2:
    raise ValueError(f"waveform must be [samples] or [batch, samples], got shape {waveform.shape}")
  if lengths is None:
    return waveform, jnp.full((waveform.shape[0],), waveform.shape[1], jnp.int32), False
  lengths = jnp.asarray(lengths)
  if lengths.shape != waveform.shape[:1]:
    raise ValueError(f"lengths must be [batch] = {waveform.shape[:1]}, got shape {lengths.shape}")
  return waveform, jnp.clip(lengths.astype(jnp.int32), 0, waveform.shape[1]), False


def _extract_frames(
    waveform: jax.Array, lengths: jax.Array, window_size: int, window_shift: int, snip_edges: bool
) -> tuple[jax.Array, jax.Array]:
  """Cuts [batch, samples] into frames [batch, frames, window_size]; returns them and frame_lengths [batch].

  Raises:
    ValueError: the padded length gives no frame at all.
  """
  padded = waveform.shape[1]
  frames = num_frames(padded, window_size, window_shift, snip_edges)
  if frames <= 0:
    raise ValueError(
        f"{padded} samples give zero frames with a window of {window_size} samples and a shift of "
        f"{window_shift} (snip_edges={snip_edges}); the audio is too short for this frame config"
    )
  frame_lengths = num_frames(lengths, window_size, window_shift, snip_edges).astype(jnp.int32)
  offsets = np.arange(window_size)
  if snip_edges:
    index = window_shift * np.arange(frames)[:, None] + offsets  # static: the same for every row
    return waveform[:, index], frame_lengths
  # Frames are centred on (f + 1/2) * shift and reflected at each utterance's own edges (Kaldi's
  # s -> -s - 1 and s -> 2n - 1 - s, repeated), so padding never enters a valid frame.
  starts = window_shift * np.arange(frames) + window_shift // 2 - window_size // 2
  index = jnp.asarray(starts[:, None] + offsets)[None]  # [1, frames, window]
  period = jnp.maximum(2 * lengths, 1)[:, None, None]
  folded = jnp.mod(index, period)
  index = jnp.where(folded < lengths[:, None, None], folded, period - 1 - folded)
  gathered = jnp.take_along_axis(waveform, index.reshape(waveform.shape[0], -1), axis=1)
  return gathered.reshape(waveform.shape[0], frames, window_size), frame_lengths


def _power_spectrum_frames(
    waveform: Any,
    lengths: Any,
    *,
    sample_rate: float,
    frame_length_ms: float,
    frame_shift_ms: float,
    dither: float,
    rng: jax.Array | None,
    preemphasis_coefficient: float,
    remove_dc_offset: bool,
    window_type: str,
    snip_edges: bool,
    round_to_power_of_two: bool,
    raw_energy: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, int, bool]:
  """The shared front half of fbank and MFCC.

  Returns:
    (power [batch, frames, fft_size // 2 + 1], log_energy [batch, frames], frame_lengths [batch],
    fft_size, was_single). log_energy is the raw (pre-emphasis, pre-window) log energy if raw_energy,
    else that of the windowed frame, floored at float epsilon as in Kaldi.
  """
  if not 0.0 <= preemphasis_coefficient <= 1.0:
    raise ValueError(f"preemphasis_coefficient must be in [0, 1], got {preemphasis_coefficient}")
  if dither != 0.0 and rng is None:
    raise ValueError(f"dither={dither} needs an rng key")
  window_size, window_shift, fft_size = frame_sizes(
      sample_rate, frame_length_ms, frame_shift_ms, round_to_power_of_two
  )
  batch, lengths, single = _as_batch(waveform, lengths)
  frames, frame_lengths = _extract_frames(batch, lengths, window_size, window_shift, snip_edges)
  if dither != 0.0:
    frames = frames + dither * jax.random.normal(rng, frames.shape, jnp.float32)
  if remove_dc_offset:
    frames = frames - jnp.mean(frames, axis=-1, keepdims=True)
  raw_frames = frames
  if preemphasis_coefficient != 0.0:
    previous = jnp.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)
    frames = frames - preemphasis_coefficient * previous
  frames = frames * window_function(window_type, window_size)
  energy_frames = raw_frames if raw_energy else frames
  log_energy = jnp.log(jnp.maximum(jnp.sum(energy_frames * energy_frames, axis=-1), FLOAT_EPSILON))
  spectrum = jnp.fft.rfft(frames, n=fft_size, axis=-1)
  power = jnp.square(spectrum.real) + jnp.square(spectrum.imag)
  return power, log_energy, frame_lengths, fft_size, single


def _zero_padding_frames(features: jax.Array, frame_lengths: jax.Array) -> jax.Array:
  """features [batch, frames, dim] with the frames at or beyond frame_lengths [batch] set to zero."""
  valid = jnp.arange(features.shape[1])[None, :] < frame_lengths[:, None]
  return jnp.where(valid[..., None], features, 0.0)


def _finish(
    features: jax.Array, frame_lengths: jax.Array, single: bool
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Zeroes frames beyond each frame_length and unbatches a single waveform's result."""
  features = _zero_padding_frames(features, frame_lengths)
  return features[0] if single else (features, frame_lengths)


def _floor_log_energy(log_energy: jax.Array, energy_floor: float) -> jax.Array:
  return jnp.maximum(log_energy, np.log(energy_floor)) if energy_floor > 0.0 else log_energy


_FRAME_OPTIONS = (
    "sample_rate",
    "frame_length_ms",
    "frame_shift_ms",
    "dither",
    "preemphasis_coefficient",
    "remove_dc_offset",
    "window_type",
    "snip_edges",
    "round_to_power_of_two",
    "raw_energy",
    "energy_floor",
    "low_freq",
    "high_freq",
)


# Jitted so that eager callers (data preparation, tests) compile once per shape instead of dispatching
# every op; inside a caller's jit it is simply inlined. Options are static, arrays (lengths, rng) traced.
@functools.partial(
    jax.jit, static_argnames=_FRAME_OPTIONS + ("num_mel_bins", "use_log_fbank", "use_power", "use_energy")
)
def fbank(
    waveform: Any,
    sample_rate: float = 16000,
    num_mel_bins: int = 80,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    *,
    lengths: Any = None,
    dither: float = 0.0,
    rng: jax.Array | None = None,
    preemphasis_coefficient: float = 0.97,
    remove_dc_offset: bool = True,
    window_type: str = "povey",
    snip_edges: bool = True,
    energy_floor: float = 0.0,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    use_log_fbank: bool = True,
    use_power: bool = True,
    round_to_power_of_two: bool = True,
    use_energy: bool = False,
    raw_energy: bool = True,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Kaldi compute-fbank-feats: log-mel filterbank energies.

  Args:
    waveform: one waveform [samples] or a padded batch [batch, samples], int16 scale (int or float).
    sample_rate: in Hz.
    num_mel_bins: mel filters.
    frame_length_ms, frame_shift_ms: frame geometry.
    lengths: [batch] true lengths in samples of a padded batch (traced is fine); all full if None.
    dither: Gaussian noise std (int16 units) added to every frame sample; needs `rng`.
    rng: PRNG key for dither.
    preemphasis_coefficient, remove_dc_offset, window_type, snip_edges, round_to_power_of_two: Kaldi's
      frame extraction options.
    energy_floor: floor on the energy column (only with use_energy), as in Kaldi.
    low_freq, high_freq: mel range in Hz; high_freq <= 0 is an offset from Nyquist.
    use_log_fbank: log of the mel energies (floored at float epsilon), else the energies themselves.
    use_power: power spectrum, else magnitude.
    use_energy: prepend the log energy of each frame as column 0.
    raw_energy: that energy is taken before pre-emphasis and windowing.

  Returns:
    For one waveform: features [frames, bins]. For a batch: (features [batch, frames, bins],
    frame_lengths [batch]); frames follows from the padded length, frame_lengths from `lengths`, and
    features beyond frame_lengths are zero. bins is num_mel_bins (+1 with use_energy).

  Raises:
    ValueError: a bad option, or a padded length that gives zero frames.
  """
  power, log_energy, frame_lengths, fft_size, single = _power_spectrum_frames(
      waveform,
      lengths,
      sample_rate=sample_rate,
      frame_length_ms=frame_length_ms,
      frame_shift_ms=frame_shift_ms,
      dither=dither,
      rng=rng,
      preemphasis_coefficient=preemphasis_coefficient,
      remove_dc_offset=remove_dc_offset,
      window_type=window_type,
      snip_edges=snip_edges,
      round_to_power_of_two=round_to_power_of_two,
      raw_energy=raw_energy,
  )
  banks = mel_banks(num_mel_bins, fft_size, sample_rate, low_freq, high_freq)
  spectrum = power if use_power else jnp.sqrt(power)
  mel = jnp.matmul(spectrum, banks, precision=_HIGHEST)
  if use_log_fbank:
    mel = jnp.log(jnp.maximum(mel, FLOAT_EPSILON))
  if use_energy:
    mel = jnp.concatenate([_floor_log_energy(log_energy, energy_floor)[..., None], mel], axis=-1)
  return _finish(mel, frame_lengths, single)


@functools.partial(
    jax.jit, static_argnames=_FRAME_OPTIONS + ("num_ceps", "num_mel_bins", "cepstral_lifter", "use_energy")
)
def mfcc(
    waveform: Any,
    sample_rate: float = 16000,
    num_ceps: int = 13,
    num_mel_bins: int = 23,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    *,
    lengths: Any = None,
    cepstral_lifter: float = 22.0,
    use_energy: bool = True,
    raw_energy: bool = True,
    energy_floor: float = 0.0,
    dither: float = 0.0,
    rng: jax.Array | None = None,
    preemphasis_coefficient: float = 0.97,
    remove_dc_offset: bool = True,
    window_type: str = "povey",
    snip_edges: bool = True,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    round_to_power_of_two: bool = True,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Kaldi compute-mfcc-feats (its defaults: 23 mel bins, 13 cepstra, lifter 22, energy as C0).

  The cepstra are the orthonormal DCT-II of the log-mel energies, liftered; with use_energy, C0 is then
  replaced by the frame's log energy (raw: before pre-emphasis and windowing; floored by energy_floor).
  The other arguments, the batching and the return shapes ([..., num_ceps]) are those of `fbank`.
  """
  if not 1 <= num_ceps <= num_mel_bins:
    raise ValueError(f"num_ceps must be in [1, num_mel_bins={num_mel_bins}], got {num_ceps}")
  power, log_energy, frame_lengths, fft_size, single = _power_spectrum_frames(
      waveform,
      lengths,
      sample_rate=sample_rate,
      frame_length_ms=frame_length_ms,
      frame_shift_ms=frame_shift_ms,
      dither=dither,
      rng=rng,
      preemphasis_coefficient=preemphasis_coefficient,
      remove_dc_offset=remove_dc_offset,
      window_type=window_type,
      snip_edges=snip_edges,
      round_to_power_of_two=round_to_power_of_two,
      raw_energy=raw_energy,
  )
  banks = mel_banks(num_mel_bins, fft_size, sample_rate, low_freq, high_freq)
  log_mel = jnp.log(jnp.maximum(jnp.matmul(power, banks, precision=_HIGHEST), FLOAT_EPSILON))
  ceps = jnp.matmul(log_mel, dct_matrix(num_ceps, num_mel_bins), precision=_HIGHEST)
  if cepstral_lifter != 0.0:
    ceps = ceps * lifter_coefficients(num_ceps, cepstral_lifter)
  if use_energy:
    ceps = ceps.at[..., 0].set(_floor_log_energy(log_energy, energy_floor))
  return _finish(ceps, frame_lengths, single)


def delta_filters(order: int = 2, window: int = 2) -> np.ndarray:
  """Kaldi's delta regression filters, [order + 1, 2 * order * window + 1] float64, centred.

  Row 0 is the identity; row i convolves row i - 1 with j / sum(j^2) over j in [-window, window]. Entry
  `order * window + j` of a row weighs frame t + j in the output at frame t.
  """
  if order < 0 or window < 1:
    raise ValueError(f"need order >= 0 and window >= 1, got order={order}, window={window}")
  taps = np.arange(-window, window + 1, dtype=np.float64)
  width = 2 * order * window + 1
  filters = np.zeros((order + 1, width))
  current = np.ones(1)
  filters[0, order * window] = 1.0
  for i in range(1, order + 1):
    current = np.convolve(current, taps / np.sum(taps**2))
    filters[i, (width - current.size) // 2 : (width + current.size) // 2] = current
  return filters


@functools.partial(jax.jit, static_argnames=("order", "window"))
def add_deltas(
    features: Any, order: int = 2, window: int = 2, *, frame_lengths: Any = None
) -> jax.Array:
  """Kaldi add-deltas: appends delta (and delta-delta, ...) features.

  Each order is one regression filter (see `delta_filters`) applied to the features, with the frame
  index clamped to each utterance's valid range (edge replication), as in Kaldi; so delta-deltas at the
  edges are not deltas of clamped deltas.

  Args:
    features: [frames, dim] or [batch, frames, dim].
    order: highest derivative.
    window: regression half-width.
    frame_lengths: [batch] valid frames of a padded batch; all frames if None.

  Returns:
    [..., frames, dim * (order + 1)]: [features, delta, delta-delta, ...]; zero beyond frame_lengths.
  """
  features = jnp.asarray(features, jnp.float32)
  single = features.ndim == 2
  if single:
    if frame_lengths is not None:
      raise ValueError("frame_lengths is only for a batch [batch, frames, dim]")
    features = features[None]
  if features.ndim != 3:
    raise ValueError(f"features must be [frames, dim] or [batch, frames, dim], got shape {features.shape}")
  batch, frames, _ = features.shape
  if frame_lengths is None:
    frame_lengths = jnp.full((batch,), frames, jnp.int32)
  frame_lengths = jnp.asarray(frame_lengths, jnp.int32)
  filters = delta_filters(order, window).astype(np.float32)
  half = order * window
  last = jnp.maximum(frame_lengths - 1, 0)[:, None]
  outputs = [jnp.zeros_like(features) for _ in range(order + 1)]
  # A loop over the filter taps (2 * order * window + 1 of them), not over frames.
  for offset in range(-half, half + 1):
    index = jnp.clip(jnp.arange(frames)[None, :] + offset, 0, last)
    shifted = jnp.take_along_axis(features, index[..., None], axis=1)
    for i in range(order + 1):
      if filters[i, offset + half] != 0.0:
        outputs[i] = outputs[i] + filters[i, offset + half] * shifted
  out = _zero_padding_frames(jnp.concatenate(outputs, axis=-1), frame_lengths)
  return out[0] if single else out


def mfcc_39(
    waveform: Any, sample_rate: float = 16000, *, lengths: Any = None, **mfcc_options: Any
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """13 Kaldi MFCCs + deltas + delta-deltas (Kaldi add-deltas, window 2): HuBERT's first-iteration targets.

  `mfcc_options` go to `mfcc`; shapes as `fbank` with 39 = 3 * num_ceps dims.
  """
  out = mfcc(waveform, sample_rate, lengths=lengths, **mfcc_options)
  if isinstance(out, tuple):
    ceps, frame_lengths = out
    return add_deltas(ceps, frame_lengths=frame_lengths), frame_lengths
  return add_deltas(out)


class LogMelFrontend(nn.Module):
  """Waveform → normalised Kaldi features on the device, the first layer of a model.

  Attributes:
    sample_rate: in Hz.
    kind: "fbank" (log-mel, num_mel_bins dims) or "mfcc39" (13 MFCCs + deltas + delta-deltas).
    num_mel_bins: mel filters; None takes Kaldi's usual value for the kind (80 for fbank, 23 for MFCC).
    frame_length_ms, frame_shift_ms: frame geometry.
    dither: Kaldi dither (int16 units); drawn from the "dither" RNG stream unless deterministic.
    normalization: "global" (with `mean` and `std` from `normalize.CMVNStats`), "utterance" (per-utterance
      mean and variance over the valid frames) or "none".
    mean, std: [dim] global statistics as tuples of floats (hashable, so the module stays a static config).
    dtype: dtype of the returned features; everything inside runs in float32.
  """

  sample_rate: int = 16000
  kind: str = "fbank"
  num_mel_bins: int | None = None
  frame_length_ms: float = 25.0
  frame_shift_ms: float = 10.0
  dither: float = 0.0
  normalization: str = "none"
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, waveform: jax.Array, lengths: jax.Array, *, deterministic: bool = True
  ) -> tuple[jax.Array, jax.Array]:
    """waveform [batch, samples] (int16 scale), lengths [batch] → (features [batch, frames, dim], frame_lengths)."""
    if self.normalization not in ("global", "utterance", "none"):
      raise ValueError(f"normalization must be 'global', 'utterance' or 'none', got {self.normalization!r}")
    if self.normalization == "global" and (self.mean is None or self.std is None):
      raise ValueError("normalization='global' needs mean and std (from speechfuse.audio.normalize.CMVNStats)")
    use_dither = self.dither != 0.0 and not deterministic
    options = dict(
        frame_length_ms=self.frame_length_ms,
        frame_shift_ms=self.frame_shift_ms,
        lengths=lengths,
        dither=self.dither if use_dither else 0.0,
        rng=self.make_rng("dither") if use_dither else None,
    )
    if self.kind == "fbank":
      features, frame_lengths = fbank(waveform, self.sample_rate, self.num_mel_bins or 80, **options)
    elif self.kind == "mfcc39":
      num_mel_bins = self.num_mel_bins or 23
      features, frame_lengths = mfcc_39(waveform, self.sample_rate, num_mel_bins=num_mel_bins, **options)
    else:
      raise ValueError(f"kind must be 'fbank' or 'mfcc39', got {self.kind!r}")
    if self.normalization == "global":
      dim = features.shape[-1]
      if len(self.mean) != dim or len(self.std) != dim:
        raise ValueError(f"global mean/std have {len(self.mean)}/{len(self.std)} dims, the {self.kind} features {dim}")
      features = normalize.apply_global_cmvn(features, self.mean, self.std, frame_lengths)
    elif self.normalization == "utterance":
      features = normalize.per_utterance_cmvn(features, frame_lengths)
    features = nn.with_logical_constraint(features, ("batch", "time", "mel"))
    return features.astype(self.dtype), frame_lengths
