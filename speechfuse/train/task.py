"""The task protocol: what an objective gives the generic trainer.

A task owns its data, model and loss; the trainer owns the state, the mesh, the optimizer and the loop. Tasks
live in speechfuse.tasks (a registry by name); the trainer only sees this protocol. A task is built as
`Task(config, workdir)`; tasks that save assets with the run (a tokenizer, feature statistics) keep them in the
workdir.

- `make_input(split, *, seed, shard_index, shard_count)`: an iterator of this process's numpy batch dicts
  (`[local_batch, ...]` arrays; string entries such as `ids` stay on the host) with `get_state()` /
  `set_state(state)` returning / taking JSON-serialisable state (grain DatasetIterators qualify). "train"
  never ends; "eval" is one pass. Every process must yield the same number of eval batches.
- `init(rng, batch) -> variables`: flax variables ({"params": ..., other collections}), parameters annotated
  with logical axes; `batch` is a one-example batch of zeros with the input's dtypes and trailing shapes.
- `loss(params, extra, batch, rng, *, step, train) -> (Mean, (metrics, new_extra))`: pure and jit-able. The
  objective is a `Mean`: the batch's summed loss and the count it is over (utterances, frames), so that the
  trainer can add micro-batches of unequal size exactly (gradient accumulation: sum of totals over sum of
  counts). `metrics` maps names to `Mean`s the same way. `extra` is the non-parameter collections (e.g.
  {"batch_stats": ...}). `step` is the number of updates before this one (int32 scalar, traced): schedules
  inside the loss (a warm-up blend) read it.
- `eval_step(variables, batch) -> pytree`: pure and jit-able; whatever `evaluate` needs from one batch.
- `evaluate(eval_step, batches) -> {name: float}`: host-side loop over host batches; `eval_step(batch)`
  returns the jitted eval_step's outputs as numpy, gathered over all processes.
- `audio_seconds(batch) -> float`: seconds of audio in a host batch, for the progress line.
- `wrap_optimizer(tx) -> tx`: the optimizer the trainer uses, from the config's (default: unchanged); a task
  that freezes parameters for a while (fine-tuning) wraps it here.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


class CheckpointableIterator(Protocol):
  """An iterator of host batches whose position can be saved and restored."""

  def __next__(self) -> dict[str, np.ndarray]: ...

  def get_state(self) -> Any: ...

  def set_state(self, state: Any) -> None: ...


class Mean(NamedTuple):
  """A batch's sum of a per-unit quantity and the number of units it is over; its value is total / count.

  Sums and counts add over micro-batches and devices, means do not: two micro-batches with 3 and 1 real
  utterances average to (3 a + b) / 4, not (a + b) / 2.
  """
  total: jax.Array  # float32 []
  count: jax.Array  # float32 [], >= 0

  @property
  def value(self) -> jax.Array:
    """total / count, and 0 where the count is 0 (nothing to average)."""
    return jnp.where(self.count > 0, self.total / jnp.maximum(self.count, 1e-30), 0.0)


def mean_of(values: jax.Array, weights: jax.Array) -> Mean:
  """The Mean of `values` weighted by `weights` (0 leaves a value out): (sum of w * v, sum of w)."""
  weights = weights.astype(jnp.float32)
  return Mean(jnp.where(weights > 0, values.astype(jnp.float32) * weights, 0.0).sum(), weights.sum())


class Task(abc.ABC):
  """Base class of training objectives; subclasses are registered by name in speechfuse.tasks."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike | None = None):
    """`workdir` is the run's directory, for tasks that keep run-specific assets there (tokenizer, statistics)."""
    self.config = config
    self.workdir = None if workdir is None else os.fspath(workdir)

  @abc.abstractmethod
  def make_input(self, split: str, *, seed: int, shard_index: int, shard_count: int) -> CheckpointableIterator:
    """This process's batches of `split` ("train" or "eval")."""

  @abc.abstractmethod
  def init(self, rng: jax.Array, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Initial flax variables."""

  @abc.abstractmethod
  def loss(self, params: Any, extra: dict[str, Any], batch: Mapping[str, jax.Array], rng: jax.Array, *,
           step: jax.Array, train: bool) -> tuple[Mean, tuple[dict[str, Mean], dict[str, Any]]]:
    """The batch's objective as a Mean, (metrics as Means, updated non-parameter collections)."""

  @abc.abstractmethod
  def eval_step(self, variables: dict[str, Any], batch: Mapping[str, jax.Array]) -> Any:
    """Per-batch evaluation outputs."""

  @abc.abstractmethod
  def evaluate(self, eval_step: Callable[[Mapping[str, np.ndarray]], Any],
               batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """Evaluation metrics over `batches`."""

  def wrap_optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """The optimizer the trainer runs: config.optimizer's `tx`, unchanged unless a task overrides this."""
    return tx

  def audio_seconds(self, batch: Mapping[str, np.ndarray]) -> float:
    """Seconds of audio in a host batch: sum of audio_lengths (padding examples excluded) / sample rate."""
    if "audio_lengths" not in batch:
      return 0.0
    lengths = np.asarray(batch["audio_lengths"], np.float64)
    if "mask" in batch:
      lengths = lengths * np.asarray(batch["mask"])
    return float(lengths.sum()) / self.config.data.get("sample_rate", 16000)
