"""Our encoder's parameter tree <-> a transformers-layout state dict, with every name and shape checked.

`to_params` fills the tree nn.wav2vec2.Wav2Vec2Encoder builds for an encoder config from a state dict (keys as
transformers' base model, no prefix); `to_state_dict` writes the tree back in the layout a transformers model
expects. A tensor missing from the source, one the encoder has no place for, or one of another shape is a
ValueError naming it, in both directions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from speechfuse.convert import layout
from speechfuse.models import encoders

# Our only parameter a transformers model may lack: the mask embedding exists there only when
# config.mask_time_prob > 0; without it ours keeps its initialisation (it is used by pre-training alone).
OPTIONAL = ("mask_embedding", "embedding")


def _initialiser(encoder: ml_collections.ConfigDict, seed: int = 0):
  """() -> the freshly initialised params of the encoder of config `encoder` (on a 0.2 s waveform)."""
  module = encoders.make_encoder(encoder, None)
  waveform = jnp.zeros((1, 3200), jnp.float32)
  return lambda: nn.unbox(module.init(jax.random.key(seed), waveform, jnp.array([3200])))["params"]


def expected_params(encoder: ml_collections.ConfigDict) -> dict[tuple[str, ...], tuple[tuple[int, ...], Any]]:
  """{path: (shape, dtype)} of every parameter of the encoder of config `encoder` (traced, nothing computed)."""
  shapes = jax.eval_shape(_initialiser(encoder))
  return {path: (tuple(leaf.shape), leaf.dtype) for path, leaf in traverse_util.flatten_dict(shapes).items()}


def initial_params(encoder: ml_collections.ConfigDict, seed: int = 0) -> dict[str, Any]:
  """A freshly initialised parameter tree of the encoder of config `encoder` (numpy arrays)."""
  return jax.tree.map(np.asarray, _initialiser(encoder, seed)())


def _source_key(key: str, state: Mapping[str, Any]) -> str:
  """`key`, or its other weight-norm spelling if that is the one `state` holds."""
  for spellings in (layout.POS_CONV_G, layout.POS_CONV_V):
    if key in spellings:
      return next((k for k in spellings if k in state), key)
  return key


def to_params(state: Mapping[str, np.ndarray], encoder: ml_collections.ConfigDict, *,
              source: str) -> tuple[dict[str, Any], list[str]]:
  """state: transformers-layout tensors (numpy) -> (encoder params, the names of ours kept as initialised).

  Raises:
    ValueError: a tensor the encoder needs is missing, one in `state` has no place in it, or a shape differs;
      the message names the tensor and `source`.
  """
  expected = expected_params(encoder)
  heads = encoder.num_heads
  params, used, initialised = {}, set(), []
  fallback = None
  for path, (shape, dtype) in expected.items():
    key, kind = layout.hf_key(path)
    key = _source_key(key, state)
    if key not in state:
      if path == OPTIONAL:
        fallback = initial_params(encoder) if fallback is None else fallback
        params[path] = fallback[path[0]][path[1]]
        initialised.append("/".join(path))
        continue
      raise ValueError(f"{source}: {key} is missing (the encoder's {'/'.join(path)})")
    value = layout.KINDS[kind].to_ours(np.asarray(state[key]), heads)
    if value.shape != shape:
      raise ValueError(f"{source}: {key} has shape {tuple(np.shape(state[key]))}, which gives {value.shape} for "
                       f"{'/'.join(path)}; the encoder config asks for {shape}")
    params[path] = value.astype(dtype)
    used.add(key)
  unexpected = sorted(set(state) - used)
  if unexpected:
    raise ValueError(f"{source}: {unexpected[0]} has no place in the encoder"
                     + (f" (and {len(unexpected) - 1} more: {', '.join(unexpected[1:4])}...)" if len(unexpected) > 1
                        else ""))
  return traverse_util.unflatten_dict(params), initialised


def to_state_dict(params: Mapping[str, Any], encoder: ml_collections.ConfigDict,
                  expected: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
  """Encoder params -> the tensors of a transformers model whose state dict has `expected` {key: shape}.

  Raises:
    ValueError: a key of `expected` gets no tensor, a parameter has no key there, or a shape differs (named).
  """
  flat = traverse_util.flatten_dict(dict(params))
  missing_ours = sorted(set(expected_params(encoder)) - set(flat))
  if missing_ours:
    raise ValueError(f"the checkpoint lacks encoder parameter {'/'.join(missing_ours[0])}: it holds another "
                     "architecture or size")
  out = {}
  for path, value in flat.items():
    key, kind = layout.hf_key(path)
    key = _source_key(key, expected)
    if key not in expected:
      raise ValueError(f"encoder parameter {'/'.join(path)} has no place in the transformers model ({key})")
    tensor = layout.KINDS[kind].to_theirs(np.asarray(value, np.float32), encoder.num_heads)
    if tuple(tensor.shape) != tuple(expected[key]):
      raise ValueError(f"encoder parameter {'/'.join(path)} gives {key} the shape {tuple(tensor.shape)}; the "
                       f"transformers model has {tuple(expected[key])}")
    out[key] = np.ascontiguousarray(tensor)
  missing = sorted(set(expected) - set(out))
  if missing:
    raise ValueError(f"the transformers model's {missing[0]} has no counterpart in the encoder")
  return out
