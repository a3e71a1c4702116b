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

Zipformer (speechfuse.nn.zipformer; spaces in dependency order):
  encoder_embed/conv_{0,1,2}  each conv's output channels (kernels per tap; conv_0's single input channel is fixed);
                        conv_2's also hold the ConvNeXt's channels (it is residual over them: depthwise 7x7, the
                        input rows of pointwise_in, the outputs of pointwise_out) and out's rows (c * F' + f, inner F').
  encoder_embed/convnext  the ConvNeXt's 3C hidden units.
  residual/{start}:{stop}  the nested residual stream, one space per segment. Stack i reads the first dims[i]
                        channels (cut, or zero-padded), and the output joins the latest output of each width, so a
                        stream permutation must map every prefix [0, dims[i]) onto itself: it is block-diagonal over
                        the segments between consecutive widths (base: [0, 192), [192, 256), [256, 384), [384, 512)).
                        A segment's members are the windows [start, stop) of every stream axis that wide: out's
                        columns, its bias and encoder_embed's BiasNorm bias, every BiasNorm bias, Bypass scale
                        (bypass_mid, bypass, out_combiner), the input rows of every layer reading the stream and the
                        output columns and biases of every layer writing it, the CTC head's rows. BiasNorm's rms over
                        a stack's channels does not see the order within its width.
                        With unmasked_dims (zipformer_ctc_spec), each stack's feature-mask edges u and
                        u + (d - u) // 2 are boundaries too. The masks act in training only, so function identity does
                        not need them; but the moderate fine-tuning after fusion masks the fused (target) basis, and
                        a source unit aligned across an edge would then be masked where it never was, or the reverse.
  stacks_{i}/layers_{j}/attention/head_0, .../attention/heads  the heads axis of AttentionWeights (query, key,
                        pos_query, pos) and of both SelfAttentions (value, out), windows (0, 1) and (1, heads):
                        NonlinAttention reads head 0's weights, so head 0 stays in place and only heads 1.. move as
                        whole heads (Whiten's groups of key channels are heads, so they are kept). Parts, each with
                        its own within-head map: qk (query, key), pos (pos_query and pos share pos_head_dim),
                        value1 and value2 (each SelfAttention's value features and out's input). pos's pos_dim axis
                        holds the fixed positional features.
  .../ffn{1,2,3}        FFN hidden units.
  .../nonlin_attention  the 3d/4 hidden units: dense_in's s, x and y (their axis fixed) and dense_out's rows.
  .../conv{1,2}         conv-module channels: the GLU's value and gate halves, the depthwise conv per tap (causal:
                        the causal and chunkwise convs and chunkwise_scale's [2, K] edge factors).
Fixed: kernel taps, SimpleDownsample's weights over time (downsample, output_downsample), BiasNorm's log_scale
(a scalar), the vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
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
  """Collects spaces over a flattened tree; every leaf it touches is marked, so `build` finds the rest."""

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

  def member(self, path: str, *axes: int, inner: int = 1, window: tuple[int, int] | None = None) -> Member:
    self.shape(path)
    return Member(path, axes, inner, window)

  def stream(self, path: str, axis: int) -> None:
    """Puts `axis` of the leaf at `path` into the residual stream."""
    self.residual.append(self.member(path, axis))

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
    subsampling = [s for s in self.spaces if s.name.startswith("subsampling/")]
    blocks = [s for s in self.spaces if not s.name.startswith("subsampling/")]
    if residual_fixed:
      reason = "absolute sinusoids are added to the residual stream in this basis"
      residual = []
      self.fixed.extend(Fixed(m.path, m.axes, reason) for m in self.residual)
    else:
      size = self.flat[self.residual[0].path].shape[self.residual[0].axes[0]]
      residual = [Space("residual", (Part("units", size, tuple(self.residual)),))]
    return self.build(subsampling + residual + blocks)

  def build(self, spaces: list[Space]) -> Spec:
    """The validated spec of `spaces` (in dependency order) and the fixed entries, once every leaf is touched."""
    uncovered = sorted(set(self.flat) - self.used)
    if uncovered:
      raise ValueError(f"fusion spec: leaves {uncovered} are in no hidden space and not declared fixed in the "
                       f"{self.architecture} CTC spec")
    spec = Spec(tuple(spaces), tuple(self.fixed))
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
  b.stream(f"{prefix}/proj/kernel", 1)
  b.stream(f"{prefix}/proj/bias", 0)


def _norm(b: _Builder, prefix: str) -> None:
  b.stream(f"{prefix}/scale", 0)
  b.stream(f"{prefix}/bias", 0)


def _ffn(b: _Builder, prefix: str, name: str) -> None:
  ffn = f"{prefix}/{name}"
  b.space(_name(ffn), b.member(f"{ffn}/dense_in/kernel", 1), b.member(f"{ffn}/dense_in/bias", 0),
          b.member(f"{ffn}/dense_out/kernel", 0))
  for path, axis in ((f"{ffn}/dense_in/kernel", 0), (f"{ffn}/dense_out/kernel", 1), (f"{ffn}/dense_out/bias", 0)):
    b.stream(path, axis)


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
  for name in ("query", "key", "value"):
    b.stream(f"{mhsa}/{name}/kernel", 0)
  b.stream(f"{mhsa}/out/kernel", 2)
  b.stream(f"{mhsa}/out/bias", 0)


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
  _pointwise_stream(b, conv)


def _pointwise_stream(b: _Builder, conv: str) -> None:
  """A conv module's stream axes: pointwise_in's input rows, pointwise_out's output columns and bias."""
  b.stream(f"{conv}/pointwise_in/kernel", 0)
  b.stream(f"{conv}/pointwise_out/kernel", 1)
  b.stream(f"{conv}/pointwise_out/bias", 0)


def _ctc_head(b: _Builder) -> None:
  b.stream("params/ctc_head/kernel", 0)
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


def _indices(b: _Builder, pattern: str) -> list[int]:
  """The sorted integers i of the leaves whose path matches `pattern` (a regex with one (\\d+) group)."""
  return sorted({int(m.group(1)) for path in b.flat if (m := re.match(pattern, path))})


def _encoder_embed(b: _Builder) -> None:
  """ConvEmbed's spaces: each conv's output channels (conv_2's with the ConvNeXt's channels and out's rows), the
  ConvNeXt's hidden units; out's columns, its bias and the BiasNorm's bias go to the stream."""
  embed = f"{_ENCODER}/encoder_embed"
  convnext = f"{embed}/convnext"
  for i in range(3):
    kernel = f"{embed}/conv_{i}/kernel"
    b.fix(kernel, 0, 1, reason="kernel taps")
    if i == 0:
      b.fix(kernel, 2, reason="the single input channel (fbank)")
    members = [b.member(kernel, 3), b.member(f"{embed}/conv_{i}/bias", 0)]
    if i < 2:
      members.append(b.member(f"{embed}/conv_{i + 1}/kernel", 2))
    else:
      # The ConvNeXt is residual over conv_2's channels; out reads its rows channel-major, c * F' + f.
      rows, channels = b.shape(f"{embed}/out/kernel")[0], b.shape(kernel)[3]
      members += [b.member(f"{convnext}/depthwise/kernel", 3), b.member(f"{convnext}/depthwise/bias", 0),
                  b.member(f"{convnext}/pointwise_in/kernel", 0), b.member(f"{convnext}/pointwise_out/kernel", 1),
                  b.member(f"{convnext}/pointwise_out/bias", 0),
                  b.member(f"{embed}/out/kernel", 0, inner=rows // channels)]
      b.fix(f"{convnext}/depthwise/kernel", 0, 1, 2, reason="kernel taps and the depthwise conv's input group")
    b.space(_name(f"{embed}/conv_{i}"), *members)
  b.space(_name(convnext), b.member(f"{convnext}/pointwise_in/kernel", 1),
          b.member(f"{convnext}/pointwise_in/bias", 0), b.member(f"{convnext}/pointwise_out/kernel", 0))
  b.stream(f"{embed}/out/kernel", 1)
  b.stream(f"{embed}/out/bias", 0)
  b.stream(f"{embed}/norm/bias", 0)
  b.fix(f"{embed}/norm/log_scale", reason="a scalar")


def _zipformer_attention(b: _Builder, layer: str) -> None:
  """AttentionWeights and both SelfAttentions: head 0 (NonlinAttention reads its weights) and heads 1.. as two
  spaces, windows of the heads axis, each with parts qk, pos and value1 / value2 (their own within-head maps)."""
  weights = f"{layer}/attention_weights"
  heads, query_dim = b.shape(f"{weights}/query/bias")
  pos_dim = b.shape(f"{weights}/pos_query/bias")[1]
  value_dim = b.shape(f"{layer}/self_attention1/value/bias")[1]
  b.fix(f"{weights}/pos/kernel", 0, reason="compact relative positional features")
  for window, name in (((0, 1), "head_0"), ((1, heads), "heads")):
    if window[0] == window[1]:
      continue  # one head: no heads 1..
    head = lambda path, axes, window=window: b.member(path, *axes, window=window)
    qk = tuple(head(f"{weights}/{proj}/{leaf}", axes) for proj in ("query", "key")
               for leaf, axes in (("kernel", (1, 2)), ("bias", (0, 1))))
    pos = (head(f"{weights}/pos_query/kernel", (1, 2)), head(f"{weights}/pos_query/bias", (0, 1)),
           head(f"{weights}/pos/kernel", (1, 2)))
    parts = [Part("qk", query_dim, qk), Part("pos", pos_dim, pos)]
    for k in (1, 2):
      attention = f"{layer}/self_attention{k}"
      parts.append(Part(f"value{k}", value_dim, (head(f"{attention}/value/kernel", (1, 2)),
                                                 head(f"{attention}/value/bias", (0, 1)),
                                                 head(f"{attention}/out/kernel", (0, 1)))))
    b.spaces.append(Space(f"{_name(layer)}/attention/{name}", tuple(parts), window[1] - window[0]))
  for proj in ("query", "key", "pos_query"):
    b.stream(f"{weights}/{proj}/kernel", 0)
  for k in (1, 2):
    b.stream(f"{layer}/self_attention{k}/value/kernel", 0)
    b.stream(f"{layer}/self_attention{k}/out/kernel", 2)
    b.stream(f"{layer}/self_attention{k}/out/bias", 0)


def _nonlin_attention(b: _Builder, layer: str) -> None:
  nonlin = f"{layer}/nonlin_attention"
  b.space(_name(nonlin), b.member(f"{nonlin}/dense_in/kernel", 2), b.member(f"{nonlin}/dense_in/bias", 1),
          b.member(f"{nonlin}/dense_out/kernel", 0))
  b.fix(f"{nonlin}/dense_in/kernel", 1, reason="NonlinAttention's s, x, y")
  b.fix(f"{nonlin}/dense_in/bias", 0, reason="NonlinAttention's s, x, y")
  for path, axis in ((f"{nonlin}/dense_in/kernel", 0), (f"{nonlin}/dense_out/kernel", 1),
                     (f"{nonlin}/dense_out/bias", 0)):
    b.stream(path, axis)


def _zipformer_conv(b: _Builder, layer: str, name: str) -> None:
  """A conv module's channels: the GLU's halves together, the depthwise conv (causal: the causal and chunkwise
  convs and the chunk-edge scales) per tap."""
  conv = f"{layer}/{name}"
  members = [b.member(f"{conv}/pointwise_in/kernel", 2), b.member(f"{conv}/pointwise_in/bias", 1),
             b.member(f"{conv}/pointwise_out/kernel", 0)]
  b.fix(f"{conv}/pointwise_in/kernel", 1, reason="GLU value / gate halves")
  b.fix(f"{conv}/pointwise_in/bias", 0, reason="GLU value / gate halves")
  depthwise = f"{conv}/depthwise"
  convs = [depthwise] if b.has(f"{depthwise}/kernel") else [f"{depthwise}/causal", f"{depthwise}/chunkwise"]
  for path in convs:
    members += [b.member(f"{path}/kernel", 1), b.member(f"{path}/bias", 0)]
    b.fix(f"{path}/kernel", 0, reason="kernel taps")
  if len(convs) == 2:
    members.append(b.member(f"{depthwise}/chunkwise_scale", 2))
    b.fix(f"{depthwise}/chunkwise_scale", 0, 1, reason="chunk start / end and taps of the edge scales")
  b.space(_name(conv), *members)
  _pointwise_stream(b, conv)


def _zipformer_layer(b: _Builder, layer: str) -> None:
  _zipformer_attention(b, layer)
  _ffn(b, layer, "ffn1")
  _nonlin_attention(b, layer)
  _zipformer_conv(b, layer, "conv1")
  _ffn(b, layer, "ffn2")
  _zipformer_conv(b, layer, "conv2")
  _ffn(b, layer, "ffn3")
  for path in (f"{layer}/bypass_mid/scale", f"{layer}/norm/bias", f"{layer}/bypass/scale"):
    b.stream(path, 0)
  b.fix(f"{layer}/norm/log_scale", reason="a scalar")


def _segments(b: _Builder, stack_dims: list[int], unmasked_dims: tuple[int, ...] | None) -> list[Space]:
  """The nested residual stream's spaces, one per segment [start, stop) between consecutive boundaries: the widths
  of the stream's axes (dims and the output's max(dims)) and, given unmasked_dims, each stack's feature-mask edges.
  A segment's members are the windows [start, stop) of every stream axis at least `stop` wide."""
  width = lambda member: b.flat[member.path].shape[member.axes[0]]
  bounds = {width(member) for member in b.residual}
  if unmasked_dims is not None:
    if len(unmasked_dims) != len(stack_dims) or any(not 0 <= u <= d for u, d in zip(unmasked_dims, stack_dims)):
      raise ValueError(f"fusion spec: unmasked_dims={tuple(unmasked_dims)} needs one entry <= dims[i] per stack of "
                       f"this Zipformer, dims={tuple(stack_dims)}")
    bounds |= {edge for u, d in zip(unmasked_dims, stack_dims) for edge in (u, u + (d - u) // 2) if edge > 0}
  edges = [0] + sorted(bounds)
  return [Space(f"residual/{start}:{stop}", (Part("units", stop - start, tuple(
      dataclasses.replace(member, window=(start, stop)) for member in b.residual if width(member) >= stop)),))
          for start, stop in zip(edges, edges[1:])]


def zipformer_ctc_spec(variables: Variables, unmasked_dims: tuple[int, ...] | None = None) -> Spec:
  """The spec of a Zipformer CTC model's variables (causal or not, any number of stacks and layers).

  Args:
    variables: {"params": ...} (boxed or not).
    unmasked_dims: the encoder's unmasked_dims, for a fusion that training with feature masks follows (module
      docstring); None: the segments of the widths only, all that function identity needs.

  Raises:
    ValueError: a leaf no rule covers, an expected leaf missing (the message names it), or unmasked_dims that do
      not fit the stacks.
  """
  b = _Builder(variables, "zipformer")
  _encoder_embed(b)
  front = len(b.spaces)
  stack_dims = []
  for i in _indices(b, rf"{_ENCODER}/stacks_(\d+)/"):
    stack = f"{_ENCODER}/stacks_{i}"
    layers = _indices(b, rf"{stack}/layers_(\d+)/")
    stack_dims.append(b.shape(f"{stack}/layers_{layers[0]}/norm/bias")[0])
    for j in layers:
      _zipformer_layer(b, f"{stack}/layers_{j}")
    if b.has(f"{stack}/downsample/logits"):
      b.fix(f"{stack}/downsample/logits", 0, reason="SimpleDownsample's weights over time")
      b.stream(f"{stack}/out_combiner/scale", 0)
  b.fix(f"{_ENCODER}/output_downsample/logits", 0, reason="SimpleDownsample's weights over time")
  _ctc_head(b)
  return b.build(b.spaces[:front] + _segments(b, stack_dims, unmasked_dims) + b.spaces[front:])


def ctc_activations(model: nn.Module, variables: Variables, audio: jax.Array, audio_lengths: jax.Array,
                    spec: Spec) -> dict[str, np.ndarray]:
  """Each space part's activations on a batch: {"space/part": [units, samples]} for align.align(activations=...).

  The CTC model runs in eval mode capturing every module's output. A unit's samples are its values at every
  valid encoder frame (and, in the subsampling convs, at every mel position; the first conv's frames, at twice
  the encoder rate, are all taken). Sources: a subsampling conv's outputs; for the residual stream the proj
  output, every LayerNorm's output and every block's output; an FFN's dense_in output (before the activation);
  attention query and key outputs for part "qk" and value outputs for "vo" (units: heads x head_dim); the conv
  module's depthwise output. Concatenate several batches' results along samples for more support.

  Zipformer (frames at each stack's own rate, all taken unless at the encoder's): encoder_embed's conv outputs
  (conv_2's with the ConvNeXt's output), the ConvNeXt's pointwise_in output; for a residual segment the channels
  [start, stop) of encoder_embed's BiasNorm, every layer's bypass_mid and output, every out_combiner and the
  output_downsample wide enough to hold them; query and key (part qk), pos_query (pos), self_attention{k}'s value
  (value{k}) of the space's heads; dense_in of the FFNs and NonlinAttention (its s, x, y as samples), a conv module's
  pointwise_in (value and gate as samples).
  """
  (log_probs, lengths), state = _capture(model, spec_lib.unbox(dict(variables)), audio, audio_lengths)
  captured = traverse_util.flatten_dict(state["intermediates"], sep="/")
  outputs = {path.removesuffix("/__call__"): value[0] for path, value in captured.items()
             if hasattr(value[0], "shape")}
  valid = np.arange(log_probs.shape[1])[None, :] < np.asarray(lengths)[:, None]

  def samples(path: str, unit_axes: int, window: tuple[int, int] | None) -> np.ndarray:
    x = np.asarray(outputs[path], np.float32)
    if window is not None:
      x = x[(..., slice(*window)) + (slice(None),) * (unit_axes - 1)]
    if x.shape[1] == valid.shape[1]:
      x = x[valid]
    return x.reshape(-1, int(np.prod(x.shape[x.ndim - unit_axes:]))).T

  result = {}
  for space in spec.spaces:
    for part in space.parts:
      paths, unit_axes = _activation_sources(space.name, part.name, outputs)
      window = part.members[0].window  # the units' slice of every source, as of every member
      if window is not None:
        paths = [p for p in paths if outputs[p].shape[outputs[p].ndim - unit_axes] >= window[1]]
      result[f"{space.name}/{part.name}"] = np.concatenate([samples(p, unit_axes, window) for p in paths], axis=1)
  return result


@functools.partial(jax.jit, static_argnums=0)
def _capture(model: nn.Module, variables: Variables, audio: jax.Array, audio_lengths: jax.Array) -> Any:
  # Jitted, one program per model and batch shape: eager, each of the model's ops would compile on its own.
  return model.apply(variables, audio, audio_lengths, capture_intermediates=True, mutable=["intermediates"])


def _activation_sources(space: str, part: str, outputs: dict[str, Any]) -> tuple[list[str], int]:
  """Captured module paths whose trailing `unit_axes` axes index the units of space/part."""
  encoder = _ENCODER.removeprefix("params/")
  if space == "residual":
    stream = re.compile(rf"{encoder}/(subsampling/proj|(blocks_\d+/)?norm_\w+|blocks_\d+)$")
    return sorted(path for path in outputs if stream.match(path)), 1
  if space.startswith("residual/"):  # a Zipformer's segment
    stream = re.compile(rf"{encoder}/(encoder_embed/norm|stacks_\d+/(out_combiner|layers_\d+(/bypass_mid)?)|"
                        "output_downsample)$")
    return sorted(path for path in outputs if stream.match(path)), 1
  layer, kind = space.rsplit("/", 1)
  if kind in ("head_0", "heads"):  # a Zipformer layer's attention
    modules = {"qk": ("attention_weights/query", "attention_weights/key"), "pos": ("attention_weights/pos_query",),
               "value1": ("self_attention1/value",), "value2": ("self_attention2/value",)}[part]
    return [f"{encoder}/{layer.removesuffix('/attention')}/{name}" for name in modules], 2
  if kind == "mhsa":
    return [f"{encoder}/{space}/{name}" for name in (("query", "key") if part == "qk" else ("value",))], 2
  if kind == "conv":
    return [f"{encoder}/{space}/depthwise"], 1
  if kind in ("conv1", "conv2"):
    return [f"{encoder}/{space}/pointwise_in"], 1
  if kind.startswith("ffn") or kind == "nonlin_attention":
    return [f"{encoder}/{space}/dense_in"], 1
  if space == "encoder_embed/convnext":
    return [f"{encoder}/{space}/pointwise_in"], 1
  if space == "encoder_embed/conv_2":
    return [f"{encoder}/{space}", f"{encoder}/encoder_embed/convnext"], 1
  return [f"{encoder}/{space}"], 1  # subsampling/conv_{i}, encoder_embed/conv_{0,1}: the conv's own output
