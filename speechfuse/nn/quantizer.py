"""wav2vec 2.0's Gumbel-softmax product quantizer (Baevski et al., wav2vec 2.0, NeurIPS 2020, Sec. 2 and 3.2).

Data flow (fairseq GumbelVectorQuantizer, HF Wav2Vec2GumbelVectorQuantizer), features [batch, time, dim], the
convolutional features before masking:
  weight_proj  Dense dim -> G * V logits, viewed [batch, time, G, V] and taken in float32;
  train        per group a hard Gumbel-softmax sample (`gumbel_softmax`, noise from the RNG stream "dropout"): the
               forward value is the one-hot of argmax(logits + g), the gradient that of the soft sample
               softmax((logits + g) / temperature) (straight-through, Jang et al. 2017);
  eval         the one-hot of argmax(logits), no noise;
  output       each group's chosen entry [codevector_dim // G], concatenated over groups:
               quantized [batch, time, codevector_dim] and codes [batch, time, G] (the chosen entries).
The forward value of `quantized` is the codebook entries themselves, bit for bit (a gather, the one-hot product
only carries the gradient), so frames with the same codes have equal vectors and the contrastive loss can spot a
distractor identical to its positive by equality, as fairseq does.

Perplexity (fairseq's prob_perplexity, the one the diversity loss uses): per group exp(-sum_v p_v log(p_v + 1e-7))
of p = the softmax of the logits (no noise, no temperature) averaged over the frames marked valid, summed over
groups, in [G, G * V]; the caller marks the masked frames (fairseq quantizes only those, HF passes
mask_time_indices). It is the same in train and eval; at eval HF's quantizer returns the perplexity of the hard
codes instead (fairseq's code_perplexity, a logging metric), which makes HF's eval diversity loss a different one.

Parameters and the names a converter maps from (HF Wav2Vec2ForPreTraining; fairseq: quantizer.vars, .weight_proj):
  codevectors [1, G * V, codevector_dim // G]     <- quantizer.codevectors (group g's entries are rows g*V..g*V+V-1)
  weight_proj/kernel [dim, G * V], bias [G * V]   <- quantizer.weight_proj.weight.T, .bias
Initialisation as both: codevectors U[0, 1), kernel N(0, 1), bias 0. Defaults are wav2vec 2.0 base's: G = 2
groups of V = 320 entries, codevector_dim 256; the temperature follows `gumbel_temperature`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from speechfuse.nn import layers

_LOG_EPSILON = 1e-7  # fairseq's and HF's log(p + 1e-7) in the perplexity


def gumbel_temperature(
    step: jax.Array | int, start: float = 2.0, end: float = 0.5, decay: float = 0.999995
) -> jax.Array:
  """max(start * decay**step, end): fairseq's latent_temp (2, 0.5, 0.999995), HF's max_gumbel_temperature etc.

  Computed as start * exp(step * log(decay)) with log(decay) in float64: float32's 0.999995 is off by 7e-9, which
  raised to step 277,000 (where 2.0 reaches 0.5) would move the temperature by 0.2%. `step` may be traced.
  Returns a float32 scalar (or the shape of `step`).
  """
  return jnp.maximum(start * jnp.exp(jnp.asarray(step, jnp.float32) * math.log(decay)), end)


def gumbel_softmax(rng: jax.Array, logits: jax.Array, temperature: jax.Array | float) -> jax.Array:
  """Hard Gumbel-softmax over the last axis with straight-through gradients (torch's gumbel_softmax(hard=True)).

  Args:
    rng: PRNG key; the noise is jax.random.gumbel(rng, logits.shape, float32).
    logits: [..., V] float32.
    temperature: tau > 0 (a scalar, may be traced).

  Returns:
    [..., V] float32 whose value is exactly the one-hot of argmax(logits + g) and whose gradient is that of
    softmax((logits + g) / tau). Written hard + (soft - stop_gradient(soft)), so the value has no rounding error.
  """
  noise = jax.random.gumbel(rng, logits.shape, jnp.float32)
  soft = jax.nn.softmax((logits + noise) / temperature, axis=-1)
  hard = jax.nn.one_hot(jnp.argmax(soft, axis=-1), logits.shape[-1], dtype=soft.dtype)
  return hard + (soft - jax.lax.stop_gradient(soft))


def _perplexity(probs: jax.Array, valid: jax.Array) -> jax.Array:
  """probs [batch, time, G, V], valid [batch, time] bool -> sum over groups of exp(entropy of the valid average)."""
  weights = valid.astype(jnp.float32)[:, :, None, None]
  marginal = jnp.sum(probs * weights, axis=(0, 1)) / jnp.maximum(jnp.sum(weights), 1.0)  # [G, V]
  return jnp.sum(jnp.exp(-jnp.sum(marginal * jnp.log(marginal + _LOG_EPSILON), axis=-1)))


class GumbelVectorQuantizer(nn.Module):
  """Product quantizer of G groups x V entries (see the module docstring).

  Attributes:
    num_groups: G (HF num_codevector_groups).
    num_vars: V, entries per group (HF num_codevectors_per_group).
    codevector_dim: width of the output, G * (entry width); must be a multiple of G.
  """

  num_groups: int = 2
  num_vars: int = 320
  codevector_dim: int = 256
  dtype: layers.Dtype | None = None
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(
      self, features: jax.Array, valid: jax.Array, temperature: jax.Array | float, *, train: bool = False
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Quantizes every frame.

    Args:
      features: [batch, time, dim].
      valid: [batch, time] bool, the frames the perplexity averages over (the masked, non-padding ones).
      temperature: Gumbel-softmax temperature (`gumbel_temperature(step)`); unused at eval.
      train: sample with Gumbel noise (RNG stream "dropout") instead of taking the argmax.

    Returns:
      (quantized [batch, time, codevector_dim] in `dtype` (None: the features'), perplexity float32 scalar,
      codes [batch, time, G] int32 entry chosen in each group).
    """
    groups, num_vars = self.num_groups, self.num_vars
    if self.codevector_dim % groups:
      raise ValueError(f"codevector_dim {self.codevector_dim} is not a multiple of num_groups {groups}")
    batch, time, _ = features.shape
    codevectors = self.param(
        "codevectors", layers.logical(nn.initializers.uniform(1.0), (None, None, None)),
        (1, groups * num_vars, self.codevector_dim // groups), self.param_dtype)
    logits = nn.Dense(
        groups * num_vars, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=layers.logical(nn.initializers.normal(1.0), ("conv_channels", None)),
        bias_init=layers.bias_init((None,)), name="weight_proj",
    )(features)
    logits = logits.astype(jnp.float32).reshape(batch, time, groups, num_vars)
    perplexity = _perplexity(jax.nn.softmax(logits, axis=-1), valid)
    if train:
      one_hot = gumbel_softmax(self.make_rng("dropout"), logits, temperature)
    else:
      one_hot = jax.nn.one_hot(jnp.argmax(logits, axis=-1), num_vars, dtype=jnp.float32)
    codes = jnp.argmax(one_hot, axis=-1).astype(jnp.int32)  # [batch, time, G]
    table = codevectors.reshape(groups, num_vars, -1).astype(jnp.float32)  # [G, V, codevector_dim // G]
    # Value: the gathered entries, exactly; gradient: that of one_hot @ table (to the logits and the table).
    product = jnp.einsum("btgv,gvd->btgd", one_hot, table, precision=jax.lax.Precision.HIGHEST)
    chosen = jax.lax.stop_gradient(table)[jnp.arange(groups), codes]  # [batch, time, G, codevector_dim // G]
    quantized = chosen + (product - jax.lax.stop_gradient(product))
    dtype = self.dtype or features.dtype
    return quantized.reshape(batch, time, self.codevector_dim).astype(dtype), perplexity, codes
