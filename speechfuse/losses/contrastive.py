"""wav2vec 2.0's objective (Baevski et al., wav2vec 2.0, NeurIPS 2020, Sec. 3.2): distractors, contrastive, diversity.

For each masked frame t of utterance b the model picks its quantized target q_bt among 1 + K candidates: q_bt
itself (index 0) and K distractors drawn uniformly, with replacement, from the *other* masked frames of the same
utterance. fairseq (sample_negatives on y, the quantized masked frames only) and transformers
(_sample_negative_indices over mask_time_indices) agree on this set. The logits are the cosine similarities of
the projected context vector c_bt (final_proj, final_dim 256) with each candidate (project_q of the quantizer
output), divided by the temperature (0.1). A distractor equal to the positive in every feature (same codes) gets
-inf, as in both, so it neither competes nor can be "right". The loss is the cross-entropy with target 0.

Static shapes: every frame gets [K] distractor indices, drawn inside its own row's masked set, so padded batches
with different numbers of masked frames per utterance need no gather to [num_masked]. Frames that are not masked,
and the frames of rows with fewer than 2 masked frames (no distractor exists; fairseq asserts, HF raises), are not
`valid` and drop out of the loss.

Reduction: fairseq sums the cross-entropy over the masked frames, adds the extra losses multiplied by the number
of masked frames N (sample_size), and divides the gradient by N; HF returns the same sum with the diversity loss
multiplied by N. `contrastive_loss` returns the sum over valid frames divided by their number in the batch, so
  loss = contrastive_loss + 0.1 * diversity_loss (+ 10 * feature penalty)
is fairseq's loss / N, the quantity whose gradient fairseq applies. Everything is computed in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# torch.cosine_similarity's eps: a norm below it is clamped, so an all-zero vector scores 0, not NaN.
_COSINE_EPSILON = 1e-8


def sample_negatives(rng: jax.Array, mask: jax.Array, num_negatives: int) -> tuple[jax.Array, jax.Array]:
  """Distractor indices for every frame, uniform over the other masked frames of its utterance.

  Args:
    rng: PRNG key.
    mask: [B, T] bool, True on masked (non-padding) frames: both the frames scored and the distractor pool.
    num_negatives: K (static; 100 in wav2vec 2.0).

  Returns:
    (indices, valid): indices [B, T, K] int32 frame indices into the same utterance; for a valid frame t each of
    the K is drawn independently and uniformly from the row's masked frames other than t (fairseq's
    randint(0, N - 1) shifted by one past t); 0 elsewhere. valid [B, T] bool: mask and the row has >= 2 masked
    frames.
  """
  mask = jnp.asarray(mask, bool)
  batch, time = mask.shape
  count = mask.sum(axis=1)  # [B]
  rank = jnp.cumsum(mask, axis=1) - 1  # [B, T]: position of a masked frame among its row's masked frames
  masked_frames = jnp.argsort((~mask).astype(jnp.int32), axis=1, stable=True)  # [B, T]: masked first, in order
  draw = jax.random.randint(rng, (batch, time, num_negatives), 0, (count - 1)[:, None, None])
  draw = draw + (draw >= rank[:, :, None])  # skip the positive: uniform over the other count - 1
  indices = jnp.take_along_axis(masked_frames, draw.reshape(batch, -1), axis=1).reshape(draw.shape)
  valid = mask & (count >= 2)[:, None]
  return jnp.where(valid[:, :, None], indices, 0).astype(jnp.int32), valid


def _normalize(x: jax.Array) -> jax.Array:
  """x / max(||x||, eps) over the last axis, with a finite gradient at x = 0."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _COSINE_EPSILON**2))


def contrastive_logits(
    context: jax.Array, quantized: jax.Array, negatives: jax.Array, temperature: float = 0.1
) -> jax.Array:
  """Cosine-similarity logits of the positive and its distractors (fairseq's compute_preds).

  Args:
    context: [B, T, D] projected context vectors (final_proj of the Transformer output), any float dtype.
    quantized: [B, T, D] projected quantized targets (project_q of the quantizer output), any float dtype.
    negatives: [B, T, K] int frame indices of the distractors within the same utterance (sample_negatives).
    temperature: fairseq's logit_temp, HF's contrastive_logits_temperature (0.1).

  Returns:
    [B, T, 1 + K] float32: cos(c_bt, q_bt) / temperature, then cos(c_bt, q_b,negatives[b, t, k]) / temperature,
    -inf for a distractor whose quantized vector equals q_bt exactly.

  The distractor scores come from the [B, T, T] similarities of all frame pairs of an utterance (full float32
  matmul), gathered at `negatives`: cheaper than gathering [B, T, K, D] candidates, forward and backward.
  """
  c = _normalize(context.astype(jnp.float32))
  q = _normalize(quantized.astype(jnp.float32))
  positive = jnp.sum(c * q, axis=-1, keepdims=True)
  similarity = jnp.einsum("btd,bsd->bts", c, q, precision=jax.lax.Precision.HIGHEST)
  candidates = jax.vmap(lambda row, index: row[index])(quantized, negatives)  # [B, T, K, D]
  same = jnp.all(candidates == quantized[:, :, None, :], axis=-1)
  negative = jnp.where(same, -jnp.inf, jnp.take_along_axis(similarity, negatives, axis=2) / temperature)
  return jnp.concatenate([positive / temperature, negative], axis=-1)


def contrastive_loss(logits: jax.Array, valid: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy with the positive (index 0) as target, averaged over the valid frames of the batch.

  Args:
    logits: [B, T, 1 + K] contrastive_logits.
    valid: [B, T] bool, the frames scored (sample_negatives' valid).

  Returns:
    (loss, metrics): loss the float32 mean CE over valid frames (0 if there are none; the module docstring says
    how it relates to fairseq's sum); metrics contrastive_accuracy (fairseq's: the positive is the argmax and
    not also the argmin, i.e. not all logits equal) and contrastive_frames (the number of valid frames).
  """
  logits = logits.astype(jnp.float32)
  nll = -jax.nn.log_softmax(logits, axis=-1)[..., 0]
  correct = (jnp.argmax(logits, axis=-1) == 0) & (jnp.argmin(logits, axis=-1) != 0)
  frames = valid.sum().astype(jnp.float32)
  normaliser = jnp.maximum(frames, 1.0)
  loss = jnp.sum(jnp.where(valid, nll, 0.0)) / normaliser
  metrics = {"contrastive_accuracy": jnp.sum(valid & correct) / normaliser, "contrastive_frames": frames}
  return loss, metrics


def diversity_loss(perplexity: jax.Array, num_codevectors: int) -> jax.Array:
  """(G * V - perplexity) / (G * V) for the quantizer's perplexity (float32 scalar); weight 0.1 in wav2vec 2.0.

  Args:
    perplexity: scalar, GumbelVectorQuantizer's (sum over groups of exp(entropy) of the averaged soft codes).
    num_codevectors: G * V (640 in wav2vec 2.0 base).
  """
  return (num_codevectors - jnp.asarray(perplexity, jnp.float32)) / num_codevectors
