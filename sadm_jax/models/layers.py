"""Shared model pieces: float32 GroupNorm, PyTorch-default initialisers, weight standardisation."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def torch_kernel_init(transposed: bool = False) -> nn.initializers.Initializer:
  """PyTorch's default weight init (kaiming-uniform, a=√5): U(±1/√fan_in).

  Flax kernels are laid out [..., in, out]. PyTorch computes a transposed convolution's fan_in
  from its *output* channels, so `transposed=True` swaps the axes used for the fan.
  """
  in_axis, out_axis = (-1, -2) if transposed else (-2, -1)
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform",
                                          in_axis=in_axis, out_axis=out_axis)


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default bias init: U(±1/√fan_in)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


zeros_init = nn.initializers.zeros


class GroupNorm32(nn.GroupNorm):
  """GroupNorm (default 32 groups, eps 1e-5) computed in float32; returns the input's dtype.

  Parameters `scale`/`bias` live directly under the module's name (no extra nesting).
  """
  num_groups: int | None = 32
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  use_fast_variance: bool = False

  def __call__(self, x: jax.Array, *args, **kwargs) -> jax.Array:  # [B, ..., C]
    return super().__call__(x.astype(jnp.float32), *args, **kwargs).astype(x.dtype)


def standardize_weight(kernel: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Weight standardisation per output filter, as in the DAE/SegUnet conv.

  kernel: [kh, kw, C_in, C_out]. Each filter (last axis) gets its mean over (kh, kw, C_in)
  subtracted and is divided by (its *unbiased* standard deviation + eps). Computed in float32.
  """
  w = kernel.astype(jnp.float32)
  w = w - jnp.mean(w, axis=(0, 1, 2), keepdims=True)
  std = jnp.std(w, axis=(0, 1, 2), keepdims=True, ddof=1)
  return w / (std + eps)
