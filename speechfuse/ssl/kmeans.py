"""k-means in JAX: k-means++ initialisation, mini-batch and Lloyd updates, with the rows sharded over a mesh.

HuBERT's targets are k-means clusters of frame features; fairseq fits scikit-learn's MiniBatchKMeans
(k-means++, batch 10000) on ~10% of the frames. This module does the same fit in JAX so that it runs where the
features are, on one CPU or on a pod: the rows are sharded over the mesh's data-parallel axes, every loop is
one jitted `lax.while_loop` / `fori_loop`, and the per-cluster sums and counts are matmuls contracting the
sharded row axis, so XLA reduces them across devices.

Layout: the host pads the rows [N, D] to [C, R, D] (C chunks of R rows; padding rows carry weight 0) and shards
R. Distances are computed one chunk at a time, so memory is [R, k] per step, not [N, k]. R depends only on N,
`chunk_rows` and lcm(256, data-parallel size), so the random streams (and hence the fit) are the same on 1 and
on 8 devices; only the order of floating-point sums differs.

Distances are ||x||² - 2 x·c + ||c||² in float32 with HIGHEST matmul precision: TF32 matmuls on GPUs would
move points across near-tied boundaries.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from speechfuse.data import labels
from speechfuse.parallel import mesh as mesh_lib

METHODS = ("minibatch", "lloyd")
DEFAULT_CHUNK_ROWS = 16384
_ROW_GRANULE = 256  # R is a multiple of lcm(this, data-parallel size): the same shapes for every small mesh.
_HIGHEST = jax.lax.Precision.HIGHEST


class KMeansModel(NamedTuple):
  """A fitted codebook: centers [k, D] float32 (numpy, on the host)."""
  centers: np.ndarray

  @property
  def k(self) -> int:
    return self.centers.shape[0]

  @property
  def dim(self) -> int:
    return self.centers.shape[1]


def fit(
    features: Any,
    k: int,
    *,
    method: str = "minibatch",
    batch_size: int = 10000,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    init: str | Any = "k-means++",
    n_init: int = 1,
    n_local_trials: int | None = None,
    init_size: int | None = None,
    max_no_improvement: int | None = 10,
    sample_fraction: float = 1.0,
    mesh: Mesh | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> KMeansModel:
  """Fits k centres to the rows of `features`.

  Args:
    features: [N, D] floats on the host (every process passes the same array on a multi-host mesh).
    k: number of clusters, at most the number of rows fitted.
    method: "minibatch" (scikit-learn's MiniBatchKMeans: batches of `batch_size` rows drawn with replacement;
      centre j moves to the running mean of every row assigned to it so far, i.e. a per-centre learning rate
      1 / count_j) or "lloyd" (full-batch: every centre moves to the mean of its rows; an empty cluster keeps
      its centre, where scikit-learn would move it to a far point).
    batch_size: rows per mini-batch step.
    max_iter: Lloyd iterations, or mini-batch epochs (max_iter * N // batch_size steps, as scikit-learn).
    tol: Lloyd stops once the summed squared centre shift is at most tol * mean per-dimension variance
      (scikit-learn's rule). Mini-batch ignores it (scikit-learn's default tol=0 there).
    seed: seeds the row sample, the initialisation and the mini-batches.
    init: "k-means++" or initial centres [k, D].
    n_init: k-means++ initialisations tried; the one with the lowest inertia on the init rows is kept
      (fairseq uses 20).
    n_local_trials: candidates per k-means++ step, the greedy variant keeping the one that lowers the
      potential most; None: 2 + int(ln k) as scikit-learn; 1: plain k-means++.
    init_size: rows (sampled without replacement) that k-means++ runs on; None: 3 * batch_size for
      mini-batch (scikit-learn's default), every row for Lloyd.
    max_no_improvement: mini-batch stops after this many steps without a new minimum of the smoothed batch
      inertia (scikit-learn's rule; fairseq uses 100); None: never early.
    sample_fraction: fraction of the rows (sampled without replacement) that the fit uses.
    mesh: shard the rows over its data-parallel axes; None: the default device.
    chunk_rows: rows per distance computation ([chunk_rows, k] floats live at once, over all devices).

  Returns:
    The fitted KMeansModel.

  Raises:
    ValueError: bad shapes or options, non-finite features, or fewer rows than clusters.
  """
  features = np.asarray(features, np.float32)
  if features.ndim != 2:
    raise ValueError(f"features must be [rows, dim], got shape {features.shape}")
  if method not in METHODS:
    raise ValueError(f"unknown k-means method {method!r}; choose from {METHODS}")
  if not 0.0 < sample_fraction <= 1.0:
    raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction}")
  if min(batch_size, max_iter, n_init, chunk_rows) < 1:
    raise ValueError("batch_size, max_iter, n_init and chunk_rows must be positive")
  if not np.all(np.isfinite(features)):
    raise ValueError("features hold NaN or infinite values")
  rng = np.random.default_rng(seed)
  rows = features
  if sample_fraction < 1.0:
    count = max(k, round(sample_fraction * len(features)))
    rows = features[np.sort(rng.choice(len(features), min(count, len(features)), replace=False))]
  if not 1 <= k <= len(rows):
    raise ValueError(f"k={k} clusters need at least k rows; the fit has {len(rows)}")
  key_init, key_fit = jax.random.split(jax.random.key(seed))

  if init_size is None:
    init_size = 3 * batch_size if method == "minibatch" else len(rows)
  centers = _initial_centers(rows, k, init, rng, key_init, n_init=n_init, n_local_trials=n_local_trials,
                             init_size=init_size, mesh=mesh, chunk_rows=chunk_rows)
  xs, ws = _place(rows, mesh, chunk_rows)
  if method == "lloyd":
    tol_abs = tol * float(np.mean(np.var(rows, axis=0, dtype=np.float64)))
    centers = _compiled(_lloyd, mesh)(xs, ws, centers, max_iter, tol_abs)
  else:
    steps = max(1, max_iter * len(rows) // batch_size)
    # scikit-learn's smoothing of the batch inertia: alpha = 2 * batch / (N + 1).
    alpha = min(1.0, 2.0 * batch_size / (len(rows) + 1))
    patience = steps + 1 if max_no_improvement is None else max_no_improvement
    centers = _compiled(_minibatch, mesh, batch_size=batch_size)(
        xs, len(rows), centers, key_fit, steps, alpha, patience)
  return KMeansModel(np.asarray(centers, np.float32))


def assign(model: KMeansModel, x: Any, *, mesh: Mesh | None = None,
           chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
  """Nearest centre of each row: x [..., D] -> labels [...] int32 (numpy)."""
  x = np.asarray(x, np.float32)
  rows = x.reshape(-1, model.dim)
  if not len(rows):
    return np.zeros(x.shape[:-1], np.int32)
  xs, ws = _place(rows, mesh, chunk_rows, bucket=True)
  labels = _compiled(_labels, mesh)(xs, model.centers)
  return np.asarray(labels).reshape(-1)[:len(rows)].reshape(x.shape[:-1])


def inertia(model: KMeansModel, x: Any, *, mesh: Mesh | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> float:
  """Sum over the rows of x [..., D] of the squared distance to the nearest centre."""
  rows = np.asarray(x, np.float32).reshape(-1, model.dim)
  if not len(rows):
    return 0.0
  xs, ws = _place(rows, mesh, chunk_rows, bucket=True)
  return float(_compiled(_stats, mesh)(xs, ws, model.centers)[2])


def fingerprint(model: KMeansModel) -> str:
  """sha256 of the centres' float32 bytes: names a codebook in label files (data.labels.fingerprint)."""
  return labels.fingerprint(model.centers)


def save(model: KMeansModel, path: str | os.PathLike) -> None:
  """Writes the codebook to `path` (npz with `centers`), atomically."""
  labels.write_npz(path, centers=np.asarray(model.centers, np.float32))


def load(path: str | os.PathLike) -> KMeansModel:
  """Reads a codebook written by `save`."""
  return KMeansModel(labels.read_centers(path))


def _initial_centers(rows: np.ndarray, k: int, init: str | Any, rng: np.random.Generator, key: jax.Array, *,
                     n_init: int, n_local_trials: int | None, init_size: int, mesh: Mesh | None,
                     chunk_rows: int) -> Any:
  """Given centres [k, D], or the best of n_init k-means++ runs on init_size of the rows (see `fit`)."""
  if not isinstance(init, str):
    centers = np.asarray(init, np.float32)
    if centers.shape != (k, rows.shape[1]):
      raise ValueError(f"init centres must be [k={k}, D={rows.shape[1]}], got shape {centers.shape}")
    return centers
  if init != "k-means++":
    raise ValueError(f"init must be 'k-means++' or centres [k, D], got {init!r}")
  if init_size < len(rows):
    rows = rows[np.sort(rng.choice(len(rows), max(init_size, k), replace=False))]
  trials = 2 + int(math.log(k)) if n_local_trials is None else n_local_trials
  xs, ws = _place(rows, mesh, chunk_rows)
  best = None
  for trial_key in jax.random.split(key, n_init):
    centers = _compiled(_kmeans_plus_plus, mesh, k=k, n_local_trials=trials)(xs, ws, trial_key)
    potential = float(_compiled(_stats, mesh)(xs, ws, centers)[2])
    if best is None or potential < best[0]:
      best = (potential, centers)
  return best[1]


def _data_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes that the logical "batch" axis maps to by default, among those the mesh has."""
  axes = mesh_lib.batch_axes(mesh_lib.DEFAULT_LOGICAL_AXIS_RULES)
  return tuple(axis for axis in axes if axis in mesh.axis_names)


def _place(rows: np.ndarray, mesh: Mesh | None, chunk_rows: int,
           bucket: bool = False) -> tuple[jax.Array, jax.Array]:
  """Host rows [n, D] -> (xs [C, R, D], ws [C, R] 1 for rows, 0 for padding), R sharded over the data axes.

  With `bucket`, a single chunk is padded to a power of two, so that assigning many differently sized
  arrays compiles a few shapes rather than one per size.
  """
  n, dim = rows.shape
  parallel = 1 if mesh is None else math.prod(mesh.shape[axis] for axis in _data_axes(mesh))
  granule = math.lcm(_ROW_GRANULE, parallel)
  per_chunk = min(n, chunk_rows)
  if bucket:
    per_chunk = min(1 << (per_chunk - 1).bit_length(), chunk_rows)
  per_chunk = -(-per_chunk // granule) * granule
  chunks = -(-n // per_chunk)
  xs = np.zeros((chunks * per_chunk, dim), np.float32)
  xs[:n] = rows
  ws = np.zeros(chunks * per_chunk, np.float32)
  ws[:n] = 1.0
  xs, ws = xs.reshape(chunks, per_chunk, dim), ws.reshape(chunks, per_chunk)
  if mesh is None:
    return jnp.asarray(xs), jnp.asarray(ws)
  axes = _data_axes(mesh) or None
  x_sharding = NamedSharding(mesh, PartitionSpec(None, axes, None))
  w_sharding = NamedSharding(mesh, PartitionSpec(None, axes))
  return (jax.make_array_from_callback(xs.shape, x_sharding, lambda index: xs[index]),
          jax.make_array_from_callback(ws.shape, w_sharding, lambda index: ws[index]))


@functools.lru_cache(maxsize=None)
def _jitted(fn, mesh: Mesh | None, static: tuple[tuple[str, Any], ...]):
  # Outputs (centres, statistics, labels) are replicated so that every process can read them on a pod.
  out_shardings = None if mesh is None else NamedSharding(mesh, PartitionSpec())
  return jax.jit(functools.partial(fn, **dict(static)), out_shardings=out_shardings)


def _compiled(fn, mesh: Mesh | None, **static: Any):
  """`fn` with its static arguments bound, jitted once per (mesh, static arguments)."""
  return _jitted(fn, mesh, tuple(sorted(static.items())))


def _sq_distances(x: jax.Array, centers: jax.Array) -> jax.Array:
  """x [..., D], centers [k, D] -> squared distances [..., k], clamped at 0 (the expansion can go negative)."""
  cross = jnp.einsum("...d,kd->...k", x, centers, precision=_HIGHEST)
  x_sq = jnp.sum(x * x, axis=-1, keepdims=True)
  c_sq = jnp.sum(centers * centers, axis=-1)
  return jnp.maximum(x_sq - 2.0 * cross + c_sq, 0.0)


def _nearest(x: jax.Array, centers: jax.Array) -> tuple[jax.Array, jax.Array]:
  """x [..., D] -> (labels [...] int32, squared distance to that centre [...])."""
  d2 = _sq_distances(x, centers)
  labels = jnp.argmin(d2, axis=-1).astype(jnp.int32)
  return labels, jnp.take_along_axis(d2, labels[..., None], axis=-1)[..., 0]


def _cluster_sums(x: jax.Array, labels: jax.Array, weights: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Per-cluster weighted sums [k, D] and counts [k] of rows x [n, D]; contracting n reduces over devices."""
  one_hot = jax.nn.one_hot(labels, k, dtype=jnp.float32) * weights[:, None]
  return jnp.einsum("nk,nd->kd", one_hot, x, precision=_HIGHEST), jnp.sum(one_hot, axis=0)


def _stats(xs: jax.Array, ws: jax.Array, centers: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Over all chunks: per-cluster sums [k, D], counts [k], and the inertia (weighted)."""
  k = centers.shape[0]

  def chunk(carry, inputs):
    sums, counts, total = carry
    x, w = inputs
    labels, d2 = _nearest(x, centers)
    chunk_sums, chunk_counts = _cluster_sums(x, labels, w, k)
    return (sums + chunk_sums, counts + chunk_counts, total + jnp.sum(d2 * w)), None

  init = (jnp.zeros_like(centers), jnp.zeros((k,), jnp.float32), jnp.zeros((), jnp.float32))
  return jax.lax.scan(chunk, init, (xs, ws))[0]


def _labels(xs: jax.Array, centers: jax.Array) -> jax.Array:
  """Nearest centre per row, chunk by chunk: [C, R]."""
  return jax.lax.map(lambda x: _nearest(x, centers)[0], xs)


def _lloyd(xs: jax.Array, ws: jax.Array, centers: jax.Array, max_iter: jax.Array,
           tol_abs: jax.Array) -> jax.Array:
  """Full-batch iterations until max_iter or a summed squared centre shift <= tol_abs."""

  def keep_going(state):
    iteration, _, shift = state
    return (iteration < max_iter) & (shift > tol_abs)

  def step(state):
    iteration, centers, _ = state
    sums, counts, _ = _stats(xs, ws, centers)
    new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centers)
    return iteration + 1, new, jnp.sum(jnp.square(new - centers))

  state = (jnp.zeros((), jnp.int32), jnp.asarray(centers, jnp.float32), jnp.asarray(jnp.inf, jnp.float32))
  return jax.lax.while_loop(keep_going, step, state)[1]


def _minibatch(xs: jax.Array, num_rows: jax.Array, centers: jax.Array, key: jax.Array, steps: jax.Array,
               alpha: jax.Array, patience: jax.Array, *, batch_size: int) -> jax.Array:
  """scikit-learn's MiniBatchKMeans steps (without low-count reassignment, which fairseq turns off)."""
  k = centers.shape[0]
  rows_per_chunk = xs.shape[1]

  def keep_going(state):
    step, _, _, _, _, stale = state
    return (step < steps) & (stale < patience)

  def update(state):
    step, centers, counts, ewa, best, stale = state
    # Global row indices, so that the batches do not depend on how the rows are sharded.
    index = jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0, num_rows)
    batch = xs[index // rows_per_chunk, index % rows_per_chunk]
    labels, d2 = _nearest(batch, centers)
    sums, batch_counts = _cluster_sums(batch, labels, jnp.ones((batch_size,), jnp.float32), k)
    new_counts = counts + batch_counts
    moved = (centers * counts[:, None] + sums) / jnp.maximum(new_counts, 1.0)[:, None]
    centers = jnp.where(batch_counts[:, None] > 0, moved, centers)
    # scikit-learn's early stopping: the first step is ignored (its inertia is far above the others), the
    # second starts the moving average of the batch inertia, and `stale` counts steps without a new minimum.
    batch_inertia = jnp.mean(d2)
    ewa = jnp.where(step == 1, batch_inertia, ewa * (1.0 - alpha) + batch_inertia * alpha)
    improved = (ewa < best) | (step == 0)
    best = jnp.where(improved & (step > 0), ewa, best)
    return step + 1, centers, new_counts, ewa, best, jnp.where(improved, 0, stale + 1)

  state = (jnp.zeros((), jnp.int32), jnp.asarray(centers, jnp.float32), jnp.zeros((k,), jnp.float32),
           jnp.zeros((), jnp.float32), jnp.asarray(jnp.inf, jnp.float32), jnp.zeros((), jnp.int32))
  return jax.lax.while_loop(keep_going, update, state)[1]


def _kmeans_plus_plus(xs: jax.Array, ws: jax.Array, key: jax.Array, *, k: int, n_local_trials: int) -> jax.Array:
  """k-means++ (Arthur & Vassilvitskii) on the weighted rows; greedy when n_local_trials > 1 (scikit-learn's).

  Each step draws `n_local_trials` rows with probability proportional to the squared distance to the nearest
  chosen centre (Gumbel-max, so no cumulative sum over sharded rows) and keeps the one that lowers the
  potential most. Padding rows have weight 0 and are never drawn.
  """
  chunks, rows_per_chunk, dim = xs.shape

  def draw(key, log_weights, shape):
    """Rows [*shape, D] drawn with probability ∝ exp(log_weights [C, R])."""
    scores = log_weights + jax.random.gumbel(key, (*shape, chunks, rows_per_chunk))
    # Two-stage argmax (within chunks, then across): no reshape of the sharded row axis.
    best_in_chunk = jnp.argmax(scores, axis=-1)
    chunk = jnp.argmax(jnp.max(scores, axis=-1), axis=-1)
    row = jnp.take_along_axis(best_in_chunk, chunk[..., None], axis=-1)[..., 0]
    return xs[chunk, row]

  def log_of(d2):
    return jnp.where(d2 > 0, jnp.log(jnp.maximum(d2, jnp.finfo(jnp.float32).tiny)), -jnp.inf)

  first = draw(jax.random.fold_in(key, 0), log_of(ws), ())
  closest = _sq_distances(xs, first[None])[..., 0] * ws
  centers = jnp.zeros((k, dim), jnp.float32).at[0].set(first)

  def add_center(i, state):
    centers, closest = state
    candidates = draw(jax.random.fold_in(key, i), log_of(closest), (n_local_trials,))
    trial = jnp.minimum(closest[..., None], _sq_distances(xs, candidates)) * ws[..., None]  # [C, R, L]
    best = jnp.argmin(jnp.sum(trial, axis=(0, 1)))
    return centers.at[i].set(candidates[best]), trial[..., best]

  return jax.lax.fori_loop(1, k, add_center, (centers, closest))[0]
