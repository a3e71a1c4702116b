"""CTC loss (Graves et al. 2006) on top of `optax.ctc_loss`, with lengths instead of paddings.

Infeasible utterances. A labelling needs at least U_b + r_b frames, r_b being the number of adjacent repeated
labels (a blank must separate "a a"). optax never takes log(0): an impossible transition costs its
`log_epsilon` (-1e5), so an utterance with too few frames gets a large *finite* loss, at least about 1e5
(`INFEASIBLE_LOSS`), with a finite gradient. We keep that on purpose: an inf would turn the batch mean and
every gradient into NaN, while 1e5 is recognisable in the logs and its gradient pushes towards the best
partial alignment. Callers that want such utterances ignored mask `loss >= INFEASIBLE_LOSS`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from speechfuse.losses.transducer import loss_dtype

# Any loss at or above this comes from an alignment that cannot exist; feasible ones are far smaller
# unless a single frame's log-prob is below -5e4.
INFEASIBLE_LOSS = 5e4


def ctc_loss(
    logits: jax.Array,
    logit_lengths: jax.Array,
    labels: jax.Array,
    label_lengths: jax.Array,
    blank_id: int = 0,
) -> jax.Array:
  """CTC negative log-likelihood per utterance.

  Args:
    logits: [B, T, V] unnormalised frame scores (any float dtype, bfloat16 included).
    logit_lengths: [B] valid frames T_b; frames at or past it are ignored.
    labels: [B, U] integer labels, none equal to `blank_id`; padding may hold any value.
    label_lengths: [B] valid labels U_b; labels must be right-padded.
    blank_id: the blank index in the vocabulary.

  Returns:
    [B] -log p(labels | x), float32 (float64 for float64 logits); >= INFEASIBLE_LOSS where T_b is too short
    for the labels (see the module docstring).
  """
  frames, max_labels = logits.shape[1], labels.shape[1]
  dtype = loss_dtype(logits.dtype)
  logit_paddings = (jnp.arange(frames)[None, :] >= logit_lengths[:, None]).astype(dtype)
  label_paddings = (jnp.arange(max_labels)[None, :] >= label_lengths[:, None]).astype(dtype)
  return optax.ctc_loss(logits.astype(dtype), logit_paddings, labels, label_paddings, blank_id=blank_id)
