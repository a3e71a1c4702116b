"""Small CTC models with generic random variables, shared by the fusion tests."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse import audio, models
from speechfuse.models import ctc

VOCAB = 29


@dataclasses.dataclass
class CTCCase:
  variables: dict[str, Any]
  log_probs: Callable[[dict[str, Any]], jax.Array]  # variables -> [batch, frames, vocab], eval mode, padded batch
  lengths: np.ndarray  # [batch] valid output frames
  model: nn.Module
  waves: np.ndarray  # int16 [batch, samples], the padded batch
  wave_lengths: np.ndarray  # [batch]


def _fill(shapes: Any, seed: int) -> Any:
  """Distinct random values for every leaf: generic weights without ties, positive scales and variances.

  The real initialisers (truncated normals of every shape) compile slowly on CPU, and their zero biases and unit
  norm scales would give the permutation tests nothing to tell units apart by.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def make_case(architecture: str, seed: int = 0, **encoder: Any) -> CTCCase:
  """A CTC model of `architecture` at smoke size with 1 block (a Zipformer: its smoke stacks of 1 layer each),
  overridden by `encoder`, on a padded batch of 2."""
  rng = np.random.default_rng(0)
  stats = audio.CMVNStats(rng.normal(size=80) * 100, np.full(80, 1e4) + rng.random(80) * 100, 100)
  config = ctc.default_config(architecture, "smoke")
  if "num_blocks" in config.encoder:
    config.encoder.num_blocks = 1
  config.encoder.update(encoder)
  model = models.get_model(config, dtype=jnp.float32, vocab_size=VOCAB, cmvn=stats)
  waves = (rng.normal(size=(2, 8000)) * 2000).astype(np.int16)
  lengths = np.array([8000, 5600], np.int32)
  waves[1, 5600:] = 0
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), waves, lengths)))
  apply = jax.jit(lambda variables: model.apply(variables, waves, lengths))
  _, out_lengths = apply(_fill(shapes, seed))
  return CTCCase(_fill(shapes, seed), lambda variables: apply(variables)[0], np.asarray(out_lengths), model, waves,
                 lengths)


@pytest.fixture(scope="session")
def cases() -> dict[str, CTCCase]:
  """Conformer with BatchNorm and with LayerNorm conv norms, Transformer with relative and absolute positions."""
  return {
      "conformer_batch_norm": make_case("conformer"),
      "conformer_layer_norm": make_case("conformer", conv_norm="layer_norm"),
      "transformer_relative": make_case("transformer", positions="relative"),
      "transformer_absolute": make_case("transformer"),
  }


@pytest.fixture(scope="session")
def other_seed_cases() -> dict[str, CTCCase]:
  """Models of `cases`' architectures with other weights (seed 1): unrelated members to fuse."""
  return {
      "conformer_batch_norm": make_case("conformer", seed=1),
      "transformer_relative": make_case("transformer", seed=1, positions="relative"),
  }


# Three stacks of widths 32, 48, 40: the stream is zero-padded (32 -> 48) and cut (48 -> 40), and the output takes
# channels [40, 48) from the middle stack, so the residual has segments [0, 32), [32, 40), [40, 48). The stacks of
# widths 32 and 48 have the smoke size's feedforward widths (fewer leaf shapes to compile).
ZIPFORMER_THREE_STACKS = dict(downsampling_factors=(1, 2, 4), num_layers=(1, 1, 1), dims=(32, 48, 40),
                              unmasked_dims=(24, 32, 32), num_heads=(2, 3, 3), feedforward_dims=(64, 96, 80),
                              conv_kernels=(5, 7, 3))


@pytest.fixture(scope="session")
def zipformer_cases() -> dict[str, CTCCase]:
  """Zipformer CTC models: smoke size (stacks of widths 48, 32; symmetric convs) and ZIPFORMER_THREE_STACKS with
  chunk-causal convs."""
  return {"smoke": make_case("zipformer"),
          "three_stacks_causal": make_case("zipformer", causal=True, **ZIPFORMER_THREE_STACKS)}
