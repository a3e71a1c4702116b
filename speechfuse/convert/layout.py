"""Where each parameter of our wav2vec 2.0 / HuBERT / WavLM encoder lies in a transformers state dict, and back.

`hf_key(path)` names the tensor of the transformers base model (Wav2Vec2Model, HubertModel, WavLMModel; no
"wav2vec2." prefix) that holds our parameter `path` (a tuple inside the encoder's tree, nn.wav2vec2's docstring
lists them), and `KINDS[kind]` converts between the two layouts (PyTorch Linear weights are [out, in], Conv1d
weights [out, in, kernel], attention projections fuse the heads). `fairseq_to_hf(key)` renames a fairseq HuBERT /
wav2vec 2.0 key to the transformers one, so both formats share one table.

A table rather than a library: transformers has no Flax classes for these models, and the only public converters
(transformers' own conversion scripts) go from fairseq to PyTorch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class Kind(NamedTuple):
  """to_ours(tensor, heads) -> our array; to_theirs(array, heads) -> the PyTorch tensor's layout."""
  to_ours: Callable[[np.ndarray, int], np.ndarray]
  to_theirs: Callable[[np.ndarray, int], np.ndarray]


KINDS: dict[str, Kind] = {
    "copy": Kind(lambda t, h: t, lambda a, h: a),
    "dense": Kind(lambda t, h: t.T, lambda a, h: a.T),  # [out, in] <-> [in, out]
    "conv": Kind(lambda t, h: t.transpose(2, 1, 0), lambda a, h: a.transpose(2, 1, 0)),  # [out, in, k] <-> [k, in, out]
    # q / k / v: [h * k, d] <-> [d, h, k]; their biases [h * k] <-> [h, k]; out: [d, h * k] <-> [h, k, d].
    "heads_in": Kind(lambda t, h: t.T.reshape(t.shape[1], h, -1), lambda a, h: a.reshape(a.shape[0], -1).T),
    "heads_bias": Kind(lambda t, h: t.reshape(h, -1), lambda a, h: a.reshape(-1)),
    "heads_out": Kind(lambda t, h: t.T.reshape(h, -1, t.shape[0]), lambda a, h: a.reshape(-1, a.shape[-1]).T),
    "tap_norm": Kind(lambda t, h: t.reshape(-1), lambda a, h: a.reshape(1, 1, -1)),  # weight_g [1, 1, K] <-> [K]
    "head_const": Kind(lambda t, h: t.reshape(-1), lambda a, h: a.reshape(1, -1, 1, 1)),  # [1, h, 1, 1] <-> [h]
}

_NORM = {"scale": "weight", "bias": "bias"}
_ATTENTION = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj"}
_BLOCK_NORMS = {"norm_mhsa": "layer_norm", "norm_ffn": "final_layer_norm"}
_FFN = {"dense_in": "intermediate_dense", "dense_out": "output_dense"}
# The positional conv's weight norm under its two transformers spellings (old weight_g / weight_v, newer
# torch.nn.utils.parametrizations): exports take the model's own, imports accept either.
POS_CONV_G = ("encoder.pos_conv_embed.conv.weight_g", "encoder.pos_conv_embed.conv.parametrizations.weight.original0")
POS_CONV_V = ("encoder.pos_conv_embed.conv.weight_v", "encoder.pos_conv_embed.conv.parametrizations.weight.original1")


