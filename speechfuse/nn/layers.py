"""Small building blocks shared by the encoders: initialisers with logical axes, LayerNorm, feed-forward, sinusoids."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
LAYER_NORM_EPSILON = 1e-5  # PyTorch's default, so imported checkpoints keep their numerics
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu, "swish": nn.swish,
    "gelu": nn.gelu,  # flax's tanh approximation (HF "gelu_new")
    "gelu_exact": lambda x: nn.gelu(x, approximate=False),  # the erf form: PyTorch's nn.GELU(), fairseq, HF "gelu"
}


def logical(init: nn.initializers.Initializer, names: Sequence[str | None]) -> nn.initializers.Initializer:
  """`init` whose parameter carries logical axis names (one per axis, None for an axis never sharded)."""
  return nn.with_logical_partitioning(init, tuple(names))


def kernel_init(names: Sequence[str | None], input_axes: int = 1) -> nn.initializers.Initializer:
  """LeCun normal with logical axis names; fan-in is the product of the first `input_axes` axes.

  Convolution kernels [taps..., in, out] count the taps too: use input_axes = ndim - 1.
  """
  init = nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=tuple(range(input_axes)),
      out_axis=tuple(range(input_axes, len(names))))
  return logical(init, names)


def bias_init(names: Sequence[str | None]) -> nn.initializers.Initializer:
  """Zeros with logical axis names."""
  return logical(nn.initializers.zeros_init(), names)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation function called `name` (one of ACTIVATIONS); an unknown name raises a ValueError."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def layer_norm(name: str, dtype: Dtype, param_dtype: Dtype, axis_name: str = "embed") -> nn.LayerNorm:
  """LayerNorm over the last axis with `scale` and `bias` [features] named `axis_name`; statistics in float32."""
  return nn.LayerNorm(
      epsilon=LAYER_NORM_EPSILON, dtype=dtype, param_dtype=param_dtype,
      scale_init=logical(nn.initializers.ones_init(), (axis_name,)),
      bias_init=bias_init((axis_name,)), name=name,
  )


def sinusoids(positions: np.ndarray, dim: int) -> np.ndarray:
  """Transformer sinusoids [len(positions), dim] (float32): sin on even features, cos on odd ones.

  Feature pair (2i, 2i+1) has angular frequency 10000^(-2i/dim), as in "Attention is all you need" and
  ESPnet / WeNet, so positional tables match theirs. Computed in numpy: positions are static.
  """
  if dim % 2:
    raise ValueError(f"sinusoidal positions need an even dimension, got {dim}")
  frequencies = np.exp(np.arange(0, dim, 2, dtype=np.float64) * -(np.log(10000.0) / dim))
  angles = np.asarray(positions, np.float64)[:, None] * frequencies[None, :]
  table = np.empty((len(angles), dim), np.float64)
  table[:, 0::2] = np.sin(angles)
  table[:, 1::2] = np.cos(angles)
  return table.astype(np.float32)


class Projection(nn.Module):
  """A dense layer over the last `input_axes` axes to `features` (one or more axes), keeping every axis visible.

  Parameters: kernel [*input_shape, *features] with logical names `names`, bias [*features] (names[input_axes:]).
  Unlike flax's DenseGeneral, the initialiser sees the real kernel shape, so the logical names always match it.

  Attributes:
    features: output shape, e.g. (heads, head_dim).
    names: logical names of the kernel's axes.
    input_axes: how many trailing axes of the input are contracted.
    use_bias: add a bias.
  """

  features: tuple[int, ...]
  names: tuple[str | None, ...]
  input_axes: int = 1
  use_bias: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., *input_shape] -> [..., *features]."""
    input_shape = x.shape[x.ndim - self.input_axes:]
    kernel = self.param("kernel", kernel_init(self.names, self.input_axes), (*input_shape, *self.features),
                        self.param_dtype)
    bias = (self.param("bias", bias_init(self.names[self.input_axes:]), self.features, self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    contracted = (tuple(range(x.ndim - self.input_axes, x.ndim)), tuple(range(self.input_axes)))
    y = jax.lax.dot_general(x, kernel, (contracted, ((), ())))
    return y if bias is None else y + bias


class FeedForward(nn.Module):
  """Position-wise feed-forward: dense_in [embed, mlp] -> activation -> dropout -> dense_out [mlp, embed].

  Attributes:
    hidden_dim: width of the hidden ("mlp") space.
    activation: a name in ACTIVATIONS ("swish" in Conformer, "relu" in Transformer).
    dropout_rate: dropout on the hidden activations (WeNet / ESPnet place it there).
  """

  hidden_dim: int
  activation: str = "swish"
  dropout_rate: float = 0.0
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """x: [batch, time, embed] -> [batch, time, embed]."""
    hidden = nn.Dense(
        self.hidden_dim, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=kernel_init(("embed", "mlp")), bias_init=bias_init(("mlp",)), name="dense_in",
    )(x)
    hidden = nn.with_logical_constraint(hidden, ("batch", "time", "mlp"))
    hidden = activation(self.activation)(hidden)
    hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=not train)
    return nn.Dense(
        x.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=kernel_init(("mlp", "embed")), bias_init=bias_init(("embed",)), name="dense_out",
    )(hidden)
