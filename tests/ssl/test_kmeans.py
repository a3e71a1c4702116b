"""Tests of speechfuse.ssl.kmeans: the objective, scikit-learn agreement, k-means++, sharding, the codebook file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.cluster import KMeans

from speechfuse.ssl import kmeans


def blobs(num_rows: int, num_blobs: int, dim: int, spread: float, seed: int = 0) -> np.ndarray:
  """Gaussian blobs [num_rows, dim] float32, unit variance around centres drawn with std `spread`."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(0.0, spread, (num_blobs, dim))
  return (centres[rng.integers(0, num_blobs, num_rows)] + rng.normal(size=(num_rows, dim))).astype(np.float32)


def random_rows(x: np.ndarray, k: int, seed: int = 1) -> np.ndarray:
  return x[np.random.default_rng(seed).choice(len(x), k, replace=False)]


def test_lloyd_objective_decreases_every_iteration():
  x = blobs(2000, 12, 6, spread=3.0)
  init = random_rows(x, 12)
  objective = [kmeans.inertia(kmeans.KMeansModel(init), x)]
  for iterations in range(1, 7):
    model = kmeans.fit(x, 12, method="lloyd", init=init, max_iter=iterations, tol=0.0)
    objective.append(kmeans.inertia(model, x))
  assert all(later <= earlier * (1 + 1e-6) for earlier, later in zip(objective, objective[1:])), objective
  assert objective[-1] < 0.8 * objective[0], objective


def test_minibatch_lowers_the_objective_with_more_epochs():
  x = blobs(4000, 16, 6, spread=3.0)
  init = random_rows(x, 16)
  objective = [kmeans.inertia(kmeans.fit(x, 16, init=init, batch_size=256, max_iter=epochs, seed=0,
                                         max_no_improvement=None), x) for epochs in (1, 4)]
  assert objective[1] <= objective[0] < kmeans.inertia(kmeans.KMeansModel(init), x), objective


def test_lloyd_matches_scikit_learn_from_the_same_centres():
  # Overlapping blobs: tens of iterations before convergence, so that the whole loop is compared.
  x = blobs(3000, 20, 8, spread=2.0, seed=3)
  init = random_rows(x, 20, seed=4)
  reference = KMeans(20, init=init, n_init=1, algorithm="lloyd", max_iter=300, tol=1e-4).fit(x)
  model = kmeans.fit(x, 20, method="lloyd", init=init, max_iter=300, tol=1e-4)
  assert reference.n_iter_ > 10
  assert kmeans.inertia(model, x) == pytest.approx(reference.inertia_, rel=0.01)
  assert np.mean(kmeans.assign(model, x) == reference.labels_) > 0.95


def test_minibatch_is_within_a_few_percent_of_full_batch():
  x = blobs(3000, 10, 8, spread=6.0, seed=5)
  full = kmeans.fit(x, 10, method="lloyd", seed=0)
  mini = kmeans.fit(x, 10, method="minibatch", batch_size=500, max_iter=20, seed=0)
  assert kmeans.inertia(mini, x) <= 1.03 * kmeans.inertia(full, x)


def test_kmeans_plus_plus_is_seeded_and_starts_a_centre_in_every_separated_blob():
  rng = np.random.default_rng(2)
  blob = np.arange(300) % 6
  x = (100.0 * rng.normal(size=(6, 4))[blob] + rng.normal(size=(300, 4))).astype(np.float32)
  first = kmeans.fit(x, 6, method="lloyd", max_iter=1, seed=7)
  np.testing.assert_array_equal(first.centers, kmeans.fit(x, 6, method="lloyd", max_iter=1, seed=7).centers)
  assert not np.array_equal(kmeans.fit(x, 6, method="lloyd", max_iter=1, seed=8).centers, first.centers)
  # A centre in every blob: after one Lloyd step the clusters are exactly the blobs.
  labels = kmeans.assign(first, x)
  assert len({(b, label) for b, label in zip(blob, labels)}) == 6 and len(set(labels)) == 6


def test_assign_and_inertia_against_numpy():
  x = blobs(777, 5, 3, spread=2.0).reshape(7, 111, 3)
  model = kmeans.KMeansModel(random_rows(x.reshape(-1, 3), 9))
  distances = np.sum((x[..., None, :] - model.centers) ** 2, axis=-1)
  labels = kmeans.assign(model, x, chunk_rows=256)
  assert labels.shape == (7, 111) and labels.dtype == np.int32
  np.testing.assert_array_equal(labels, np.argmin(distances, axis=-1))
  assert kmeans.inertia(model, x, chunk_rows=256) == pytest.approx(np.min(distances, axis=-1).sum(), rel=1e-5)


def test_sample_fraction_and_bad_arguments():
  x = blobs(1000, 4, 3, spread=4.0)
  model = kmeans.fit(x, 4, method="lloyd", sample_fraction=0.2, seed=1)
  assert model.centers.shape == (4, 3)
  np.testing.assert_array_equal(model.centers, kmeans.fit(x, 4, method="lloyd", sample_fraction=0.2, seed=1).centers)
  assert not np.array_equal(model.centers, kmeans.fit(x, 4, method="lloyd", sample_fraction=0.2, seed=2).centers)
  with pytest.raises(ValueError, match="at least k rows"):
    kmeans.fit(x[:3], 4)
  with pytest.raises(ValueError, match="NaN"):
    kmeans.fit(np.full((10, 2), np.nan), 2)
  with pytest.raises(ValueError, match="method"):
    kmeans.fit(x, 4, method="elkan")


def test_codebook_save_load_is_atomic_and_exact(tmp_path):
  model = kmeans.KMeansModel(np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32))
  path = tmp_path / "codebook.npz"
  kmeans.save(model, path)
  assert os.listdir(tmp_path) == ["codebook.npz"]
  loaded = kmeans.load(path)
  np.testing.assert_array_equal(loaded.centers, model.centers)
  assert kmeans.fingerprint(loaded) == kmeans.fingerprint(model)
  assert kmeans.fingerprint(kmeans.KMeansModel(model.centers + 1e-6)) != kmeans.fingerprint(model)


_SHARDED_SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    from speechfuse import parallel
    from speechfuse.ssl import kmeans
    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    x = (rng.normal(0, 3, (12, 5))[rng.integers(0, 12, 3000)] + rng.normal(size=(3000, 5))).astype(np.float32)
    mesh = parallel.create_mesh([("data", 4), ("fsdp", 2)])
    out = {}
    # Lloyd from given centres, mini-batch from k-means++: every loop runs sharded.
    for method, init in (("lloyd", x[:12]), ("minibatch", "k-means++")):
      options = dict(method=method, init=init, batch_size=300, max_iter=5, seed=0, chunk_rows=1024)
      single, sharded = kmeans.fit(x, 12, **options), kmeans.fit(x, 12, mesh=mesh, **options)
      out[method] = {
          "max_abs_diff": float(np.max(np.abs(single.centers - sharded.centers))),
          "labels_equal": bool(np.array_equal(kmeans.assign(single, x), kmeans.assign(sharded, x, mesh=mesh))),
          "inertia": [kmeans.inertia(single, x), kmeans.inertia(sharded, x, mesh=mesh)],
      }
    print(json.dumps(out))
""")


def test_sharded_fit_equals_single_device_fit_on_8_fake_devices():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  for method, stats in out.items():
    assert stats["max_abs_diff"] < 1e-4, (method, stats)
    assert stats["labels_equal"], (method, stats)
    single, sharded = stats["inertia"]
    assert sharded == pytest.approx(single, rel=1e-5), (method, stats)