def hf_key(path: tuple[str, ...]) -> tuple[str, str]:
  """Our encoder parameter `path` -> (transformers key, kind); a KeyError names a path with no counterpart."""
  name = "/".join(path)
  leaf = path[-1]
  rules: list[tuple[str, Callable[[re.Match], tuple[str, str]]]] = [
      (r"feature_extractor/conv_layers_(\d+)/conv/(kernel|bias)",
       lambda m: (f"feature_extractor.conv_layers.{m[1]}.conv.{'weight' if m[2] == 'kernel' else 'bias'}",
                  "conv" if m[2] == "kernel" else "copy")),
      (r"feature_extractor/conv_layers_(\d+)/layer_norm/(scale|bias)",
       lambda m: (f"feature_extractor.conv_layers.{m[1]}.layer_norm.{_NORM[m[2]]}", "copy")),
      (r"feature_projection/layer_norm/(scale|bias)",
       lambda m: (f"feature_projection.layer_norm.{_NORM[m[1]]}", "copy")),
      (r"feature_projection/projection/(kernel|bias)",
       lambda m: (f"feature_projection.projection.{'weight' if m[1] == 'kernel' else 'bias'}",
                  "dense" if m[1] == "kernel" else "copy")),
      (r"mask_embedding/embedding", lambda m: ("masked_spec_embed", "copy")),
      (r"pos_conv_embed/kernel_v", lambda m: (POS_CONV_V[0], "conv")),
      (r"pos_conv_embed/kernel_g", lambda m: (POS_CONV_G[0], "tap_norm")),
      (r"pos_conv_embed/bias", lambda m: ("encoder.pos_conv_embed.conv.bias", "copy")),
      (r"encoder_norm/(scale|bias)", lambda m: (f"encoder.layer_norm.{_NORM[m[1]]}", "copy")),
      (r"relative_position_bias/embedding/embedding", lambda m: ("encoder.layers.0.attention.rel_attn_embed.weight",
                                                                 "copy")),
      (r"blocks_(\d+)/mhsa/(query|key|value|out)/(kernel|bias)",
       lambda m: (f"encoder.layers.{m[1]}.attention.{_ATTENTION[m[2]]}.{'weight' if m[3] == 'kernel' else 'bias'}",
                  ("heads_out" if m[2] == "out" else "heads_in") if m[3] == "kernel"
                  else ("copy" if m[2] == "out" else "heads_bias"))),
      (r"blocks_(\d+)/(norm_mhsa|norm_ffn)/(scale|bias)",
       lambda m: (f"encoder.layers.{m[1]}.{_BLOCK_NORMS[m[2]]}.{_NORM[m[3]]}", "copy")),
      (r"blocks_(\d+)/ffn/(dense_in|dense_out)/(kernel|bias)",
       lambda m: (f"encoder.layers.{m[1]}.feed_forward.{_FFN[m[2]]}.{'weight' if m[3] == 'kernel' else 'bias'}",
                  "dense" if m[3] == "kernel" else "copy")),
      (r"blocks_(\d+)/position_bias_gate/linear/(kernel|bias)",
       lambda m: (f"encoder.layers.{m[1]}.attention.gru_rel_pos_linear.{'weight' if m[2] == 'kernel' else 'bias'}",
                  "dense" if m[2] == "kernel" else "copy")),
      (r"blocks_(\d+)/position_bias_gate/const", lambda m: (f"encoder.layers.{m[1]}.attention.gru_rel_pos_const",
                                                             "head_const")),
  ]
  for pattern, target in rules:
    match = re.fullmatch(pattern, name)
    if match:
      return target(match)
  raise KeyError(f"encoder parameter {name} ({leaf}) has no transformers counterpart")


# fairseq HuBERT / wav2vec 2.0 key -> transformers key (regex, replacement), applied in order, first match wins.
_FAIRSEQ = [
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"feature_extractor\.conv_layers\.0\.2\.(weight|bias)", r"feature_extractor.conv_layers.0.layer_norm.\1"),
    (r"layer_norm\.(weight|bias)", r"feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"feature_projection.projection.\1"),
    (r"mask_emb", "masked_spec_embed"),
    (r"encoder\.pos_conv\.0\.(weight_g|weight_v|bias)", r"encoder.pos_conv_embed.conv.\1"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)", r"encoder.layers.\1.attention.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.layers.\1.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
]
# fairseq's pre-training heads: HuBERT's final_proj / label embeddings load into models.ssl's hubert head; the
# wav2vec 2.0 quantizer and projections are not part of the encoder.
FAIRSEQ_HUBERT_HEAD = {"final_proj.weight": (("final_proj", "kernel"), "dense"),
                       "final_proj.bias": (("final_proj", "bias"), "copy"),
                       "label_embs_concat": (("label_embeddings",), "copy")}
FAIRSEQ_PRETRAINING_ONLY = re.compile(r"(quantizer\.|project_q\.|final_proj\.|project_inp\.|target_glu\.)")


def fairseq_to_hf(key: str) -> str | None:
  """The transformers name of fairseq encoder key `key`, or None when it is not an encoder parameter."""
  for pattern, replacement in _FAIRSEQ:
    if re.fullmatch(pattern, key):
      return re.sub(pattern, replacement, key)
  return None
