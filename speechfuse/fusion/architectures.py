"""Hidden-space specs of the CTC models (speechfuse.models.ctc), read off their variable trees, so any size works.

Spaces, in dependency order:
  subsampling/conv_{i}  each subsampling conv's output channels (kernels per tap; conv_0's input channel or
                        mel axis is fixed); the last one also moves the proj rows (conv2d: c * mel' + f, inner mel').
  residual              the whole residual stream: proj outputs, every LayerNorm, the input rows of every layer
                        reading the stream (FFN dense_in, query/key/value, conv pointwise_in, ctc_head) and the
                        output columns and biases of every layer writing it (FFN dense_out, attention out, conv
                        pointwise_out).
  blocks_{i}/ffn1, ffn2 (Transformer: ffn)  FFN hidden units.
  blocks_{i}/mhsa       heads as blocks: a map of whole heads, with per-head-pair maps of part "qk" (query, key,
                        their biases, pos and pos_bias_u / v, which enter the same dot products) and part "vo"
                        (value and out's input). Relative positions: pos's input axis holds sinusoid features
                        and is fixed.
  blocks_{i}/conv       conv-module channels: the GLU's value and gate halves move together (their axis is
                        fixed), the depthwise kernel per tap, the norm's scale / bias and BatchNorm mean / var.
Fixed: the vocabulary, mel bins, kernel taps, the GLU axis, sinusoid features.

`ctc_activations` gives align's activations mode its support points: each unit's outputs on a few batches.

A Transformer with absolute positions adds fixed sinusoids to the residual stream, so permuting the stream
changes the function: its residual axes are fixed and only the per-block spaces move.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from speechfuse.fusion import spec as spec_lib
from speechfuse.fusion.spec import Fixed, Member, Part, Space, Spec, Variables

_ENCODER = "params/encoder"


class _Builder:
  """Collects spaces over a flattened tree; every leaf it touches is marked, so `finish` finds the rest."""

  def __init__(self, variables: Variables, architecture: str):
    self.flat = spec_lib.flatten(variables)
    self.architecture = architecture
    self.used: set[str] = set()
    self.spaces: list[Space] = []
    self.residual: list[Member] = []
    self.fixed: list[Fixed] = []

  def has(self, path: str) -> bool:
    return path in self.flat

  def shape(self, path: str) -> tuple[int, ...]:
    if path not in self.flat:
      raise ValueError(f"fusion spec: {path} is missing; is this a {self.architecture} CTC model's variables dict?")
    self.used.add(path)
    return tuple(self.flat[path].shape)

  def member(self, path: str, *axes: int, inner: int = 1) -> Member:
    self.shape(path)
    return Member(path, axes, inner)

  def fix(self, path: str, *axes: int, reason: str) -> None:
    self.shape(path)
    self.fixed.append(Fixed(path, axes, reason))

  def space(self, name: str, *members: Member) -> None:
    size = self.flat[members[0].path].shape[members[0].axes[0]] // members[0].inner
    self.spaces.append(Space(name, (Part("units", size, members),)))

  def blocks(self) -> list[str]:
    indices = {int(m.group(1)) for path in self.flat if (m := re.match(rf"{_ENCODER}/blocks_(\d+)/", path))}
    return [f"{_ENCODER}/blocks_{i}" for i in sorted(indices)]

  def finish(self, residual_fixed: bool) -> Spec:
    uncovered = sorted(set(self.flat) - self.used)
    if uncovered:
      raise ValueError(f"fusion spec: leaves {uncovered} are in no hidden space and not declared fixed in the "
                       f"{self.architecture} CTC spec")
    subsampling = [s for s in self.spaces if s.name.startswith("subsampling/")]
    blocks = [s for s in self.spaces if not s.name.startswith("subsampling/")]
    if residual_fixed:
      reason = "absolute sinusoids are added to the residual stream in this basis"
      residual = []
      self.fixed.extend(Fixed(m.path, m.axes, reason) for m in self.residual)
    else:
      size = self.flat[self.residual[0].path].shape[self.residual[0].axes[0]]
      residual = [Space("residual", (Part("units", size, tuple(self.residual)),))]
    spec = Spec(tuple(subsampling + residual + blocks), tuple(self.fixed))
    spec.validate(self.flat)
    return spec


def _name(prefix: str) -> str:
  """A space's name: its module path inside the encoder, e.g. blocks_0/ffn1."""
  return prefix.removeprefix(f"{_ENCODER}/")


