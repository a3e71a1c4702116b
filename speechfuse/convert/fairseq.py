"""fairseq HuBERT / wav2vec 2.0 checkpoints (MODEL.pt: {"cfg": {"model": {...}}, "model": state dict}, or an older
{"args": Namespace, "model": ...}) in.

The file is read with torch.load(weights_only=True), argparse.Namespace allowed (old checkpoints keep their
arguments in one), so nothing in it is executed. Keys are renamed to the transformers layout
(convert.layout.fairseq_to_hf) and loaded through the same checked table; HuBERT's final_proj and
label_embs_concat become models.ssl's hubert head (final_proj, label_embeddings).
"""

from __future__ import annotations

import argparse
import ast
import operator
import os
from typing import Any

import ml_collections
import numpy as np

from speechfuse.convert import layout, tensors
from speechfuse.nn import wav2vec2

_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_accurate": "gelu", "relu": "relu", "swish": "swish"}


def _literal(expression: str) -> Any:
  """Evaluates fairseq's conv_feature_layers ("[(512, 10, 5)] + [(512, 3, 2)] * 4 + ...") without eval: literals,
  + and * only."""
  ops = {ast.Add: operator.add, ast.Mult: operator.mul}

  def value(node):
    if isinstance(node, ast.BinOp) and type(node.op) in ops:
      return ops[type(node.op)](value(node.left), value(node.right))
    if isinstance(node, (ast.List, ast.Tuple)):
      items = [value(item) for item in node.elts]
      return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Constant):
      return node.value
    raise ValueError(f"conv_feature_layers={expression!r} is not a list of (dim, kernel, stride) literals")

  return value(ast.parse(expression, mode="eval").body)


def model_config(checkpoint: dict[str, Any], source: str) -> dict[str, Any]:
  """The model section of a fairseq checkpoint's config, as a dict."""
  cfg = checkpoint.get("cfg")
  if cfg and cfg.get("model") is not None:
    model = cfg["model"]
    return dict(model) if not isinstance(model, argparse.Namespace) else vars(model)
  if isinstance(checkpoint.get("args"), argparse.Namespace):
    return vars(checkpoint["args"])
  raise ValueError(f"{source} has no model config (neither cfg.model nor args): is it a fairseq checkpoint?")


def encoder_config(model: dict[str, Any], source: str) -> tuple[dict[str, Any], str]:
  """fairseq's HuBERT / wav2vec 2.0 model config -> (config.model.encoder, the model's name: "hubert" or
  "wav2vec2"), fairseq's defaults where a key is absent."""
  name = model.get("_name", model.get("arch", "hubert"))
  convs = _literal(model.get("conv_feature_layers", "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"))
  if [(k, s) for _, k, s in convs] != list(wav2vec2.EXTRACTOR_KERNELS) or len({c for c, _, _ in convs}) != 1:
    raise ValueError(f"{source}: conv_feature_layers={model.get('conv_feature_layers')!r} is not supported (the "
                     "standard 7 convs of one width)")
  mode = model.get("extractor_mode", "default")
  if mode not in ("default", "layer_norm"):
    raise ValueError(f"{source}: extractor_mode={mode!r} is not 'default' or 'layer_norm'")
  activation = model.get("activation_fn", "gelu")
  if activation not in _ACTIVATIONS:
    raise ValueError(f"{source}: activation_fn={activation!r} is not supported; choose from {sorted(_ACTIVATIONS)}")
  if model.get("pos_conv_depth", 1) != 1:
    raise ValueError(f"{source}: pos_conv_depth={model['pos_conv_depth']} is not supported (one positional conv)")
  return dict(
      architecture="wav2vec2", num_blocks=model.get("encoder_layers", 12), d_model=model.get("encoder_embed_dim", 768),
      num_heads=model.get("encoder_attention_heads", 12), ffn_dim=model.get("encoder_ffn_embed_dim", 3072),
      extractor_channels=convs[0][0], extractor_mode="group_norm" if mode == "default" else "layer_norm",
      conv_bias=bool(model.get("conv_bias", False)), pre_norm=bool(model.get("layer_norm_first", False)),
      pos_conv_kernel=model.get("conv_pos", 128), pos_conv_groups=model.get("conv_pos_groups", 16),
      ffn_activation=_ACTIVATIONS[activation], dropout_rate=model.get("dropout", 0.1),
      attention_dropout_rate=model.get("attention_dropout", 0.1), input_dropout_rate=model.get("dropout_input", 0.0),
      feature_grad_mult=model.get("feature_grad_mult", 1.0),
  ), str(name)


def read(path: str | os.PathLike) -> dict[str, Any]:
  """The checkpoint dict of fairseq file `path` (weights only; argparse.Namespace allowed)."""
  import torch  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found")
  with torch.serialization.safe_globals([argparse.Namespace]):
    try:
      return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors of many kinds: one line naming the file
      raise ValueError(f"{path} is not a readable fairseq checkpoint: {str(e).splitlines()[0]}") from e


def load(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str, list[str]]:
  """A fairseq checkpoint -> (encoder params, the hubert head's params, encoder config, model name, notes)."""
  source = os.fspath(path)
  checkpoint = read(path)
  if "model" not in checkpoint:
    raise ValueError(f"{source} has no 'model' state dict: is it a fairseq checkpoint?")
  encoder, name = encoder_config(model_config(checkpoint, source), source)
  state, head, dropped = {}, {}, []
  for key, value in checkpoint["model"].items():
    value = value.float().numpy()
    renamed = layout.fairseq_to_hf(key)
    if renamed is not None:
      state[renamed] = value
    elif name == "hubert" and key in layout.FAIRSEQ_HUBERT_HEAD:
      head_path, kind = layout.FAIRSEQ_HUBERT_HEAD[key]
      head[head_path] = layout.KINDS[kind].to_ours(value, 1)
    elif layout.FAIRSEQ_PRETRAINING_ONLY.match(key):
      dropped.append(key)
    else:
      raise ValueError(f"{source}: {key} has no place in the encoder")
  params, initialised = tensors.to_params(state, ml_collections.ConfigDict(encoder), source=source)
  tree = {}
  for head_path, value in head.items():
    node = tree
    for part in head_path[:-1]:
      node = node.setdefault(part, {})
    node[head_path[-1]] = np.asarray(value, np.float32)
  notes = [f"left out the pre-training tensors {', '.join(sorted(dropped))}"] if dropped else []
  notes += [f"kept as initialised (not in the source): {', '.join(initialised)}"] if initialised else []
  return params, tree, encoder, name, notes
