"""Tests of speechfuse.ssl.targets and the frame grids and label storage it writes on (audio.frames, nn.subsampling,
nn.wav2vec2, data.labels): alignment, label lengths at both rates, the storage round trip."""

from __future__ import annotations

import pickle

import jax.numpy as jnp
import numpy as np
import pytest
import ssl_testlib

from speechfuse.audio import frames as frame_grids
from speechfuse.data import labels as labels_lib, storage
from speechfuse.nn import subsampling, wav2vec2
from speechfuse.ssl import kmeans, targets

LENGTHS = [n for lengths in ssl_testlib.LENGTHS.values() for n in lengths] + [400, 719, 720, 1039, 1040, 96_317]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return ssl_testlib.write_tone_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def labelled(dataset):
  """The dataset labelled twice from one MFCC codebook: at 50 Hz (wav2vec2) and 25 Hz (Conformer x4)."""
  mfcc = targets.mfcc_features_fn()
  codebook = targets.fit_codebook(dataset, "train", mfcc, frame_grids.kaldi_grid(), k=8, sample_fraction=0.5,
                                  method="lloyd")
  for name, grid in (("w2v", wav2vec2.wav2vec2_grid()), ("conformer", subsampling.fbank_grid())):
    targets.write_labels(dataset, name, codebook, mfcc, frame_grids.kaldi_grid(), grid)
  return dataset, codebook


