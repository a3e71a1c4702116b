"""HuBERT / wav2vec 2.0 span masking with static shapes, and the learned mask embedding.

`compute_mask` reproduces fairseq's `compute_mask_indices` (fairseq/data/data_utils.py) as HuBERT calls it:
mask_type "static", no_overlap False, mask_dropout 0, add_masks False, idc_select_ver 1, num_mask_ver 2. For
each row b with T_b = lengths[b] valid frames:
  1. num_b = max(min_masks, floor(mask_prob * T_b / mask_length + u_b)), u_b ~ U[0, 1) per row;
  2. num_b distinct span starts, uniform without replacement over [0, n_b), where n_b = T_b - mask_length,
     or num_b + 1 when T_b - mask_length <= num_b. Note the range: fairseq never starts a span at
     T_b - mask_length, so while n_b = T_b - mask_length the last valid frame is never masked;
  3. each start s masks frames [s, s + mask_length); spans may overlap and are cut at T_b (the union is
     the row's masked set, so overlaps make the masked fraction smaller than mask_prob);
  4. require_same_masks: every row keeps a uniformly random subset of its masked frames of the size of the
     smallest row's set (fairseq's `rng.choice(mask_idc, target_len, replace=False)`), so all rows have
     the same number of masked frames; trimmed spans get holes, as in fairseq.
Differences, both at the edge: rows with T_b = 0 (batch filler) stay unmasked and do not count in the
minimum of step 4 (fairseq raises on them), and a row masked entirely is not an error here (fairseq raises;
a check inside jit would cost a host sync). The random draws differ from numpy's; the distribution does not.

Static shapes: the random subsets of steps 2 and 4 are the first k positions of a random permutation of the
allowed positions (ranks of uniform keys), so nothing depends on data-dependent sizes and the whole
function jits. The mask is computed once per batch; its [batch, time] sorts are negligible next to the model.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from speechfuse.nn import layers


def _random_ranks(rng: jax.Array, allowed: jax.Array) -> jax.Array:
  """allowed: [B, W] bool -> [B, W] int ranks of a uniformly random order with the allowed positions first.

  Positions with rank < k in a row form a uniformly random k-subset of its allowed positions (k <= count).
  """
  keys = jnp.where(allowed, jax.random.uniform(rng, allowed.shape), 2.0)
  return jnp.argsort(jnp.argsort(keys, axis=-1), axis=-1)


def compute_mask(
    rng: jax.Array, lengths: jax.Array, time: int, *, mask_prob: float = 0.8, mask_length: int = 10,
    min_masks: int = 2, require_same_masks: bool = True,
) -> jax.Array:
  """fairseq's span mask (see the module docstring for the exact semantics).

  Args:
    rng: PRNG key.
    lengths: [B] valid frames per row (<= time).
    time: T, the padded number of frames (static).
    mask_prob: expected share of frames chosen as span starts times mask_length (0.8 HuBERT, 0.65 icefall).
    mask_length: span length in frames.
    min_masks: least number of spans per non-empty row.
    require_same_masks: trim every row to the smallest row's masked count.

  Returns:
    [B, T] bool, True on masked frames; never True at t >= lengths[b].
  """
  lengths = jnp.asarray(lengths, jnp.int32)
  count_key, start_key, trim_key = jax.random.split(rng, 3)
  num = jnp.floor(mask_prob * lengths / mask_length + jax.random.uniform(count_key, lengths.shape))
  num = jnp.maximum(min_masks, num.astype(jnp.int32))
  num_starts = jnp.where(lengths - mask_length > num, lengths - mask_length, num + 1)
  # Starts may lie past `time` only in the short-row case (num_starts = num + 1); give them room.
  max_num = max(min_masks, int(mask_prob * time / mask_length) + 1)
  width = max(time, max_num + 1)
  positions = jnp.arange(width)
  ranks = _random_ranks(start_key, positions[None, :] < num_starts[:, None])
  starts = (ranks < num[:, None]).astype(jnp.int32)
  # Frame t is masked when a span starts in (t - mask_length, t]: a windowed sum of the start indicator.
  started = jnp.cumsum(starts, axis=1)
  started_before = jnp.pad(started, ((0, 0), (mask_length, 0)))[:, :width]
  mask = ((started - started_before) > 0)[:, :time] & (jnp.arange(time)[None, :] < lengths[:, None])
  if not require_same_masks:
    return mask
  counts = mask.sum(axis=1)
  target = jnp.min(jnp.where(lengths > 0, counts, time))
  return mask & (_random_ranks(trim_key, mask) < target)


class MaskEmbedding(nn.Module):
  """Replaces masked frames by a learned vector (fairseq's mask_emb, HF's masked_spec_embed).

  Parameter: embedding [embed], initialised U[0, 1) as fairseq and HF do. It exists whether or not a mask
  is given, so pre-training and fine-tuning share one parameter tree.
  """

  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """x: [batch, time, embed], mask: [batch, time] bool (True = replace) or None -> [batch, time, embed]."""
    embedding = self.param(
        "embedding", layers.logical(nn.initializers.uniform(1.0), ("embed",)), (x.shape[-1],), self.param_dtype)
    if mask is None:
      return x
    return jnp.where(mask[..., None], embedding.astype(x.dtype), x)
