"""transformers folders (`save_pretrained`: config.json + safetensors or pytorch_model.bin) in and out.

Import reads the tensors with safetensors (or torch for .bin files) and the config as JSON: transformers itself
is needed only to export, where the folder is written by transformers' own model class so that
`AutoModel.from_pretrained` reads it back.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any

import ml_collections
import numpy as np

from speechfuse.convert import tensors
from speechfuse.nn import wav2vec2

MODEL_TYPES = ("wav2vec2", "hubert", "wavlm")
_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu",
                "swish": "swish", "silu": "swish"}
_KERNELS = tuple(k for k, _ in wav2vec2.EXTRACTOR_KERNELS)
_STRIDES = tuple(s for _, s in wav2vec2.EXTRACTOR_KERNELS)
# Heads of the transformers task classes (ForCTC, ForPreTraining, ForSequenceClassification, ...): outside the
# encoder, left out on import.
_TASK_HEADS = ("lm_head.", "quantizer.", "project_hid.", "project_q.", "projector.", "classifier.", "layer_weights",
               "feature_extractor_adapter.")


def _need(config: dict[str, Any], key: str, wanted: Any, source: str) -> None:
  if key in config and config[key] != wanted and tuple(np.atleast_1d(config[key])) != tuple(np.atleast_1d(wanted)):
    raise ValueError(f"{source}: {key}={config[key]!r} is not supported (speechfuse's encoder has {wanted!r})")


def encoder_config(config: dict[str, Any], *, source: str, group_norm_over_padding: bool = False) -> dict[str, Any]:
  """A transformers config (config.json as a dict) -> config.model.encoder of the same model (a plain dict).

  Raises:
    ValueError: the model type or a setting our encoder does not have (e.g. other conv kernels), named.
  """
  model_type = config.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"{source}: model_type {model_type!r} is not one of {MODEL_TYPES}")
  conv_dim = tuple(config.get("conv_dim", (512,) * 7))
  if len(set(conv_dim)) != 1 or len(conv_dim) != 7:
    raise ValueError(f"{source}: conv_dim={list(conv_dim)} is not supported (7 convs of one width)")
  _need(config, "conv_kernel", _KERNELS, source)
  _need(config, "conv_stride", _STRIDES, source)
  _need(config, "feat_extract_activation", "gelu", source)
  _need(config, "layer_norm_eps", 1e-5, source)
  _need(config, "add_adapter", False, source)
  norm = config.get("feat_extract_norm", "group")
  if norm not in ("group", "layer"):
    raise ValueError(f"{source}: feat_extract_norm={norm!r} is not 'group' or 'layer'")
  activation = config.get("hidden_act", "gelu")
  if activation not in _ACTIVATIONS:
    raise ValueError(f"{source}: hidden_act={activation!r} is not supported; choose from {sorted(_ACTIVATIONS)}")
  encoder = dict(
      architecture="wav2vec2",
      num_blocks=config.get("num_hidden_layers", 12), d_model=config.get("hidden_size", 768),
      num_heads=config.get("num_attention_heads", 12), ffn_dim=config.get("intermediate_size", 3072),
      extractor_channels=conv_dim[0], extractor_mode="group_norm" if norm == "group" else "layer_norm",
      conv_bias=bool(config.get("conv_bias", False)), group_norm_over_padding=group_norm_over_padding,
      feature_projection_norm=bool(config.get("feat_proj_layer_norm", True)) if model_type == "hubert" else True,
      pre_norm=bool(config.get("do_stable_layer_norm", False)),
      pos_conv_kernel=config.get("num_conv_pos_embeddings", 128),
      pos_conv_groups=config.get("num_conv_pos_embedding_groups", 16),
      ffn_activation=_ACTIVATIONS[activation],
      dropout_rate=config.get("hidden_dropout", 0.1), attention_dropout_rate=config.get("attention_dropout", 0.1),
      input_dropout_rate=config.get("feat_proj_dropout", 0.0),
  )
  if model_type == "wavlm":
    encoder.update(relative_position_buckets=config.get("num_buckets", 320),
                   max_relative_distance=config.get("max_bucket_distance", 800))
  return encoder


def hf_config(encoder: ml_collections.ConfigDict, model_type: str) -> dict[str, Any]:
  """config.model.encoder -> the keyword arguments of the transformers config of `model_type`."""
  if model_type not in MODEL_TYPES:
    raise ValueError(f"model type {model_type!r} is not one of {MODEL_TYPES}")
  wavlm = encoder.get("relative_position_buckets", 0) > 0
  if wavlm != (model_type == "wavlm"):
    raise ValueError(f"the encoder {'has' if wavlm else 'has no'} WavLM's gated relative position bias: export it "
                     f"as {'wavlm' if wavlm else 'wav2vec2 or hubert'}, not {model_type}")
  if not encoder.get("feature_projection_norm", True) and model_type != "hubert":
    raise ValueError("an encoder without the feature projection's LayerNorm exports as hubert only")
  activation = {v: k for k, v in reversed(list(_ACTIVATIONS.items()))}[encoder.get("ffn_activation", "gelu_exact")]
  config = dict(
      model_type=model_type, hidden_size=encoder.d_model, num_hidden_layers=encoder.num_blocks,
      num_attention_heads=encoder.num_heads, intermediate_size=encoder.ffn_dim,
      conv_dim=[encoder.get("extractor_channels", 512)] * 7, conv_kernel=list(_KERNELS), conv_stride=list(_STRIDES),
      conv_bias=encoder.get("conv_bias", False),
      feat_extract_norm="group" if encoder.get("extractor_mode", "group_norm") == "group_norm" else "layer",
      do_stable_layer_norm=encoder.get("pre_norm", False), num_conv_pos_embeddings=encoder.get("pos_conv_kernel", 128),
      num_conv_pos_embedding_groups=encoder.get("pos_conv_groups", 16), hidden_act=activation, layer_norm_eps=1e-5,
      hidden_dropout=encoder.get("dropout_rate", 0.1), activation_dropout=encoder.get("dropout_rate", 0.1),
      attention_dropout=encoder.get("attention_dropout_rate", 0.1),
      feat_proj_dropout=encoder.get("input_dropout_rate", 0.1),
  )
  if model_type == "hubert":
    config["feat_proj_layer_norm"] = encoder.get("feature_projection_norm", True)
  if wavlm:
    config.update(num_buckets=encoder.relative_position_buckets, max_bucket_distance=encoder.max_relative_distance)
  return config


def read_state_dict(directory: pathlib.Path) -> dict[str, np.ndarray]:
  """The tensors of a save_pretrained folder: model.safetensors (sharded or not), else pytorch_model.bin."""
  index = directory / "model.safetensors.index.json"
  files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else (
      ["model.safetensors"] if (directory / "model.safetensors").is_file() else [])
  if files:
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    state = {}
    for name in files:
      state.update(load_file(directory / name))
    return state
  bin_file = directory / "pytorch_model.bin"
  if not bin_file.is_file():
    raise FileNotFoundError(f"{directory} holds neither model.safetensors nor pytorch_model.bin")
  torch = _torch()
  state = torch.load(bin_file, map_location="cpu", weights_only=True)
  return {key: value.float().numpy() for key, value in state.items()}


def encoder_state(state: dict[str, np.ndarray], model_type: str) -> tuple[dict[str, np.ndarray], list[str]]:
  """The encoder's tensors of a base-model or task-class state dict (prefix "<model_type>." dropped), and the
  names of the task heads left out."""
  prefix = f"{model_type}."
  if not any(key.startswith(prefix) for key in state):
    return state, []
  encoder, heads = {}, []
  for key, value in state.items():
    if key.startswith(prefix):
      encoder[key[len(prefix):]] = value
    elif key.startswith(_TASK_HEADS):
      heads.append(key)
    else:
      raise ValueError(f"{key} is neither an encoder tensor ({prefix}...) nor a known task head")
  return encoder, heads


def load(directory: str | os.PathLike, *,
         group_norm_over_padding: bool = False) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
  """A save_pretrained folder -> (encoder params, encoder config dict, notes on what was left out or kept)."""
  directory = pathlib.Path(directory)
  config_file = directory / "config.json"
  if not config_file.is_file():
    raise FileNotFoundError(f"{config_file} not found: pass a transformers save_pretrained folder")
  config = json.loads(config_file.read_text())
  encoder = encoder_config(config, source=os.fspath(config_file), group_norm_over_padding=group_norm_over_padding)
  state, heads = encoder_state(read_state_dict(directory), config["model_type"])
  params, initialised = tensors.to_params(state, ml_collections.ConfigDict(encoder), source=os.fspath(directory))
  notes = ([f"left out the task heads {', '.join(sorted({h.split('.')[0] for h in heads}))}"] if heads else [])
  notes += [f"kept as initialised (not in the source): {', '.join(initialised)}"] if initialised else []
  return params, encoder, notes


def _torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("this needs PyTorch: pip install 'speechfuse[convert]'") from e
  return torch


def export(params: dict[str, Any], encoder: ml_collections.ConfigDict, out: str | os.PathLike,
           model_type: str) -> str:
  """Writes encoder `params` as a transformers folder of `model_type` at the new path `out` (atomically)."""
  try:
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("to-hf needs transformers: pip install 'speechfuse[convert]'") from e
  torch = _torch()
  out = pathlib.Path(out).absolute()
  if out.exists():
    raise FileExistsError(f"{out} exists; choose another output path or remove it")
  kwargs = hf_config(encoder, model_type)
  config = transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
  model = transformers.AutoModel.from_config(config)
  expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
  state = tensors.to_state_dict(params, encoder, expected)
  model.load_state_dict({key: torch.from_numpy(value) for key, value in state.items()}, strict=True)
  staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
  shutil.rmtree(staging, ignore_errors=True)
  try:
    model.save_pretrained(staging, safe_serialization=True)
    os.replace(staging, out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return os.fspath(out)