def test_standard_frame_counts_and_centres():
  for n in LENGTHS:
    fbank_frames = (n - 400) // 160 + 1
    assert frame_grids.kaldi_frame_count(n) == fbank_frames
    assert wav2vec2.frame_lengths(n) == (n - 400) // 320 + 1
    assert subsampling.fbank_grid().frame_count(n) == max(((fbank_frames - 1) // 2 - 1) // 2, 0)
    assert subsampling.fbank_grid().frame_count(n) == subsampling.subsampled_length(fbank_frames, "conv2d", 4)
    assert subsampling.fbank_grid(kind="conv1d", factor=2).frame_count(n) == max((fbank_frames - 3) // 2 + 1, 0)
  assert wav2vec2.frame_lengths(399) == 0
  np.testing.assert_array_equal(frame_grids.kaldi_grid().centers(3), [200, 360, 520])
  np.testing.assert_array_equal(wav2vec2.wav2vec2_grid().centers(3), [200, 520, 840])
  np.testing.assert_array_equal(subsampling.fbank_grid().centers(3), [680, 1320, 1960])
  assert wav2vec2.wav2vec2_grid().frame_rate == 50 and subsampling.fbank_grid().frame_rate == 25
  conv1d = subsampling.fbank_grid(kind="conv1d", factor=2)
  np.testing.assert_array_equal(conv1d.centers(3), [360, 680, 1000])
  assert conv1d.frame_rate == 50 and conv1d.name == "fbank_conv1d_x2"
  with pytest.raises(ValueError, match="supports factors"):
    subsampling.fbank_grid(kind="conv1d", factor=3)


@pytest.mark.parametrize("grid, mfcc_frame", [(wav2vec2.wav2vec2_grid(), lambda t: 2 * t),
                                              (subsampling.fbank_grid(), lambda t: 4 * t + 3),
                                              (subsampling.fbank_grid(kind="conv1d", factor=2), lambda t: 2 * t + 1)])
def test_target_frame_takes_the_label_of_the_mfcc_frame_covering_its_centre(grid, mfcc_frame):
  mfcc = frame_grids.kaldi_grid()
  for n in LENGTHS:
    source_frames, target_frames = mfcc.frame_count(n), grid.frame_count(n)
    aligned = targets.align_labels(np.arange(source_frames), mfcc, grid, target_frames)
    t = np.arange(target_frames)
    np.testing.assert_array_equal(aligned, mfcc_frame(t))
    centres = grid.centers(target_frames)
    # The chosen MFCC frame's window [160 f, 160 f + 400) covers the centre, within half a hop of its own centre.
    assert np.all((160 * aligned <= centres) & (centres < 160 * aligned + 400))
    assert np.all(np.abs(mfcc.centers(source_frames)[aligned] - centres) <= 80)


def test_alignment_clips_to_the_utterance():
  coarse = frame_grids.FrameGrid("coarse", 16000, 640, 320.0, lambda n: n // 640)
  aligned = targets.align_labels(np.array([7, 8, 9]), coarse, wav2vec2.wav2vec2_grid(), 10)
  np.testing.assert_array_equal(aligned, [7, 7, 8, 8, 9, 9, 9, 9, 9, 9])


@pytest.mark.parametrize("name, grid", [("w2v", wav2vec2.wav2vec2_grid()), ("conformer", subsampling.fbank_grid())])
def test_label_lengths_equal_encoder_frame_counts(labelled, name, grid):
  dataset, codebook = labelled
  for split in ssl_testlib.LENGTHS:
    labels = labels_lib.open_labels(dataset, name, split)
    metadata = storage.open_split(dataset, split).metadata()
    assert list(labels) == metadata["id"]
    for record_id, num_samples in zip(metadata["id"], metadata["num_samples"]):
      assert len(labels[record_id]) == grid.frame_count(int(num_samples)) > 0
      assert labels[record_id].dtype == np.int16
    assert labels.info["frame_rate"] == grid.frame_rate and labels.info["k"] == codebook.k


def test_round_trip_equals_labels_recomputed_from_the_saved_codebook(labelled):
  dataset, _ = labelled
  codebook = targets.load_codebook(dataset, "w2v")
  mfcc, w2v = frame_grids.kaldi_grid(), wav2vec2.wav2vec2_grid()
  for split in ssl_testlib.LENGTHS:
    labels = labels_lib.open_labels(dataset, "w2v", split)
    source = storage.open_split(dataset, split)
    for index in range(len(source)):
      record = source[index]
      # Padded to one length (one compilation): MFCC frames do not depend on the padding.
      padded = np.zeros((1, 48_000), np.float32)
      padded[0, :len(record["audio"])] = record["audio"]
      features, frames = targets.mfcc_features_fn()(jnp.asarray(padded), jnp.asarray([len(record["audio"])]))
      features = np.asarray(features)[0, :int(frames[0])]
      expected = targets.align_labels(kmeans.assign(codebook, features), mfcc, w2v,
                                      w2v.frame_count(len(record["audio"])))
      np.testing.assert_array_equal(labels[record["id"]], expected)
    reopened = pickle.loads(pickle.dumps(labels))
    np.testing.assert_array_equal(reopened[record["id"]], labels[record["id"]])


def test_one_codebook_serves_every_split(labelled):
  dataset, codebook = labelled
  info = labels_lib.labels_info(dataset, "w2v")
  assert info["splits"] == sorted(ssl_testlib.LENGTHS)
  assert info["codebook"] == kmeans.fingerprint(codebook) == labels_lib.labels_info(dataset, "conformer")["codebook"]
  for split in ssl_testlib.LENGTHS:
    with np.load(dataset / "labels" / "w2v" / f"{split}.npz") as data:
      assert str(data["codebook"]) == info["codebook"]
  assert info["source_grid"]["frame_rate"] == 100 and info["target_grid"]["name"] == "wav2vec2_cnn"


def test_a_new_codebook_drops_splits_labelled_with_the_old_one(labelled, tmp_path):
  dataset, codebook = labelled
  other = kmeans.KMeansModel(codebook.centers + 1.0)
  mfcc = targets.mfcc_features_fn()
  targets.write_labels(dataset, "relabel", codebook, mfcc, frame_grids.kaldi_grid(), wav2vec2.wav2vec2_grid())
  targets.write_labels(dataset, "relabel", other, mfcc, frame_grids.kaldi_grid(), wav2vec2.wav2vec2_grid(),
                       splits=["dev"])
  assert labels_lib.labels_info(dataset, "relabel")["splits"] == ["dev"]
  with pytest.raises(FileNotFoundError, match="no split 'train'"):
    labels_lib.open_labels(dataset, "relabel", "train")
  # An interrupted labelling (codebook replaced, info.json not yet) is refused.
  kmeans.save(codebook, dataset / "labels" / "relabel" / "codebook.npz")
  with pytest.raises(ValueError, match="interrupted"):
    labels_lib.open_labels(dataset, "relabel", "dev")


def test_model_features_at_their_own_rate_and_length_checks(dataset):
  w2v = wav2vec2.wav2vec2_grid()

  def framed_energy(waveform, lengths):
    """A stand-in encoder on the wav2vec2 grid: log energy of 400-sample windows every 320 samples."""
    frames = (waveform.shape[1] - 400) // 320 + 1
    index = 320 * jnp.arange(frames)[:, None] + jnp.arange(400)
    energy = jnp.log1p(jnp.mean(jnp.square(waveform[:, index]), axis=-1))
    return jnp.stack([energy, jnp.sqrt(energy)], axis=-1), (lengths - 400) // 320 + 1

  path = targets.model_targets(dataset, "energy", framed_energy, w2v, k=4, sample_fraction=1.0, method="lloyd",
                               splits=["dev"], features="framed_energy")
  labels = labels_lib.open_labels(dataset, "energy", "dev")
  assert path.name == "energy" and labels.info["features"] == "framed_energy" and labels.info["k"] == 4
  metadata = storage.open_split(dataset, "dev").metadata()
  for record_id, num_samples in zip(metadata["id"], metadata["num_samples"]):
    assert len(labels[record_id]) == w2v.frame_count(int(num_samples))
  with pytest.raises(ValueError, match="grid 'fbank_conv2d_x4' expects"):
    targets.model_targets(dataset, "bad", framed_energy, subsampling.fbank_grid(), k=4, splits=["dev"])
