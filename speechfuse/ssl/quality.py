"""Quality of k-means targets against phone alignments: PNMI and phone purity (HuBERT, Hsu et al. 2021, IV-C).

With p(y, z) the joint distribution of frame-level phones y and cluster labels z over a split:

  PNMI          = I(y; z) / H(y)          (phone-normalised mutual information: the share of the phone
                                           uncertainty that the cluster label removes; 1 = clusters determine
                                           phones, 0 = independent)
  phone purity  = sum_z max_y p(y, z)     (the frame accuracy of mapping each cluster to its most frequent
                                           phone)

as fairseq's examples/hubert/measure_teacher_quality.py, with 0 log 0 = 0 instead of its 1e-8 fudge. Phones are
sampled at the centres of the label frames; frames between or outside the aligned phones are silence.

These are plug-in estimates: the mutual information is biased upward by about (phones - 1)(clusters - 1) /
(2 frames) nats, which matters on small splits (100 clusters, 50 phones, 2000 frames: ~1.2 nats, a third of
H(phone)). Compare numbers from splits of similar size, preferably the largest.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

import numpy as np

from speechfuse.data import labels as labels_lib, storage

SILENCE = "<sil>"


def frame_phones(phonemes: str, timings: np.ndarray, centers: np.ndarray,
                 phone_ids: MutableMapping[str, int]) -> np.ndarray:
  """Phone ids [T] int32 of the frames centred at `centers` [T] seconds.

  Args:
    phonemes: space-separated phones, one per row of `timings`.
    timings: [n_phones, 2] float start and end seconds; a frame belongs to the phone with start <= centre < end.
    centers: frame centre times in seconds.
    phone_ids: phone -> id, extended with unseen phones (and SILENCE, for uncovered frames) in place.
  """
  phones = phonemes.split()
  timings = np.asarray(timings, np.float64).reshape(-1, 2)
  if len(phones) != len(timings):
    raise ValueError(f"{len(phones)} phones but {len(timings)} timing rows")
  out = np.full(len(centers), phone_ids.setdefault(SILENCE, len(phone_ids)), np.int32)
  for phone, (start, end) in zip(phones, timings):
    out[(centers >= start) & (centers < end)] = phone_ids.setdefault(phone, len(phone_ids))
  return out


def joint_counts(phones: np.ndarray, clusters: np.ndarray, num_phones: int, num_clusters: int) -> np.ndarray:
  """Counts [num_phones, num_clusters] int64 of the (phone, cluster) pairs of aligned frames [N], [N]."""
  phones, clusters = np.asarray(phones, np.int64), np.asarray(clusters, np.int64)
  if phones.shape != clusters.shape:
    raise ValueError(f"phones {phones.shape} and clusters {clusters.shape} must be aligned frame by frame")
  return np.bincount(phones * num_clusters + clusters, minlength=num_phones * num_clusters).reshape(
      num_phones, num_clusters)


def pnmi(joint: np.ndarray) -> float:
  """I(phone; cluster) / H(phone) of a joint count or probability table [phones, clusters]."""
  p = _normalise(joint)
  p_phone, p_cluster = p.sum(axis=1), p.sum(axis=0)
  h_phone = -_xlogy(p_phone, p_phone).sum()
  if h_phone == 0.0:
    raise ValueError("PNMI is undefined when every frame has the same phone (H(phone) = 0)")
  nonzero = p > 0
  outer = np.outer(p_phone, p_cluster)
  mutual_information = np.sum(p[nonzero] * np.log(p[nonzero] / outer[nonzero]))
  return float(mutual_information / h_phone)


def phone_purity(joint: np.ndarray) -> float:
  """Accuracy of labelling each cluster with its most frequent phone: sum over clusters of max_phone p."""
  return float(_normalise(joint).max(axis=0).sum())


def evaluate(dataset: str | os.PathLike, name: str, split: str) -> dict[str, Any]:
  """PNMI and phone purity of the labels `name` of one split against the split's `phoneme_timings`.

  Returns:
    {"pnmi", "phone_purity", "frames", "phones" (distinct, silence included), "clusters_used", "k"}.

  Raises:
    ValueError: the dataset has no phoneme timings, or a record has no labels.
  """
  if "phoneme_timings" not in storage.dataset_info(dataset)["optional_fields"]:
    raise ValueError(f"dataset {dataset} stores no phoneme_timings: no phone reference for PNMI")
  labels = labels_lib.open_labels(dataset, name, split)
  grid = labels.info["target_grid"]
  source = storage.open_split(dataset, split)
  phone_ids: dict[str, int] = {}
  all_phones, all_clusters = [], []
  for index in range(len(source)):
    record = source[index]
    clusters = labels[record["id"]]
    centers = (grid["first_center"] + grid["hop"] * np.arange(len(clusters))) / grid["sample_rate"]
    all_phones.append(frame_phones(record["phonemes"], record["phoneme_timings"], centers, phone_ids))
    all_clusters.append(clusters)
  clusters = np.concatenate(all_clusters)
  joint = joint_counts(np.concatenate(all_phones), clusters, len(phone_ids), labels.info["k"])
  return {"pnmi": pnmi(joint), "phone_purity": phone_purity(joint), "frames": int(len(clusters)),
          "phones": len(phone_ids), "clusters_used": int(np.count_nonzero(joint.sum(axis=0))),
          "k": labels.info["k"]}


def _normalise(joint: np.ndarray) -> np.ndarray:
  joint = np.asarray(joint, np.float64)
  if joint.ndim != 2 or np.any(joint < 0) or joint.sum() <= 0:
    raise ValueError(f"need a non-negative, non-empty joint table [phones, clusters], got shape {joint.shape}")
  return joint / joint.sum()


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """x * log(y), 0 where x is 0."""
  return np.where(x > 0, x * np.log(np.where(x > 0, y, 1.0)), 0.0)
