"""The conversions as functions (convert/__init__'s docstring); `command` is their command line."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import flax.linen as nn
import ml_collections

from speechfuse import train as train_lib
from speechfuse.convert import fairseq, hf, store
from speechfuse.models import encoders

encoder_config = store.encoder_config


def convert_hf(directory: str | os.PathLike, out: str | os.PathLike, *,
               group_norm_over_padding: bool = False) -> tuple[str, list[str]]:
  """A transformers save_pretrained folder -> converted checkpoint `out`; returns (out, notes).

  group_norm_over_padding: take the first conv's GroupNorm statistics over padding too, as transformers and
    fairseq do (padded batches then match theirs exactly; the default makes a padded utterance encode as alone).
  """
  params, encoder, notes = hf.load(directory, group_norm_over_padding=group_norm_over_padding)
  model_type = json.loads((pathlib.Path(directory) / "config.json").read_text())["model_type"]
  info = dict(encoder=encoder, format="hf", source=os.path.abspath(directory), model_type=model_type)
  return store.write(out, {"params": {"encoder": params}}, info), notes


def convert_fairseq(path: str | os.PathLike, out: str | os.PathLike) -> tuple[str, list[str]]:
  """A fairseq HuBERT / wav2vec 2.0 checkpoint -> converted checkpoint `out` (HuBERT's head kept as models.ssl's
  final_proj / label_embeddings); returns (out, notes)."""
  params, head, encoder, name, notes = fairseq.load(path)
  info = dict(encoder=encoder, format="fairseq", source=os.path.abspath(path), model_type=name)
  return store.write(out, {"params": {"encoder": params, **head}}, info), notes


def _run_encoder(variables_path: pathlib.Path) -> ml_collections.ConfigDict:
  """The encoder config of a run's exported variables (<workdir>/export/params -> <workdir>/config.json)."""
  for parent in list(variables_path.parents)[:3]:
    config_file = parent / "config.json"
    if config_file.is_file():
      config = json.loads(config_file.read_text())
      encoder = config.get("model", {}).get("encoder")
      if encoder is None:
        raise ValueError(f"{config_file} has no model.encoder")
      return ml_collections.ConfigDict(encoder)
  raise FileNotFoundError(f"{variables_path} is neither a converted checkpoint ({store.INFO}) nor a run's exported "
                          "variables with the run's config.json above it")


def to_hf(path: str | os.PathLike, out: str | os.PathLike, *, model_type: str | None = None) -> str:
  """Converted checkpoint or a run's exported variables `path` -> a transformers folder at `out`.

  model_type: "wav2vec2", "hubert" or "wavlm"; default: the source's for converted checkpoints, "wavlm" for an
  encoder with the gated relative position bias, otherwise "hubert" (what our masked-prediction recipes train).
  """
  path = pathlib.Path(path)
  if (path / store.INFO).is_file():
    info = store.read_info(path)
    encoder = ml_collections.ConfigDict(info["encoder"])
    model_type = model_type or info.get("model_type")
  else:
    encoder = _run_encoder(path.absolute())
  if encoder.get("architecture") != "wav2vec2":
    raise ValueError(f"{path}: only wav2vec2-family encoders export to transformers, not "
                     f"{encoder.get('architecture')!r}")
  model_type = model_type or ("wavlm" if encoder.get("relative_position_buckets", 0) else "hubert")
  params = train_lib.load_variables(path)["params"]
  if "encoder" not in params:
    raise ValueError(f"{path} has no params/encoder")
  return hf.export(params["encoder"], encoder, out, model_type)


def load_pretrained(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any], ml_collections.ConfigDict]:
  """(encoder module, {"params": encoder params}, config.model.encoder) of a converted checkpoint, a transformers
  folder or a fairseq .pt file; apply as `module.apply(variables, waveform [batch, samples], lengths [batch])`."""
  path = pathlib.Path(path)
  if (path / store.INFO).is_file():
    variables, info = store.read(path)
    params, encoder = variables["params"]["encoder"], info["encoder"]
  elif (path / "config.json").is_file():
    params, encoder, _ = hf.load(path)
  elif path.is_file():
    params, _, encoder, _, _ = fairseq.load(path)
  else:
    raise FileNotFoundError(f"{path} is not a converted checkpoint, a transformers folder or a fairseq .pt file")
  config = ml_collections.ConfigDict(encoder)
  return encoders.make_encoder(config, None), {"params": params}, config
