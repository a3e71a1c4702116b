"""Encoder sizes shared by the recipes, and parameter counting.

  size   blocks  d_model  heads  ffn   conv kernel  source
  smoke  2       64       2      256   15           end-to-end tests in seconds
  tiny   6       144      4      576   31           Conformer(S) widths (Gulati et al., 2020), fewer blocks: CPU
  base   12      512      8      2048  31           the OTF paper's Conformer-CTC
  large  17      512      8      2048  31           Conformer(L) (Gulati et al., 2020, Table 1; kernel 32 there,
                                                    31 here so that 'same' padding stays symmetric)

Parameters with 80 mel bins and conv2d x4 subsampling (`count_params`; tests/nn check them against closed forms):
  Conformer encoder:            smoke 318,080   tiny 3,622,752   base 83,230,720   large 114,849,280
  Transformer (pre-LN, abs.):   smoke 215,552   tiny 2,086,848   base 45,175,808   large 60,937,728
A CTC head adds (d_model + 1) * vocab: base Conformer-CTC with 500 tokens has 83,487,220.
Transformer encoders take the same rows without the conv kernel.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np

_SIZES = {
    "smoke": dict(num_blocks=2, d_model=64, num_heads=2, ffn_dim=256, conv_kernel=15),
    "tiny": dict(num_blocks=6, d_model=144, num_heads=4, ffn_dim=576, conv_kernel=31),
    "base": dict(num_blocks=12, d_model=512, num_heads=8, ffn_dim=2048, conv_kernel=31),
    "large": dict(num_blocks=17, d_model=512, num_heads=8, ffn_dim=2048, conv_kernel=31),
}
SIZES = tuple(_SIZES)
ARCHITECTURES = ("conformer", "transformer")


def encoder_size(size: str, architecture: str = "conformer") -> dict[str, int]:
  """Keyword arguments for ConformerEncoder / TransformerEncoder of `size` (a row of the table above).

  Raises:
    ValueError: unknown size or architecture (the message names it).
  """
  if size not in _SIZES:
    raise ValueError(f"unknown encoder size {size!r}; choose from {SIZES}")
  if architecture not in ARCHITECTURES:
    raise ValueError(f"unknown encoder architecture {architecture!r}; choose from {ARCHITECTURES}")
  kwargs = dict(_SIZES[size])
  if architecture == "transformer":
    del kwargs["conv_kernel"]
  return kwargs


def count_params(params: Any) -> int:
  """Number of scalars in a parameter tree (boxed logical-partitioning metadata or plain arrays)."""
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(nn.unbox(params))))
