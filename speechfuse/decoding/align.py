"""CTC forced alignment (Viterbi): the most probable frame labelling that collapses to a given hypothesis.

Used for confidences along a beam search's hypothesis (speechfuse.eval.confidence reads per-frame labels and
their posteriors). For the greedy hypothesis it is the best path itself, since the overall best path is an
alignment of that hypothesis; so a confidence defined on the best path extends unchanged to any decoder.

The usual CTC topology over the extended label sequence z = (blank, y1, blank, y2, ..., yU, blank) of
S = 2U + 1 states: from state s a frame moves to s, s + 1, or s + 2 when z[s + 2] is a label different from
z[s]; alignments start in state 0 or 1 and end in state S - 1 or S - 2. A `lax.scan` over frames keeps the
best log-score per state and an int8 back-pointer (how many states the best predecessor lies behind); a
reverse scan reads the path. Static shapes: hypotheses are [B, L] padded, and frames past `lengths` and
states past 2 * token_lengths are ignored.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("blank_id",))
def ctc_forced_align(log_probs: jax.Array, lengths: jax.Array, tokens: jax.Array, token_lengths: jax.Array,
                     blank_id: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The Viterbi alignment of each hypothesis.

  Args:
    log_probs: [B, T, V] frame log-probabilities.
    lengths: [B] valid frames.
    tokens: [B, L] hypotheses, right-padded (any padding value).
    token_lengths: [B] hypothesis lengths.
    blank_id: the blank id.

  Returns:
    (labels [B, T] int32: the label each frame emits on the best alignment, blank_id past lengths;
     label_log_probs [B, T] float32: log_probs at those labels, 0 past lengths;
     scores [B]: the alignment's log-probability, -inf where the hypothesis needs more frames than there are).
  """
  batch, frames, _ = log_probs.shape
  states = 2 * tokens.shape[1] + 1
  index = jnp.arange(states)
  # z: [B, S], blanks at even states, the hypothesis at odd ones.
  hypothesis = jnp.take_along_axis(tokens.astype(jnp.int32), jnp.clip((index - 1) // 2, 0, None)[None, :], axis=1)
  z = jnp.where(index % 2 == 0, blank_id, hypothesis)
  skip = (index >= 2) & (z != blank_id) & (z != jnp.roll(z, 2, axis=1))  # [B, S]: s - 2 -> s allowed
  valid = index[None, :] < 2 * token_lengths[:, None] + 1
  log_probs = log_probs.astype(jnp.float32)

  def shift(x, k):
    return jnp.pad(x, ((0, 0), (k, 0)), constant_values=-jnp.inf)[:, :states]

  def forward(best, inputs):
    frame_log_probs, t = inputs  # [B, V], []
    candidates = jnp.stack([best, shift(best, 1), jnp.where(skip, shift(best, 2), -jnp.inf)])  # [3, B, S]
    pointer = jnp.argmax(candidates, axis=0)
    emitted = jnp.take_along_axis(frame_log_probs, z, axis=1)
    new = jnp.where(valid, candidates.max(axis=0) + emitted, -jnp.inf)
    running = (t < lengths)[:, None]
    return jnp.where(running, new, best), jnp.where(running, pointer, 0).astype(jnp.int8)

  # A virtual start one frame before frame 0: state 0 with score 0 reaches states 0 and 1.
  start = jnp.where(index == 0, 0.0, -jnp.inf)[None, :].repeat(batch, axis=0)
  best, pointers = jax.lax.scan(forward, start, (jnp.swapaxes(log_probs, 0, 1), jnp.arange(frames)))
  last = 2 * token_lengths  # the final blank; the last label is one state before it
  end_scores = jnp.stack([jnp.take_along_axis(best, last[:, None], axis=1)[:, 0],
                          jnp.where(token_lengths > 0,
                                    jnp.take_along_axis(best, jnp.maximum(last - 1, 0)[:, None], axis=1)[:, 0],
                                    -jnp.inf)])
  final = last - jnp.argmax(end_scores, axis=0)
  scores = jnp.where(lengths > 0, end_scores.max(axis=0), jnp.where(token_lengths == 0, 0.0, -jnp.inf))

  def backward(state, pointer):  # pointer: [B, S] of the frame whose state is `state`
    back = jnp.take_along_axis(pointer, state[:, None], axis=1)[:, 0].astype(jnp.int32)
    return state - back, state

  _, path = jax.lax.scan(backward, final, pointers, reverse=True)  # path[t]: [B] state at frame t
  path = jnp.swapaxes(path, 0, 1)  # [B, T]
  running = jnp.arange(frames)[None, :] < lengths[:, None]
  labels = jnp.where(running, jnp.take_along_axis(z, path, axis=1), blank_id)
  label_log_probs = jnp.where(running, jnp.take_along_axis(log_probs, labels[..., None], axis=2)[..., 0], 0.0)
  return labels, label_log_probs, scores
