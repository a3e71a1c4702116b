"""HuBERT targets: k-means labels of frame features, written next to a dataset at the encoder's frame rate.

Iteration 1 clusters MFCC-39 features (100 Hz, `mfcc_targets`, 100 clusters); iteration 2 clusters the features
of a chosen layer of the iteration-1 model (`model_targets`, 500 clusters; any `features_fn`). The codebook is
fitted once, on a fraction of the utterances of one split, saved, and applied to every split. `prepare` writes a
masked-prediction recipe's iteration-1 targets before its task is built (speechfuse.run's train mode).

Labels computed on a source grid (speechfuse.audio.frames) are carried to a target grid by giving each target
frame the label of the source frame nearest to its centre, i.e. the frame whose hop-wide stretch around its
centre contains it (and whose window covers it): MFCC frame 2t labels wav2vec2 frame t, and MFCC frame 4t + 3
labels conv2d x4 Conformer frame t. The storage layout and the reader are speechfuse.data.labels.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from speechfuse import audio
from speechfuse.audio import frames
from speechfuse.audio.frames import FrameGrid
from speechfuse.data import inputs, labels, storage
from speechfuse.models import encoders
from speechfuse.nn import wav2vec2
from speechfuse.ssl import kmeans

# audio [B, S] float32 on the int16 scale, lengths [B] int32 -> (features [B, T, D], frame_lengths [B]).
FeaturesFn = Callable[[Any, Any], tuple[Any, Any]]


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
  directory = labels.labels_dir(dataset, name)
  directory.mkdir(parents=True, exist_ok=True)
  sha = kmeans.fingerprint(codebook)
  previous = labels.read_info(directory) if (directory / labels.INFO).is_file() else {}
  # Splits labelled earlier with this same codebook stay valid (and their description with them).
  previous = previous if previous.get("codebook") == sha else {"splits": []}
  kmeans.save(codebook, directory / labels.CODEBOOK)
  dtype = labels.label_dtype(codebook.k)
  for split in splits:
    source = storage.open_split(dataset, split)
    metadata = source.metadata()
    rows = [np.zeros(0, dtype)] * len(source)
    for index, features in utterance_features(source, range(len(source)), features_fn, source_grid,
                                              batch_utterances=batch_utterances):
      num_frames = target_grid.frame_count(int(metadata["num_samples"][index]))
      source_labels = kmeans.assign(codebook, features, mesh=mesh)
      rows[index] = align_labels(source_labels, source_grid, target_grid, num_frames).astype(dtype)
    offsets = np.concatenate([[0], np.cumsum([len(row) for row in rows])]).astype(np.int64)
    labels.write_npz(directory / f"{split}.npz", ids=np.asarray(metadata["id"], dtype=str),
                     labels=np.concatenate(rows), offsets=offsets, codebook=np.asarray(sha))
  labels.write_info(directory, {
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
  target_grid = wav2vec2.wav2vec2_grid(sample_rate) if target_grid is None else target_grid
  return extract_targets(dataset, name, mfcc_features_fn(sample_rate), frames.kaldi_grid(sample_rate), target_grid,
                         k=k, features="mfcc39", **options)


def model_targets(dataset: str | os.PathLike, name: str, features_fn: FeaturesFn, source_grid: FrameGrid,
                  target_grid: FrameGrid | None = None, *, k: int = 500, features: str = "model",
                  **options: Any) -> pathlib.Path:
  """HuBERT iteration 2: k-means (500 clusters) of a model layer's features (`features_fn` on `source_grid`).

  Labels go on `target_grid` (default: the source grid, i.e. the model's own frames).
  """
  target_grid = source_grid if target_grid is None else target_grid
  return extract_targets(dataset, name, features_fn, source_grid, target_grid, k=k, features=features, **options)


def load_codebook(dataset: str | os.PathLike, name: str) -> kmeans.KMeansModel:
  """The codebook the labels `name` were made with (to label new audio identically)."""
  labels.labels_info(dataset, name)
  return kmeans.load(labels.labels_dir(dataset, name) / labels.CODEBOOK)


def prepare(config: ml_collections.ConfigDict) -> None:
  """Writes the iteration-1 targets a masked-prediction recipe (configs/ssl_hubert.py: config.task, .data, .model)
  reads, unless its dataset has them for the train and eval splits: MFCC-39 k-means with config.task.num_classes
  clusters, fitted on config.task.kmeans_fraction of the training utterances, on the model encoder's frame grid.
  Process 0 writes; the others wait. Iteration-2 targets come from `model_targets` and are never written here.
  """
  task, data = config.task, config.data
  dataset = inputs.dataset_path(data)
  splits = (data.train_split, data.eval_split)
  if task.iteration != 1 or labels.has_labels(dataset, task.targets, splits):
    return
  if jax.process_index() == 0:
    logging.info("writing MFCC k-means targets %r (k=%d) for %s", task.targets, task.num_classes, dataset)
    mfcc_targets(dataset, task.targets, encoders.frame_grid(config.model.encoder, data.sample_rate),
                 k=task.num_classes, splits=splits, sample_fraction=task.kmeans_fraction, seed=task.kmeans_seed)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top  # multi-host only
    multihost_utils.sync_global_devices("ssl_targets")
