"""Loading pre-trained variables into a freshly initialised model: fine-tuning (task.init_from), ensembles of
exported members, moderate fine-tuning of a fused model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax import traverse_util


def merge_pretrained(variables: Mapping[str, Any], pretrained: Mapping[str, Any], prefix: tuple[str, ...] = (), *,
                     source_prefix: tuple[str, ...] | None = None,
                     source_name: str = "pretrained") -> tuple[dict[str, Any], dict[str, list[str]]]:
  """Replaces the leaves of `variables` under `prefix` (in every collection) by those of `pretrained`.

  Args:
    variables: flax variables {collection: tree}; leaves may be boxed (nn.Partitioned), and stay boxed.
    pretrained: variables of the same layout as numpy arrays (train.load_variables).
    prefix: the subtree to load, e.g. ("encoder",); () loads every leaf the two share.
    source_prefix: where that subtree lies in `pretrained` (None: at `prefix`), e.g. ("encoder",) to load a CTC
      model's encoder into an ensemble's ("encoder_1",).
    source_name: names the source in errors.

  Returns:
    (merged variables, {"loaded": [...], "initialised": [...], "dropped": [...]}) with "collection/a/b" names:
    loaded from `pretrained`, kept as initialised, and the pretrained leaves not used (e.g. a pre-training head).

  Raises:
    ValueError: a leaf under `prefix` is missing from `pretrained` (another architecture), or has another
      shape; the message names it.
  """
  flat = traverse_util.flatten_dict(dict(variables))
  source = traverse_util.flatten_dict(dict(pretrained))
  name = "/".join
  report = {"loaded": [], "initialised": [], "dropped": []}
  used = set()
  for key, leaf in flat.items():
    if key[1:1 + len(prefix)] != prefix or (not prefix and key not in source):
      report["initialised"].append(name(key))
      continue
    source_key = key if source_prefix is None else (key[0], *source_prefix, *key[1 + len(prefix):])
    where = name(key) if source_key == key else f"{name(source_key)} (for {name(key)})"
    if source_key not in source:
      raise ValueError(f"{where} is not in {source_name}: it holds another architecture or size")
    value = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
    array = source[source_key]
    if tuple(array.shape) != tuple(value.shape):
      raise ValueError(f"{where} has shape {tuple(array.shape)} in {source_name}, {tuple(value.shape)} in this "
                       "model")
    array = jnp.asarray(array, value.dtype)
    flat[key] = leaf.replace_boxed(array) if isinstance(leaf, nn.Partitioned) else array
    report["loaded"].append(name(key))
    used.add(source_key)
  report["dropped"] = [name(key) for key in source if key not in used]
  return traverse_util.unflatten_dict(flat), report
