"""Hidden-space specs: which axis of which variable lives in which hidden space of a model.

A hidden space is a set of units (neurons, channels, head features) that a model's function does not care
about the order of: permuting the units consistently on every axis that indexes them leaves the outputs
unchanged. Fusion computes one transport map per space and applies it to all of these axes at once.

Data model (all frozen dataclasses; paths are "/"-joined keys of a variables dict, collection first, e.g.
"params/encoder/blocks_0/ffn1/dense_in/kernel" or "batch_stats/encoder/blocks_0/conv/norm/mean"):
  Member(path, axes, inner, window): the leaf's `axes`, flattened row-major, index `size * inner` entries of which
    the space moves the leading `size` factor (`inner` > 1 where a flattened axis interleaves a fixed factor, as the
    conv2d subsampling's proj rows c * mel' + f). Several axes express a block structure: [heads, head_dim].
    `window` (start, stop), when given, restricts the member to those indices of its first axis, axes[0]: the
    space moves only the slice x[..., start:stop, ...] (its other axes whole), among itself. Windows let one axis
    hold several spaces side by side: the Zipformer's nested residual stream, whose channels [0, 32) and [32, 48)
    are two spaces on every 48-wide axis (a permutation must not mix them), or its attention heads, whose head 0
    (read by NonlinAttention) is a space of its own while heads 1.. move as a headed space.
  Part(name, size, members): features per head that share one within-head map.
  Space(name, parts, heads): `heads` blocks (1 for a plain space); a map is a permutation (or transport plan)
    of whole heads combined with one within-head map per part and head pair, so the query/key features and the
    value/output features of attention move with the same heads but their own within-head maps.
  Fixed(path, axes, reason): axes that never move (vocabulary, mel bins, kernel taps, the GLU's value/gate axis;
    a scalar leaf is fixed with axes ()).
  Spec(spaces, fixed): spaces in dependency order (a space's cost may read axes of the spaces before it).

Every entry of every axis of every leaf must be covered exactly once; `Spec.validate` raises naming the leaf
otherwise. The entries of a leaf that share one axes tuple (the same axes, one member per window, or a fixed entry)
form a group: the leaf's groups must partition its axes, and the windows of a group tile its first axis (no window:
the whole axis). A member's support points (align) are its slice's entries along the leaf's other groups.
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
  window: tuple[int, int] | None = None


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
      ValueError: a leaf with an uncovered or doubly covered axis entry, a path that is not in the tree, a window
        outside its axis, a size that does not match, or a space with no member its cost can read (the message
        names them).
    """
    covered: dict[str, list[tuple[tuple[int, ...], tuple[int, int] | None]]] = {path: [] for path in flat}

    def cover(path: str, axes: tuple[int, ...], window: tuple[int, int] | None, what: str) -> tuple[int, ...]:
      if path not in flat:
        raise ValueError(f"fusion spec: {what} names {path!r}, which is not in the variables")
      shape = tuple(flat[path].shape)
      if any(not 0 <= axis < len(shape) for axis in axes):
        raise ValueError(f"fusion spec: {what} names axes {axes} of {path} with shape {shape}")
      if window is not None and not 0 <= window[0] < window[1] <= shape[axes[0]]:
        raise ValueError(f"fusion spec: {what} names window {window} of axis {axes[0]} of {path} {shape}")
      covered[path].append((axes, window))
      return shape

    for space in self.spaces:
      for part in space.parts:
        for member in part.members:
          shape = cover(member.path, member.axes, member.window, f"space {space.name}")
          entries = int(np.prod([shape[a] for a in member.axes]))
          if member.window is not None:
            entries = entries // shape[member.axes[0]] * (member.window[1] - member.window[0])
          if entries != space.units(part) * member.inner:
            raise ValueError(f"fusion spec: axes {member.axes} of {member.path} {shape} (window {member.window}) "
                             f"hold {entries} entries, space {space.name}/{part.name} needs {space.units(part)} x "
                             f"{member.inner}")
    for fixed in self.fixed:
      cover(fixed.path, fixed.axes, None, "a fixed entry")
    for path, entries in covered.items():
      shape = tuple(flat[path].shape)
      missing, twice = _coverage(shape, entries)
      if missing or twice:
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


def _coverage(shape: tuple[int, ...], entries: list[tuple[tuple[int, ...], tuple[int, int] | None]]
              ) -> tuple[list[int], list[int]]:
  """(axes with an entry covered by nothing, axes with an entry covered twice) of a leaf of `shape`.

  entries: (axes, window) of every member and fixed entry of the leaf. Entries with the same axes form a group that
  covers its first axis window by window and its other axes once; different groups must not share an axis.
  """
  counts = [np.zeros(n, np.int64) for n in shape]
  groups: dict[tuple[int, ...], list[tuple[int, int] | None]] = {}
  for axes, window in entries:
    if axes:
      groups.setdefault(axes, []).append(window)
  for axes, windows in groups.items():
    for window in windows:
      counts[axes[0]][slice(*window) if window is not None else slice(None)] += 1
    for axis in axes[1:]:
      counts[axis] += 1
  missing = [axis for axis, count in enumerate(counts) if np.any(count == 0)]
  twice = [axis for axis, count in enumerate(counts) if np.any(count > 1)]
  return missing, twice


def readable(assignments: Mapping[str, list[tuple[Space, Part, Member]]], member: Member, done: set[str]) -> bool:
  """Whether the spaces of all other axes of `member`'s leaf are in `done`, i.e. already aligned.

  Members on the same axes (other windows of them) hold other entries, not features of this member's rows.
  """
  return all(space.name in done for space, _, other in assignments[member.path] if other.axes != member.axes)


def unbox(tree: Any) -> Any:
  """The tree with flax's logical-partitioning boxes replaced by their values (plain trees pass through)."""
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def flatten(variables: Variables) -> dict[str, Any]:
  """{"params": ..., "batch_stats": ...} (boxed or not) -> {"params/encoder/...": leaf}."""
  return traverse_util.flatten_dict(unbox(dict(variables)), sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.unflatten_dict(dict(flat), sep="/")
