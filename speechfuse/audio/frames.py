"""Frame grids: where the frames of a feature extractor or an encoder sit on the waveform.

Frame-level labels (k-means targets, phone alignments) must line up with the frames of the encoder trained on
them, which need not run at the rate of the features they came from. A `FrameGrid` says where frames sit: frame t
is centred at sample `first_center + t * hop` (the centre of its receptive field), and
`frame_count(num_samples)` is the extractor's own length function. `compose` stacks unpadded convolutions on a
grid (an encoder's subsampling over fbank frames, the wav2vec 2.0 CNN over samples). Standard grids at 16 kHz:

  kaldi_grid()                  Kaldi 25 ms / 10 ms frames: [160 f, 160 f + 400) -> 100 Hz, centres 160 f + 200
  nn.subsampling.fbank_grid()   conv2d x4 over them: output t sees fbank frames 4t..4t+6 -> 25 Hz, centres
                                640 t + 680; conv1d x2: fbank frames 2t..2t+2 -> 50 Hz, centres 320 t + 360
  nn.wav2vec2.wav2vec2_grid()   the wav2vec 2.0 / HuBERT CNN: T = floor((N - 400) / 320) + 1 -> 50 Hz, centres
                                320 t + 200
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from speechfuse.audio import features


@dataclasses.dataclass(frozen=True)
class FrameGrid:
  """Frames on the waveform (see the module docstring).

  Attributes:
    name: recorded with labels written on the grid.
    sample_rate: Hz of the waveforms the grid is defined for.
    hop: samples between consecutive frames.
    first_center: sample position of frame 0's centre (frame [a, a + W) is centred at a + W / 2).
    frame_count: num_samples -> number of frames (the extractor's length function).
  """
  name: str
  sample_rate: int
  hop: float
  first_center: float
  frame_count: Callable[[int], int]

  @property
  def frame_rate(self) -> float:
    return self.sample_rate / self.hop

  def centers(self, num_frames: int) -> np.ndarray:
    """Sample positions [num_frames] float64 of the frame centres."""
    return self.first_center + self.hop * np.arange(num_frames, dtype=np.float64)

  def describe(self) -> dict[str, Any]:
    return {"name": self.name, "sample_rate": self.sample_rate, "hop": self.hop,
            "first_center": self.first_center, "frame_rate": self.frame_rate}


def _conv_length(length: int, kernel: int, stride: int) -> int:
  return max((length - kernel) // stride + 1, 0)


def compose(grid: FrameGrid, layers: Sequence[tuple[int, int]], name: str) -> FrameGrid:
  """The grid of unpadded convolutions `layers` ((kernel, stride) per layer) applied to `grid`'s frames.

  Output frame t of a (kernel, stride) layer is centred on input frame stride * t + (kernel - 1) / 2; composing
  the layers gives input frame scale * t + offset.
  """
  scale, offset = 1, 0.0
  for kernel, stride in reversed(layers):
    scale, offset = stride * scale, stride * offset + (kernel - 1) / 2

  def frame_count(num_samples: int) -> int:
    length = grid.frame_count(num_samples)
    for kernel, stride in layers:
      length = _conv_length(length, kernel, stride)
    return length

  return FrameGrid(name, grid.sample_rate, grid.hop * scale, grid.first_center + grid.hop * offset, frame_count)


KALDI_FRAME_LENGTH_MS, KALDI_FRAME_SHIFT_MS = 25.0, 10.0  # the Kaldi frames of MFCC and fbank


def sample_grid(sample_rate: int = 16000) -> FrameGrid:
  """The samples themselves: sample s covers [s, s + 1), centred at s + 1/2."""
  return FrameGrid("samples", sample_rate, 1, 0.5, int)


def kaldi_frame_count(num_samples: int, sample_rate: int = 16000) -> int:
  """Kaldi frames (25 ms window, 10 ms shift, snip_edges) of an utterance: the MFCC and fbank length."""
  window, shift, _ = features.frame_sizes(sample_rate, KALDI_FRAME_LENGTH_MS, KALDI_FRAME_SHIFT_MS)
  return int(features.num_frames(int(num_samples), window, shift))


def kaldi_grid(sample_rate: int = 16000) -> FrameGrid:
  """Kaldi 25 ms / 10 ms frames (MFCC, fbank): 100 Hz."""
  window, shift, _ = features.frame_sizes(sample_rate, KALDI_FRAME_LENGTH_MS, KALDI_FRAME_SHIFT_MS)
  return FrameGrid("kaldi_25ms_10ms", sample_rate, shift, window / 2, lambda n: kaldi_frame_count(n, sample_rate))
