"""Tests of speechfuse.ssl.quality: PNMI and phone purity against hand computations and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import ssl_testlib

from speechfuse.ssl import quality, targets


def test_hand_computed_joint_distribution():
  # p(phone, cluster) = [[1/2, 1/4], [0, 1/4]]: p(phone) = (3/4, 1/4), p(cluster) = (1/2, 1/2).
  joint = np.array([[2, 1], [0, 1]])
  mutual_information = 0.5 * math.log(0.5 / 0.375) + 0.25 * math.log(0.25 / 0.375) + 0.25 * math.log(0.25 / 0.125)
  phone_entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
  assert quality.pnmi(joint) == pytest.approx(mutual_information / phone_entropy, rel=1e-12)
  assert quality.pnmi(joint / 4.0) == pytest.approx(quality.pnmi(joint), rel=1e-12)
  assert quality.phone_purity(joint) == pytest.approx(0.75)  # cluster 0 -> phone 0 (2 of 2), 1 -> either (1 of 2)


def test_perfect_clustering_scores_one_even_with_more_clusters_than_phones():
  rng = np.random.default_rng(0)
  phones = rng.integers(0, 5, 10_000)
  clusters = 3 * phones + rng.integers(0, 3, phones.size)  # each phone split over three pure clusters
  joint = quality.joint_counts(phones, clusters, 5, 15)
  assert joint.sum() == phones.size and joint.shape == (5, 15)
  assert quality.pnmi(joint) == pytest.approx(1.0, abs=1e-12)
  assert quality.phone_purity(joint) == pytest.approx(1.0)


def test_independent_labels_score_zero_and_purity_is_the_majority_phone():
  p_phone, p_cluster = np.array([0.5, 0.3, 0.2]), np.array([0.1, 0.6, 0.3])
  joint = np.outer(p_phone, p_cluster)
  assert quality.pnmi(joint) == pytest.approx(0.0, abs=1e-12)
  assert quality.phone_purity(joint) == pytest.approx(0.5)
  rng = np.random.default_rng(1)
  sampled = quality.joint_counts(rng.integers(0, 10, 200_000), rng.integers(0, 20, 200_000), 10, 20)
  assert 0.0 <= quality.pnmi(sampled) < 0.002


def test_degenerate_tables_are_refused():
  with pytest.raises(ValueError, match="same phone"):
    quality.pnmi(np.array([[3, 4]]))
  with pytest.raises(ValueError, match="non-empty"):
    quality.phone_purity(np.zeros((2, 2)))


def test_frame_phones_sample_the_phone_at_each_centre_and_silence_elsewhere():
  phone_ids = {}
  # Dyadic times, exact in float32: a frame centred on a boundary belongs to the phone that starts there.
  timings = np.array([[0.25, 0.5], [0.5, 0.75], [1.0, 1.25]], np.float32)
  centres = np.array([0.125, 0.25, 0.375, 0.5, 0.6875, 0.75, 1.125, 2.0])
  got = quality.frame_phones("a b a", timings, centres, phone_ids)
  assert phone_ids == {quality.SILENCE: 0, "a": 1, "b": 2}
  np.testing.assert_array_equal(got, [0, 1, 1, 2, 2, 0, 1, 0])
  with pytest.raises(ValueError, match="2 phones but 3"):
    quality.frame_phones("a b", timings, centres, phone_ids)


def test_mfcc_clusters_of_tone_phones_score_high(tmp_path):
  dataset = ssl_testlib.write_tone_dataset(tmp_path)
  targets.mfcc_targets(dataset, "mfcc_k8", k=8, sample_fraction=1.0, method="lloyd")
  scores = quality.evaluate(dataset, "mfcc_k8", "train")
  # Five tones and silence, separable in MFCC space: most of the phone information is in the clusters.
  assert scores["phones"] == len(ssl_testlib.PHONES) + 1 and scores["k"] == 8
  assert scores["pnmi"] > 0.7 and scores["phone_purity"] > 0.8, scores
