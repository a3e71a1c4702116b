"""Linear phone probes of an ASR encoder's layers: how much frame-level phone information each block carries.

The SUPERB / HuBERT-paper style of analysis: for each layer (the fbank input, then every encoder block's
output), a multinomial logistic regression from the layer's frames (standardised) to the phone at the frame's
centre (`quality.frame_phones`, silence included) is fitted on some training utterances and scored by frame
accuracy on held-out ones. A pre-trained encoder whose upper blocks score below a random one's has lost the
information fine-tuning needs (ssl_compare reports this for every row at fine-tuning step 0).

`attention_statistics` measures the other half of what a pre-trained encoder hands to fine-tuning: per block,
the entropy of its self-attention and how far it looks. An encoder whose attention has collapsed onto a frame's
own neighbourhood keeps phone information (the probe) yet lost the context a random encoder starts from.

The regression is ours, not scikit-learn's, so that it runs jitted next to the model on the accelerator: full
batch, L2 on the weights only (scikit-learn's convention), minimised by optax's L-BFGS. tests/ssl/test_probe.py
checks it against scikit-learn's LogisticRegression.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from speechfuse.audio import frames
from speechfuse.data import inputs
from speechfuse.nn import attention, subsampling
from speechfuse.ssl import quality


class Probe(NamedTuple):
  """mean, std: [dim] standardisation of the training frames; kernel: [dim, classes]; bias: [classes]."""
  mean: jax.Array
  std: jax.Array
  kernel: jax.Array
  bias: jax.Array


def _loss(weights: tuple[jax.Array, jax.Array], x: jax.Array, y: jax.Array, l2: float) -> jax.Array:
  kernel, bias = weights
  logits = x @ kernel + bias
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return nll + 0.5 * l2 * jnp.sum(kernel * kernel)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit(x: jax.Array, y: jax.Array, num_classes: int, *, l2: float = 1e-4, steps: int = 100) -> Probe:
  """Fits a probe to frames x [N, dim] and labels y [N] int in [0, num_classes).

  Minimises mean cross-entropy + l2 / 2 * |kernel|^2, i.e. scikit-learn's LogisticRegression with C = 1 / (l2 N),
  by `steps` L-BFGS iterations with a zoom line search.
  """
  x = jnp.asarray(x, jnp.float32)
  mean, std = x.mean(0), x.std(0) + 1e-6
  x = (x - mean) / std
  weights = (jnp.zeros((x.shape[1], num_classes), jnp.float32), jnp.zeros((num_classes,), jnp.float32))
  loss = functools.partial(_loss, x=x, y=y, l2=l2)
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry, _):
    weights, state = carry
    value, grad = value_and_grad(weights, state=state)
    updates, state = solver.update(grad, state, weights, value=value, grad=grad, value_fn=loss)
    return (optax.apply_updates(weights, updates), state), None

  (weights, _), _ = jax.lax.scan(step, (weights, solver.init(weights)), None, length=steps)
  return Probe(mean, std, *weights)


def predict(probe: Probe, x: jax.Array) -> jax.Array:
  """Class probabilities [N, classes] of frames x [N, dim]."""
  return jax.nn.softmax(((jnp.asarray(x, jnp.float32) - probe.mean) / probe.std) @ probe.kernel + probe.bias)


def accuracy(probe: Probe, x: jax.Array, y: jax.Array) -> float:
  return float(jnp.mean(jnp.argmax(predict(probe, x), -1) == jnp.asarray(y)))


def encoder_layers(module: nn.Module, audio: jax.Array, audio_lengths: jax.Array):
  """A model with `frontend` and `encoder` -> ((fbank [B, F, mel], block outputs [B, T, d]...), lengths [B])."""
  features, feature_lengths = module.frontend(audio, audio_lengths)
  _, lengths, blocks = module.encoder(features, feature_lengths, return_hidden=True)
  return (features, *blocks), lengths


def _padded_batches(source: Any, utterances: int, batch_size: int, sample_rate: int):
  """The first `utterances` of `source` in batches: (records, audio [batch, samples] int16 padded to whole seconds
  so that few shapes compile, audio lengths [batch])."""
  for start in range(0, min(utterances, len(source)), batch_size):
    records = [source[i] for i in range(start, min(start + batch_size, utterances, len(source)))]
    width = -(-max(len(r["audio"]) for r in records) // sample_rate) * sample_rate
    audio = np.zeros((len(records), width), np.int16)
    for row, record in enumerate(records):
      audio[row, :len(record["audio"])] = record["audio"]
    yield records, audio, np.array([len(r["audio"]) for r in records], np.int32)


def layer_frames(model: nn.Module, variables: Any, data: ml_collections.ConfigDict, split: str, utterances: int,
                 phone_ids: dict[str, int], *, batch_size: int = 16,
                 apply: Callable[..., Any] | None = None) -> tuple[list[np.ndarray], np.ndarray]:
  """Every layer's valid frames and their phones on the first `utterances` of `split`.

  The fbank input (100 Hz) is sampled at the fbank frame nearest each encoder frame's centre, so all layers
  share the encoder's frames. Batches are padded to whole seconds (few compiled shapes). `apply`: a jitted
  `model.apply(..., method=encoder_layers)` to reuse across calls (made here if None).

  Returns:
    (one [frames, dim] array per layer, phone ids [frames]); phone_ids is extended in place.
  """
  encoder = model.encoder
  grid = subsampling.fbank_grid(data.sample_rate, encoder.subsampling, encoder.subsampling_factor)
  fbank = frames.kaldi_grid(data.sample_rate)
  source = inputs.open_split(data, split)
  if "phonemes" not in source[0]:
    raise ValueError(f"split {split!r} of {inputs.dataset_path(data)} has no phoneme timings to probe against")
  apply = apply or jax.jit(functools.partial(model.apply, method=encoder_layers))
  per_layer: list[list[np.ndarray]] = []
  phones = []
  for records, audio, audio_lengths in _padded_batches(source, utterances, batch_size, data.sample_rate):
    layers, lengths = jax.device_get(apply(variables, audio, audio_lengths))
    per_layer = per_layer or [[] for _ in layers]
    for row, record in enumerate(records):
      centers = grid.centers(int(lengths[row]))
      phones.append(quality.frame_phones(record["phonemes"], record["phoneme_timings"],
                                         centers / data.sample_rate, phone_ids))
      nearest = np.clip(np.round((centers - fbank.first_center) / fbank.hop).astype(int), 0, layers[0].shape[1] - 1)
      per_layer[0].append(layers[0][row, nearest])
      for out, layer in zip(per_layer[1:], layers[1:]):
        out.append(layer[row, :len(centers)])
  return [np.concatenate(frames) for frames in per_layer], np.concatenate(phones)


def layer_accuracies(model: nn.Module, variables: Any, data: ml_collections.ConfigDict, *,
                     train_utterances: int = 300, eval_utterances: int = 120, l2: float = 1e-4) -> dict[str, Any]:
  """Probes every layer: fitted on the train split's first utterances, scored on the eval split's.

  Returns:
    {"layers": ["fbank", "block 1", ...], "accuracy": [frame accuracy per layer], "phones", "train_frames",
     "eval_frames"}.
  """
  phone_ids: dict[str, int] = {}
  apply = jax.jit(functools.partial(model.apply, method=encoder_layers))
  train_x, train_y = layer_frames(model, variables, data, data.train_split, train_utterances, phone_ids, apply=apply)
  eval_x, eval_y = layer_frames(model, variables, data, data.eval_split, eval_utterances, phone_ids, apply=apply)
  scores = [accuracy(fit(x, train_y, len(phone_ids), l2=l2), ex, eval_y) for x, ex in zip(train_x, eval_x)]
  return {"layers": ["fbank"] + [f"block {i}" for i in range(1, len(scores))], "accuracy": scores,
          "phones": len(phone_ids), "train_frames": len(train_y), "eval_frames": len(eval_y)}


def _attention_probs(module: nn.Module, _: str) -> bool:
  """capture_intermediates filter: the attention-probability dropout inside every self-attention layer."""
  return isinstance(module, nn.Dropout) and isinstance(module.parent, attention.MultiHeadSelfAttention)


def _block_order(path: str) -> list[Any]:
  """Sort key that puts blocks_10 after blocks_9."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def attention_statistics(model: nn.Module, variables: Any, data: ml_collections.ConfigDict, split: str, *,
                         utterances: int = 32, batch_size: int = 16) -> dict[str, Any]:
  """Per self-attention layer (full context, eval mode) on the first `utterances` of `split`: the mean entropy
  of a query's attention distribution (nats; a uniform one over L frames has log L) and the mean distance
  |query - key| in encoder frames it attends over, averaged over heads and valid query frames.

  Returns:
    {"layers": the attention layers' module paths in depth order, "entropy": [...], "distance": [...],
     "uniform_entropy": mean log(valid frames) over the same queries (the random-init reference)}.
  """
  apply = jax.jit(functools.partial(model.apply, method=encoder_layers, capture_intermediates=_attention_probs,
                                    mutable=["intermediates"]))
  source = inputs.open_split(data, split)
  sums: dict[str, np.ndarray] = {}
  queries, uniform = 0, 0.0
  for _, audio, audio_lengths in _padded_batches(source, utterances, batch_size, data.sample_rate):
    ((_, lengths), state) = apply(variables, audio, audio_lengths)
    lengths = np.asarray(lengths)
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state["intermediates"]))[0]
    frames = np.arange(flat[0][1].shape[-1])
    offsets = np.abs(frames[None, :] - frames[:, None])  # [query, key]
    valid = frames[None, :] < lengths[:, None]  # [batch, query]
    for path, probs in flat:  # probs: [batch, heads, query, key]
      name = "/".join(str(getattr(key, "key", key)) for key in path[:-3])  # drop Dropout_i/__call__/0
      entropy = -np.sum(probs * np.log(np.where(probs > 0, probs, 1.0)), axis=-1)  # [batch, heads, query]
      distance = np.sum(probs * offsets, axis=-1)
      weights = np.broadcast_to(valid[:, None, :], entropy.shape)
      sums[name] = sums.get(name, np.zeros(2)) + [np.sum(entropy * weights), np.sum(distance * weights)]
    heads = flat[0][1].shape[1]
    queries += int(np.sum(lengths)) * heads
    uniform += float(np.sum(lengths * np.log(np.maximum(lengths, 1)))) * heads
  names = sorted(sums, key=_block_order)
  return {"layers": names, "entropy": [float(sums[n][0] / queries) for n in names],
          "distance": [float(sums[n][1] / queries) for n in names], "uniform_entropy": uniform / queries}
