"""HuBERT targets: k-means labels of frame features, written next to a dataset at the encoder's frame rate.

Iteration 1 clusters MFCC-39 features (100 Hz, `mfcc_targets`, 100 clusters); iteration 2 clusters the features
of a chosen layer of the iteration-1 model (`model_targets`, 500 clusters; any `features_fn`). The codebook is
fitted once, on a fraction of the utterances of one split, saved, and applied to every split.

Frame grids. Labels must line up with the frames of the encoder that is trained on them, which need not run at
the rate of the features clustered. A `FrameGrid` says where frames sit on the waveform: frame t is centred at
sample `first_center + t * hop` (the centre of its receptive field), and `frame_count(num_samples)` is the
encoder's own length function. Labels computed on a source grid are carried to a target grid by giving each
target frame the label of the source frame nearest to its centre, i.e. the frame whose hop-wide stretch around
its centre contains it (and whose window covers it). Standard grids at 16 kHz:

  mfcc_grid()          Kaldi 25 ms / 10 ms frames: [160 f, 160 f + 400) -> 100 Hz, centres 160 f + 200
  wav2vec2_grid()      wav2vec 2.0 / HuBERT CNN: T = floor((N - 400) / 320) + 1 -> 50 Hz, centres 320 t + 200
  fbank_grid()         Conformer conv2d x4 over 100 Hz fbank: T = ((F - 1) // 2 - 1) // 2 -> 25 Hz,
                       output t sees fbank frames 4t..4t+6, centred on 4t + 3: samples 640 t + 680
  fbank_grid(kind="conv1d", factor=2)   one kernel-3 stride-2 conv: T = (F - 3) // 2 + 1 -> 50 Hz, centred on
                       fbank frame 2t + 1: samples 320 t + 360

so MFCC frame 2t labels wav2vec2 frame t, and MFCC frame 4t + 3 labels Conformer frame t.

Layout of labels `NAME` of the dataset at ROOT (a dataset rebuilt in place takes its labels with it):

  ROOT/labels/NAME/codebook.npz   centers [k, D] float32 (`kmeans.save`)
  ROOT/labels/NAME/<split>.npz    ids [n] str, labels [sum T] int16 (int32 for k > 32768) concatenated in
                                  record order, offsets [n + 1] int64, codebook (its sha256)
  ROOT/labels/NAME/info.json      k, features, grids, sample rate, fit settings, splits, codebook sha256;
                                  written last, so it names only labels that are complete

Every file is written atomically; a reader refuses a split whose codebook is not the one `info.json` names
(labels of one run mixed with another's codebook).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from speechfuse import audio
from speechfuse.data import storage
from speechfuse.nn import subsampling
from speechfuse.ssl import kmeans

LABELS_DIR = "labels"
CODEBOOK = "codebook.npz"
INFO = "info.json"

# audio [B, S] float32 on the int16 scale, lengths [B] int32 -> (features [B, T, D], frame_lengths [B]).
FeaturesFn = Callable[[Any, Any], tuple[Any, Any]]


@dataclasses.dataclass(frozen=True)
class FrameGrid:
  """Where the frames of a feature extractor or encoder sit on the waveform (see the module docstring).

  Attributes:
    name: recorded in info.json.
    sample_rate: Hz of the waveforms the grid is defined for.
    hop: samples between consecutive frames.
    first_center: sample position of frame 0's centre (frame [a, a + W) is centred at a + W / 2).
    frame_count: num_samples -> number of frames (the encoder's length function).
  """
  name: str
  sample_rate: int
  hop: int
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


def mfcc_frame_count(num_samples: int, sample_rate: int = 16000) -> int:
  """Kaldi frames (25 ms window, 10 ms shift, snip_edges) of an utterance: the MFCC and fbank length."""
  window, shift, _ = audio.frame_sizes(sample_rate, 25.0, 10.0)
  return int(audio.num_frames(int(num_samples), window, shift))


def wav2vec2_frame_count(num_samples: int) -> int:
  """Frames of the wav2vec 2.0 / HuBERT CNN (receptive field 400, stride 320): floor((N - 400) / 320) + 1."""
  num_samples = int(num_samples)
  return (num_samples - 400) // 320 + 1 if num_samples >= 400 else 0


def fbank_frame_count(num_samples: int, sample_rate: int = 16000, kind: str = "conv2d", factor: int = 4) -> int:
  """Frames of an fbank encoder subsampled by `kind` x `factor` (conv2d x4: ((F - 1) // 2 - 1) // 2 of F fbank frames)."""
  return int(subsampling.subsampled_length(mfcc_frame_count(num_samples, sample_rate), kind, factor))


def mfcc_grid(sample_rate: int = 16000) -> FrameGrid:
  """Kaldi 25 ms / 10 ms frames (MFCC, fbank): 100 Hz."""
  window, shift, _ = audio.frame_sizes(sample_rate, 25.0, 10.0)
  return FrameGrid("kaldi_25ms_10ms", sample_rate, shift, window / 2,
                   lambda n: mfcc_frame_count(n, sample_rate))


def wav2vec2_grid(sample_rate: int = 16000) -> FrameGrid:
  """The wav2vec 2.0 / HuBERT convolutional feature extractor: 50 Hz at 16 kHz."""
  return FrameGrid("wav2vec2_cnn", sample_rate, 320, 200.0, wav2vec2_frame_count)


def fbank_grid(sample_rate: int = 16000, kind: str = "conv2d", factor: int = 4) -> FrameGrid:
  """A Conformer's subsampling (`speechfuse.nn.subsampling`: `kind` x `factor`) over 100 Hz fbank frames."""
  layers = subsampling.conv_layers(kind, factor)  # raises on an unknown kind or factor
  kaldi = mfcc_grid(sample_rate)
  # Output frame t of a (kernel, stride) layer is centred on input frame stride * t + (kernel - 1) / 2;
  # composing the layers gives fbank frame scale * t + offset.
  scale, offset = 1, 0.0
  for kernel, stride in reversed(layers):
    scale, offset = stride * scale, stride * offset + (kernel - 1) / 2
  return FrameGrid(f"fbank_{kind}_x{factor}", sample_rate, kaldi.hop * scale,
                   kaldi.first_center + kaldi.hop * offset,
                   lambda n: fbank_frame_count(n, sample_rate, kind, factor))


def mfcc_features_fn(sample_rate: int = 16000) -> FeaturesFn:
  """HuBERT iteration 1's features: 13 Kaldi MFCCs without energy (as fairseq's dump_mfcc_feature) + deltas."""

  def features_fn(waveform, lengths):
    return audio.mfcc_39(waveform, sample_rate, lengths=lengths, use_energy=False)

  return features_fn


def align_labels(labels: np.ndarray, source: FrameGrid, target: FrameGrid, num_frames: int) -> np.ndarray:
  """Carries labels [F] on the `source` grid to `num_frames` frames of the `target` grid.

  Target frame t takes the label of the source frame nearest to its centre (clipped to the utterance).
  """
  if not len(labels):
    raise ValueError("cannot align an utterance with no source frames")
  nearest = np.floor((target.centers(num_frames) - source.first_center) / source.hop + 0.5).astype(np.int64)
  return labels[np.clip(nearest, 0, len(labels) - 1)]


def utterance_features(
    source: storage.SplitSource,
    indices: Sequence[int],
    features_fn: FeaturesFn,
    grid: FrameGrid,
    *,
    batch_utterances: int = 16,
    pad_to: int = 16000,
) -> Iterator[tuple[int, np.ndarray]]:
  """Features of the records `indices` of `source`, one utterance at a time: (index, features [T, D]).

  Utterances are batched shortest first (little padding) and padded to a multiple of `pad_to` samples, so that
  a jitted `features_fn` compiles a few shapes. Yields in that length order.

  Raises:
    ValueError: `features_fn` returned a number of frames other than `grid.frame_count` for a record.
  """
  metadata = source.metadata()
  order = sorted(indices, key=lambda i: int(metadata["num_samples"][i]))
  for start in range(0, len(order), batch_utterances):
    batch = order[start:start + batch_utterances]
    lengths = np.asarray([metadata["num_samples"][i] for i in batch], np.int32)
    waveform = np.zeros((len(batch), -(-int(lengths.max()) // pad_to) * pad_to), np.float32)
    for row, index in enumerate(batch):
      waveform[row, :lengths[row]] = source[index]["audio"]
    features, frame_lengths = features_fn(jnp.asarray(waveform), jnp.asarray(lengths))
    features, frame_lengths = np.asarray(features, np.float32), np.asarray(frame_lengths)
    for row, index in enumerate(batch):
      expected = grid.frame_count(int(lengths[row]))
      if int(frame_lengths[row]) != expected:
        raise ValueError(
            f"{source.split} record {metadata['id'][index]!r} ({lengths[row]} samples): the features have "
            f"{int(frame_lengths[row])} frames, grid {grid.name!r} expects {expected}; pass the grid of the "
            f"model that computes the features")
      yield index, features[row, :expected]


def fit_codebook(
    dataset: str | os.PathLike,
    split: str,
    features_fn: FeaturesFn,
    grid: FrameGrid,
    *,
    k: int,
    sample_fraction: float = 0.1,
    seed: int = 0,
    batch_utterances: int = 16,
    mesh: Mesh | None = None,
    **kmeans_options: Any,
) -> kmeans.KMeansModel:
  """k-means over the frames of a random `sample_fraction` of the utterances of `split` (at least one).

  `kmeans_options` go to `kmeans.fit` (method, batch_size, max_iter, n_init, ...).
  """
  if not 0.0 < sample_fraction <= 1.0:
    raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction}")
  source = storage.open_split(dataset, split)
  count = max(1, round(sample_fraction * len(source)))
  chosen = np.random.default_rng(seed).choice(len(source), count, replace=False)
  rows = [features for _, features in utterance_features(
      source, chosen.tolist(), features_fn, grid, batch_utterances=batch_utterances)]
  return kmeans.fit(np.concatenate(rows), k, seed=seed, mesh=mesh, **kmeans_options)


def write_labels(
    dataset: str | os.PathLike,
    name: str,
    codebook: kmeans.KMeansModel,
    features_fn: FeaturesFn,
    source_grid: FrameGrid,
    target_grid: FrameGrid,
    *,
    splits: Sequence[str] | None = None,
    description: Mapping[str, Any] | None = None,
    batch_utterances: int = 16,
    mesh: Mesh | None = None,
) -> pathlib.Path:
  """Labels every record of `splits` (default: all) with `codebook`, at the target grid's frame rate.

  Args:
    dataset: the dataset path (`storage.write_dataset`'s result).
    name: the labels' name: they go to `dataset/labels/name/`.
    codebook: k-means centres over the features that `features_fn` computes.
    features_fn: audio [B, S], lengths [B] -> (features [B, T, D], frame_lengths [B]) on `source_grid`.
    source_grid: the frames of `features_fn`.
    target_grid: the frames of the encoder to be trained on the labels.
    splits: splits to label; any others already labelled with this codebook are kept.
    description: JSON-serialisable facts for info.json (features, fit settings).
    batch_utterances: utterances per `features_fn` call.
    mesh: shards the nearest-centre search.

  Returns:
    The labels directory.

  Raises:
    ValueError: the grids' sample rates differ from the dataset's, or features and grid disagree on lengths.
  """
  info = storage.dataset_info(dataset)
  for grid in (source_grid, target_grid):
    if grid.sample_rate != info["sample_rate"]:
      raise ValueError(f"grid {grid.name!r} is for {grid.sample_rate} Hz; dataset {dataset} is at "
                       f"{info['sample_rate']} Hz")
  splits = list(info["splits"]) if splits is None else list(splits)
  directory = pathlib.Path(dataset) / LABELS_DIR / name
  directory.mkdir(parents=True, exist_ok=True)
  sha = kmeans.fingerprint(codebook)
  previous = _read_info(directory) if (directory / INFO).is_file() else {}
  # Splits labelled earlier with this same codebook stay valid (and their description with them).
  previous = previous if previous.get("codebook") == sha else {"splits": []}
  kmeans.save(codebook, directory / CODEBOOK)
  dtype = _label_dtype(codebook.k)
  for split in splits:
    source = storage.open_split(dataset, split)
    metadata = source.metadata()
    labels = [np.zeros(0, dtype)] * len(source)
    for index, features in utterance_features(source, range(len(source)), features_fn, source_grid,
                                              batch_utterances=batch_utterances):
      num_frames = target_grid.frame_count(int(metadata["num_samples"][index]))
      source_labels = kmeans.assign(codebook, features, mesh=mesh)
      labels[index] = align_labels(source_labels, source_grid, target_grid, num_frames).astype(dtype)
    offsets = np.concatenate([[0], np.cumsum([len(row) for row in labels])]).astype(np.int64)
    kmeans.save_npz(directory / f"{split}.npz", ids=np.asarray(metadata["id"], dtype=str),
                    labels=np.concatenate(labels), offsets=offsets, codebook=np.asarray(sha))
  _write_json(directory / INFO, {
      **previous, "name": name, "k": codebook.k, "dim": codebook.dim, "codebook": sha,
      "splits": sorted(set(previous["splits"]) | set(splits)), "label_dtype": np.dtype(dtype).name,
      "frame_rate": target_grid.frame_rate, "target_grid": target_grid.describe(),
      "source_grid": source_grid.describe(), "dataset_fingerprint": info.get("fingerprint"),
      **dict(description or {})})
  return directory


def extract_targets(
    dataset: str | os.PathLike,
    name: str,
    features_fn: FeaturesFn,
    source_grid: FrameGrid,
    target_grid: FrameGrid,
    *,
    k: int,
    features: str,
    fit_split: str = "train",
    splits: Sequence[str] | None = None,
    sample_fraction: float = 0.1,
    seed: int = 0,
    batch_utterances: int = 16,
    mesh: Mesh | None = None,
    **kmeans_options: Any,
) -> pathlib.Path:
  """Fits a codebook on `fit_split` (see `fit_codebook`), then labels `splits` with it (see `write_labels`).

  `features` names the features in info.json ("mfcc39", "hubert_iter1_layer6", ...). Returns the labels
  directory, for `open_labels`.
  """
  codebook = fit_codebook(dataset, fit_split, features_fn, source_grid, k=k, sample_fraction=sample_fraction,
                          seed=seed, batch_utterances=batch_utterances, mesh=mesh, **kmeans_options)
  # Scalar options only: initial centres given as an array are not worth a copy in info.json.
  options = {key: value for key, value in kmeans_options.items() if isinstance(value, (str, int, float, bool))}
  description = {"features": features, "fit": {"split": fit_split, "sample_fraction": sample_fraction,
                                               "seed": seed, **options}}
  return write_labels(dataset, name, codebook, features_fn, source_grid, target_grid, splits=splits,
                      description=description, batch_utterances=batch_utterances, mesh=mesh)


def mfcc_targets(dataset: str | os.PathLike, name: str = "mfcc_k100", target_grid: FrameGrid | None = None, *,
                 k: int = 100, **options: Any) -> pathlib.Path:
  """HuBERT iteration 1: k-means (100 clusters) of MFCC-39, labels on `target_grid` (default wav2vec2's 50 Hz).

  `options` go to `extract_targets` (splits, sample_fraction, seed, mesh, k-means options).
  """
  sample_rate = int(storage.dataset_info(dataset)["sample_rate"])
  target_grid = wav2vec2_grid(sample_rate) if target_grid is None else target_grid
  return extract_targets(dataset, name, mfcc_features_fn(sample_rate), mfcc_grid(sample_rate), target_grid,
                         k=k, features="mfcc39", **options)


def model_targets(dataset: str | os.PathLike, name: str, features_fn: FeaturesFn, source_grid: FrameGrid,
                  target_grid: FrameGrid | None = None, *, k: int = 500, features: str = "model",
                  **options: Any) -> pathlib.Path:
  """HuBERT iteration 2: k-means (500 clusters) of a model layer's features (`features_fn` on `source_grid`).

  Labels go on `target_grid` (default: the source grid, i.e. the model's own frames).
  """
  target_grid = source_grid if target_grid is None else target_grid
  return extract_targets(dataset, name, features_fn, source_grid, target_grid, k=k, features=features, **options)


class Labels(Mapping[str, np.ndarray]):
  """One split's labels, by record id: `labels[id]` -> int [T] on the target grid; `labels.info` is info.json.

  Loads the split's labels into memory (2 bytes a frame) and pickles as its path, so that every grain worker
  reopens it.

  Raises (on opening):
    FileNotFoundError: no such labels or split.
    ValueError: the split was labelled with a codebook other than the one info.json names.
  """

  def __init__(self, dataset: str | os.PathLike, name: str, split: str):
    self._args = (dataset, name, split)
    directory = pathlib.Path(dataset) / LABELS_DIR / name
    self.info = labels_info(dataset, name)
    path = directory / f"{split}.npz"
    if split not in self.info["splits"] or not path.is_file():
      raise FileNotFoundError(f"labels {directory} have no split {split!r} (labelled: {self.info['splits']})")
    with np.load(path, allow_pickle=False) as data:
      if str(data["codebook"]) != self.info["codebook"]:
        raise ValueError(f"{path} was labelled with codebook {str(data['codebook'])[:12]}, not the "
                         f"{self.info['codebook'][:12]} of {directory / INFO}; label the split again")
      self._labels, self._offsets = data["labels"], data["offsets"]
      self._rows = {record_id: row for row, record_id in enumerate(data["ids"].tolist())}

  def __getitem__(self, record_id: str) -> np.ndarray:
    row = self._rows[record_id]
    return self._labels[self._offsets[row]:self._offsets[row + 1]]

  def __len__(self) -> int:
    return len(self._rows)

  def __iter__(self) -> Iterator[str]:
    return iter(self._rows)

  def __reduce__(self):
    return Labels, self._args


def open_labels(dataset: str | os.PathLike, name: str, split: str) -> Labels:
  """Random access to the labels `name` of one split of `dataset`."""
  return Labels(dataset, name, split)


def labels_info(dataset: str | os.PathLike, name: str) -> dict[str, Any]:
  """info.json of the labels `name` of `dataset`, checked against its codebook file."""
  directory = pathlib.Path(dataset) / LABELS_DIR / name
  if not (directory / INFO).is_file():
    raise FileNotFoundError(f"no labels {name!r} for dataset {dataset}: {directory / INFO} is missing")
  info = _read_info(directory)
  if kmeans.fingerprint(kmeans.load(directory / CODEBOOK)) != info["codebook"]:
    raise ValueError(f"{directory / CODEBOOK} is not the codebook {directory / INFO} names (a labelling "
                     "was interrupted); run it again")
  return info


def load_codebook(dataset: str | os.PathLike, name: str) -> kmeans.KMeansModel:
  """The codebook the labels `name` were made with (to label new audio identically)."""
  labels_info(dataset, name)
  return kmeans.load(pathlib.Path(dataset) / LABELS_DIR / name / CODEBOOK)


def _label_dtype(k: int) -> type:
  return np.int16 if k <= np.iinfo(np.int16).max + 1 else np.int32


def _read_info(directory: pathlib.Path) -> dict[str, Any]:
  return json.loads((directory / INFO).read_text())


def _write_json(path: pathlib.Path, value: Mapping[str, Any]) -> None:
  tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
  tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
  os.replace(tmp, path)