def _subsampling(b: _Builder) -> None:
  prefix = f"{_ENCODER}/subsampling"
  convs = sorted(int(m.group(1)) for path in b.flat if (m := re.match(rf"{prefix}/conv_(\d+)/kernel$", path)))
  for i in convs:
    kernel = f"{prefix}/conv_{i}/kernel"
    ndim = len(b.shape(kernel))
    taps = tuple(range(ndim - 2))
    members = [b.member(kernel, ndim - 1), b.member(f"{prefix}/conv_{i}/bias", 0)]
    if i + 1 in convs:
      members.append(b.member(f"{prefix}/conv_{i + 1}/kernel", ndim - 2))
    else:
      rows = b.shape(f"{prefix}/proj/kernel")[0]
      channels = b.shape(kernel)[-1]
      members.append(b.member(f"{prefix}/proj/kernel", 0, inner=rows // channels))
    b.fix(kernel, *taps, reason="kernel taps")
    if i == 0:
      b.fix(kernel, ndim - 2, reason="input features (mel bins or the single 2-D input channel)")
    b.space(f"subsampling/conv_{i}", *members)
  b.residual += [b.member(f"{prefix}/proj/kernel", 1), b.member(f"{prefix}/proj/bias", 0)]


def _norm(b: _Builder, prefix: str) -> None:
  b.residual += [b.member(f"{prefix}/scale", 0), b.member(f"{prefix}/bias", 0)]


def _ffn(b: _Builder, prefix: str, name: str) -> None:
  ffn = f"{prefix}/{name}"
  b.space(_name(ffn), b.member(f"{ffn}/dense_in/kernel", 1), b.member(f"{ffn}/dense_in/bias", 0),
          b.member(f"{ffn}/dense_out/kernel", 0))
  b.residual += [b.member(f"{ffn}/dense_in/kernel", 0), b.member(f"{ffn}/dense_out/kernel", 1),
                 b.member(f"{ffn}/dense_out/bias", 0)]


def _attention(b: _Builder, prefix: str) -> None:
  mhsa = f"{prefix}/mhsa"
  heads, head_dim = b.shape(f"{mhsa}/query/bias")
  qk = [b.member(f"{mhsa}/{name}/kernel", 1, 2) for name in ("query", "key")]
  qk += [b.member(f"{mhsa}/{name}/bias", 0, 1) for name in ("query", "key")]
  if b.has(f"{mhsa}/pos/kernel"):
    # Relative positions: (q + u) k^T and (q + v) p^T are dot products over the same head features.
    qk += [b.member(f"{mhsa}/pos/kernel", 1, 2), b.member(f"{mhsa}/pos_bias_u", 0, 1),
           b.member(f"{mhsa}/pos_bias_v", 0, 1)]
    b.fix(f"{mhsa}/pos/kernel", 0, reason="sinusoid features of relative positions")
  vo = [b.member(f"{mhsa}/value/kernel", 1, 2), b.member(f"{mhsa}/value/bias", 0, 1),
        b.member(f"{mhsa}/out/kernel", 0, 1)]
  b.spaces.append(Space(_name(mhsa), (Part("qk", head_dim, tuple(qk)), Part("vo", head_dim, tuple(vo))), heads))
  b.residual += [b.member(f"{mhsa}/{name}/kernel", 0) for name in ("query", "key", "value")]
  b.residual += [b.member(f"{mhsa}/out/kernel", 2), b.member(f"{mhsa}/out/bias", 0)]


def _conv_module(b: _Builder, prefix: str) -> None:
  conv = f"{prefix}/conv"
  members = [b.member(f"{conv}/pointwise_in/kernel", 2), b.member(f"{conv}/pointwise_in/bias", 1),
             b.member(f"{conv}/depthwise/kernel", 1), b.member(f"{conv}/depthwise/bias", 0),
             b.member(f"{conv}/norm/scale", 0), b.member(f"{conv}/norm/bias", 0),
             b.member(f"{conv}/pointwise_out/kernel", 0)]
  stats = conv.replace("params/", "batch_stats/", 1) + "/norm"
  if b.has(f"{stats}/mean"):
    members += [b.member(f"{stats}/mean", 0), b.member(f"{stats}/var", 0)]
  b.fix(f"{conv}/pointwise_in/kernel", 1, reason="GLU value / gate halves")
  b.fix(f"{conv}/pointwise_in/bias", 0, reason="GLU value / gate halves")
  b.fix(f"{conv}/depthwise/kernel", 0, reason="kernel taps")
  b.space(_name(conv), *members)
  b.residual += [b.member(f"{conv}/pointwise_in/kernel", 0), b.member(f"{conv}/pointwise_out/kernel", 1),
                 b.member(f"{conv}/pointwise_out/bias", 0)]


def _ctc_head(b: _Builder) -> None:
  b.residual.append(b.member("params/ctc_head/kernel", 0))
  b.fix("params/ctc_head/kernel", 1, reason="vocabulary")
  b.fix("params/ctc_head/bias", 0, reason="vocabulary")


def conformer_ctc_spec(variables: Variables) -> Spec:
  """The spec of a Conformer CTC model's variables {"params": ..., ["batch_stats": ...]} (boxed or not).

  Raises:
    ValueError: a leaf no rule covers, or an expected leaf missing (the message names it).
  """
  b = _Builder(variables, "conformer")
  _subsampling(b)
  for block in b.blocks():
    _norm(b, f"{block}/norm_ffn1")
    _ffn(b, block, "ffn1")
    _norm(b, f"{block}/norm_mhsa")
    _attention(b, block)
    _norm(b, f"{block}/norm_conv")
    _conv_module(b, block)
    _norm(b, f"{block}/norm_ffn2")
    _ffn(b, block, "ffn2")
    _norm(b, f"{block}/norm_out")
  _ctc_head(b)
  return b.finish(residual_fixed=False)


def transformer_ctc_spec(variables: Variables) -> Spec:
  """The spec of a Transformer CTC model's variables (pre- or post-LN, absolute or relative positions).

  With absolute positions (no mhsa/pos kernel) the residual stream is fixed; see the module docstring.

  Raises:
    ValueError: a leaf no rule covers, or an expected leaf missing (the message names it).
  """
  b = _Builder(variables, "transformer")
  _subsampling(b)
  blocks = b.blocks()
  for block in blocks:
    _norm(b, f"{block}/norm_mhsa")
    _attention(b, block)
    _norm(b, f"{block}/norm_ffn")
    _ffn(b, block, "ffn")
  if b.has(f"{_ENCODER}/norm_out/scale"):
    _norm(b, f"{_ENCODER}/norm_out")
  _ctc_head(b)
  return b.finish(residual_fixed=not any(b.has(f"{block}/mhsa/pos/kernel") for block in blocks))


def ctc_activations(model: nn.Module, variables: Variables, audio: jax.Array, audio_lengths: jax.Array,
                    spec: Spec) -> dict[str, np.ndarray]:
  """Each space part's activations on a batch: {"space/part": [units, samples]} for align.align(activations=...).

  The CTC model runs in eval mode capturing every module's output. A unit's samples are its values at every
  valid encoder frame (and, in the subsampling convs, at every mel position; the first conv's frames, at twice
  the encoder rate, are all taken). Sources: a subsampling conv's outputs; for the residual stream the proj
  output, every LayerNorm's output and every block's output; an FFN's dense_in output (before the activation);
  attention query and key outputs for part "qk" and value outputs for "vo" (units: heads x head_dim); the conv
  module's depthwise output. Concatenate several batches' results along samples for more support.
  """
  (log_probs, lengths), state = model.apply(spec_lib.unbox(dict(variables)), audio, audio_lengths,
                                             capture_intermediates=True, mutable=["intermediates"])
  captured = traverse_util.flatten_dict(state["intermediates"], sep="/")
  outputs = {path.removesuffix("/__call__"): value[0] for path, value in captured.items()
             if hasattr(value[0], "shape")}
  valid = np.arange(log_probs.shape[1])[None, :] < np.asarray(lengths)[:, None]

  def samples(path: str, unit_axes: int) -> np.ndarray:
    x = np.asarray(outputs[path], np.float32)
    if x.shape[1] == valid.shape[1]:
      x = x[valid]
    return x.reshape(-1, int(np.prod(x.shape[x.ndim - unit_axes:]))).T

  result = {}
  for space in spec.spaces:
    for part in space.parts:
      paths, unit_axes = _activation_sources(space.name, part.name, outputs)
      result[f"{space.name}/{part.name}"] = np.concatenate([samples(p, unit_axes) for p in paths], axis=1)
  return result


def _activation_sources(space: str, part: str, outputs: dict[str, Any]) -> tuple[list[str], int]:
  """Captured module paths whose trailing `unit_axes` axes index the units of space/part."""
  encoder = _ENCODER.removeprefix("params/")
  if space == "residual":
    stream = re.compile(rf"{encoder}/(subsampling/proj|(blocks_\d+/)?norm_\w+|blocks_\d+)$")
    return sorted(path for path in outputs if stream.match(path)), 1
  kind = space.rsplit("/", 1)[-1]
  if kind == "mhsa":
    return [f"{encoder}/{space}/{name}" for name in (("query", "key") if part == "qk" else ("value",))], 2
  if kind == "conv":
    return [f"{encoder}/{space}/depthwise"], 1
  if kind.startswith("ffn"):
    return [f"{encoder}/{space}/dense_in"], 1
  return [f"{encoder}/{space}"], 1  # subsampling/conv_{i}: the conv's own output
