"""Hidden-space specs: which axis of which variable lives in which hidden space of a model.

A hidden space is a set of units (neurons, channels, head features) that a model's function does not care
about the order of: permuting the units consistently on every axis that indexes them leaves the outputs
unchanged. Fusion computes one transport map per space and applies it to all of these axes at once.

Data model (all frozen dataclasses; paths are "/"-joined keys of a variables dict, collection first, e.g.
"params/encoder/blocks_0/ffn1/dense_in/kernel" or "batch_stats/encoder/blocks_0/conv/norm/mean"):
  Member(path, axes, inner): the leaf's `axes`, flattened row-major, index `size * inner` entries of which the
    space moves the leading `size` factor (`inner` > 1 where a flattened axis interleaves a fixed factor, as the
    conv2d subsampling's proj rows c * mel' + f). Several axes express a block structure: [heads, head_dim].
  Part(name, size, members): features per head that share one within-head map.
  Space(name, parts, heads): `heads` blocks (1 for a plain space); a map is a permutation (or transport plan)
    of whole heads combined with one within-head map per part and head pair, so the query/key features and the
    value/output features of attention move with the same heads but their own within-head maps.
  Fixed(path, axes, reason): axes that never move (vocabulary, mel bins, kernel taps, the GLU's value/gate axis).
  Spec(spaces, fixed): spaces in dependency order (a space's cost may read axes of the spaces before it).

Every axis of every leaf must be covered exactly once; `Spec.validate` raises naming the leaf otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

Variables = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Member:
  path: str
  axes: tuple[int, ...]
  inner: int = 1


@dataclasses.dataclass(frozen=True)
class Part:
  name: str
  size: int
  members: tuple[Member, ...]


@dataclasses.dataclass(frozen=True)
class Space:
  name: str
  parts: tuple[Part, ...]
  heads: int = 1

  def units(self, part: Part) -> int:
    """Entries of `part` across all heads: the side of its map."""
    return self.heads * part.size


@dataclasses.dataclass(frozen=True)
class Fixed:
  path: str
  axes: tuple[int, ...]
  reason: str


@dataclasses.dataclass(frozen=True)
class Spec:
  spaces: tuple[Space, ...]
  fixed: tuple[Fixed, ...]

  def assignments(self) -> dict[str, list[tuple[Space, Part, Member]]]:
    """path -> every (space, part, member) that moves an axis of that leaf."""
    table: dict[str, list[tuple[Space, Part, Member]]] = {}
    for space in self.spaces:
      for part in space.parts:
        for member in part.members:
          table.setdefault(member.path, []).append((space, part, member))
    return table

  def validate(self, flat: Mapping[str, Any]) -> None:
    """Checks the spec against flattened variables (`flatten`): every axis of every leaf covered exactly once.

    Raises:
      ValueError: a leaf with an uncovered or doubly covered axis, a path that is not in the tree, a size that
        does not match, or a space with no member its cost can read (the message names them).
    """
    covered: dict[str, list[int]] = {path: [] for path in flat}

    def cover(path: str, axes: tuple[int, ...], what: str) -> tuple[int, ...]:
      if path not in flat:
        raise ValueError(f"fusion spec: {what} names {path!r}, which is not in the variables")
      shape = tuple(flat[path].shape)
      if any(not 0 <= axis < len(shape) for axis in axes):
        raise ValueError(f"fusion spec: {what} names axes {axes} of {path} with shape {shape}")
      covered[path].extend(axes)
      return shape

    for space in self.spaces:
      for part in space.parts:
        for member in part.members:
          shape = cover(member.path, member.axes, f"space {space.name}")
          entries = int(np.prod([shape[a] for a in member.axes]))
          if entries != space.units(part) * member.inner:
            raise ValueError(f"fusion spec: axes {member.axes} of {member.path} {shape} hold {entries} entries, "
                             f"space {space.name}/{part.name} needs {space.units(part)} x {member.inner}")
    for fixed in self.fixed:
      cover(fixed.path, fixed.axes, "a fixed entry")
    for path, axes in covered.items():
      shape = tuple(flat[path].shape)
      if sorted(axes) != list(range(len(shape))):
        missing = sorted(set(range(len(shape))) - set(axes))
        twice = sorted({a for a in axes if axes.count(a) > 1})
        raise ValueError(f"fusion spec: leaf {path} {shape} has axes {missing} covered by no hidden space or fixed "
                         f"entry and axes {twice} covered twice")
    self._check_order()

  def _check_order(self) -> None:
    """Each part needs a member whose other axes are fixed or in earlier spaces: its cost reads that member."""
    assignments = self.assignments()
    done: set[str] = set()
    for space in self.spaces:
      for part in space.parts:
        if not any(readable(assignments, member, done) for member in part.members):
          raise ValueError(f"fusion spec: space {space.name}/{part.name} has no member whose other axes are fixed "
                           "or in earlier spaces; reorder the spaces")
      done.add(space.name)


def readable(assignments: Mapping[str, list[tuple[Space, Part, Member]]], member: Member, done: set[str]) -> bool:
  """Whether the spaces of all other axes of `member`'s leaf are in `done`, i.e. already aligned."""
  return all(space.name in done for space, _, other in assignments[member.path] if other is not member)


def unbox(tree: Any) -> Any:
  """The tree with flax's logical-partitioning boxes replaced by their values (plain trees pass through)."""
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def flatten(variables: Variables) -> dict[str, Any]:
  """{"params": ..., "batch_stats": ...} (boxed or not) -> {"params/encoder/...": leaf}."""
  return traverse_util.flatten_dict(unbox(dict(variables)), sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.unflatten_dict(dict(flat), sep="/")
