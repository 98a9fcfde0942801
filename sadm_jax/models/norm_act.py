"""GroupNorm → [FiLM] → SiLU as one op, with an optional VJP that recomputes instead of storing.

The ADM UNet applies `silu(GroupNorm(x))` and `silu(GroupNorm(h)·(1 + scale) + shift)` at every
resolution (`GroupNormSiLU`; its parameters are GroupNorm32's). Differentiated as composed, the
backward pass keeps several full-size intermediates per block and runs the chain as many
memory-bound loops. The recomputing VJP (`_recomputing`) keeps only the input and the per-group
mean and 1/std, and recomputes the normalised value and the sigmoid where the backward needs them.
Its gradients agree with autodiff of the composition up to float32 round-off
(tests/models/test_norm_act.py).

On XLA:CPU it is slower, so no backend uses it by default (RECOMPUTE_BACKENDS is empty): the
demo cDDPM train step took 1.09× as long with 1.24× the temporary memory, XLA recomputing the
sigmoid in each of the backward's reductions (BENCHMARKS.md, "GroupNorm, FiLM and SiLU on CPU").
On GPUs, where these loops are the memory-bound third of the step, it is unmeasured:
`python -m benchmarks.norm_act` compares the two there. With the default, the program is the
composition as written before this module existed (the same optimised HLO).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sadm_jax.models import layers, staged

Dtype = Any
# jax.default_backend() values whose programs use the recomputing VJP (none: see above)
RECOMPUTE_BACKENDS: tuple[str, ...] = ()


def _grouped(shape: tuple[int, ...], groups: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """([B, ..., G, C/G], the statistics' axes) for an activation of `shape` [B, ..., C]."""
  c = shape[-1]
  gshape = shape[:-1] + (groups, c // groups)
  return gshape, tuple(range(1, len(gshape) - 2)) + (len(gshape) - 1,)


def _statistics(x: jax.Array, groups: int, eps: float) -> tuple[jax.Array, jax.Array]:
  """Per (sample, group) mean and 1/√(var + eps), float32, keep-dims [B, 1.., G, 1] (two-pass)."""
  gshape, axes = _grouped(x.shape, groups)
  xg = x.astype(jnp.float32).reshape(gshape)
  mean = staged.staged_mean(xg, axes, keepdims=True)
  centred = xg - staged.expand(mean, gshape)
  var = staged.staged_mean(jnp.square(centred), axes, keepdims=True)
  return mean, jax.lax.rsqrt(var + eps)


def _pre_activation(x, mean, rstd, scale, bias, film, groups):
  """(GroupNorm(x) in x.dtype, FiLM output = the SiLU's input), as GroupNorm32 + the FiLM."""
  gshape, _ = _grouped(x.shape, groups)
  g, cg = gshape[-2:]
  centred = x.astype(jnp.float32).reshape(gshape) - staged.expand(mean, gshape)
  mul = rstd * scale.reshape(g, cg)
  shift = bias.reshape((1,) * (len(gshape) - 2) + (g, cg))
  normed = centred * staged.expand(mul, gshape) + staged.expand(shift, gshape)
  normed = normed.reshape(x.shape).astype(x.dtype)
  if film is None:
    return normed, normed
  f_scale, f_shift = film
  return normed, (normed * staged.expand(1 + f_scale, x.shape)
                  + staged.expand(f_shift, x.shape))


def _plain(x, scale, bias, film, groups, eps):
  """The composition as written before this module: GroupNorm32, the FiLM, `jax.nn.silu`."""
  h = layers.group_norm(x, scale, bias, groups, eps)
  if film is not None:
    h = h * staged.expand(1 + film[0], h.shape) + staged.expand(film[1], h.shape)
  return jax.nn.silu(h)


def _recomputing(groups: int, eps: float):
  """The op for one (groups, eps): forward as `_plain`, a VJP that recomputes (film may be None)."""

  @jax.custom_vjp
  def op(x, scale, bias, film):
    return _plain(x, scale, bias, film, groups, eps)

  def fwd(x, scale, bias, film):  # XLA computes the statistics once (common subexpressions)
    mean, rstd = _statistics(x, groups, eps)
    return _plain(x, scale, bias, film, groups, eps), (x, mean, rstd, scale, bias, film)

  def bwd(res, dout):
    x, mean, rstd, scale, bias, film = res
    normed, y = _pre_activation(x, mean, rstd, scale, bias, film, groups)
    y32 = y.astype(jnp.float32)
    sig = jax.nn.sigmoid(y32)
    dy = dout.astype(jnp.float32) * (sig * (1.0 + y32 * (1.0 - sig)))  # d silu(y) / dy
    spatial = tuple(range(1, x.ndim - 1))
    if film is not None:
      f_scale, f_shift = film
      n32 = normed.astype(jnp.float32)
      d_shift = staged.staged_sum(dy, spatial, keepdims=True).astype(f_shift.dtype)
      d_scale = staged.staged_sum(dy * n32, spatial, keepdims=True).astype(f_scale.dtype)
      dy = dy * (1 + f_scale.astype(jnp.float32))
      d_film = (d_scale, d_shift)
    else:
      d_film = film  # None
    gshape, axes = _grouped(x.shape, groups)
    xhat = ((x.astype(jnp.float32).reshape(gshape) - mean) * rstd).reshape(x.shape)
    channels = tuple(range(x.ndim - 1))
    d_bias = staged.staged_sum(dy, channels).astype(bias.dtype)
    d_scale_gn = staged.staged_sum(dy * xhat, channels).astype(scale.dtype)
    dxhat = (dy * scale.astype(jnp.float32)).reshape(gshape)
    xhat_g = xhat.reshape(gshape)
    m1 = jnp.mean(dxhat, axes, keepdims=True)
    m2 = jnp.mean(dxhat * xhat_g, axes, keepdims=True)
    dx = rstd * (dxhat - m1 - xhat_g * m2)
    return dx.reshape(x.shape).astype(x.dtype), d_scale_gn, d_bias, d_film

  op.defvjp(fwd, bwd)
  return op


def group_norm_silu(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int,
                    eps: float = 1e-5, film: tuple[jax.Array, jax.Array] | None = None
                    ) -> jax.Array:
  """silu(GroupNorm(x)·(1 + film_scale) + film_shift); without `film`, silu(GroupNorm(x)).

  x: [B, ..., C] (C divisible by `groups`); scale, bias: [C] (float32); film: (scale, shift),
  each broadcastable as [B, 1.., C], e.g. [B, 1, 1, C]. Statistics in float32 (two-pass
  variance); returns x.dtype.
  """
  if jax.default_backend() not in RECOMPUTE_BACKENDS:
    return _plain(x, scale, bias, film, groups, eps)
  return _recomputing(groups, eps)(x, scale, bias, film)


class GroupNormSiLU(nn.Module):
  """`silu(GroupNorm32(x))`, optionally with FiLM in between, via `group_norm_silu`.

  Same parameters as `layers.GroupNorm32` (`scale`, `bias` [C] directly under the module's
  name), so it replaces `nn.silu(GroupNorm32(...)(x))` in a parameter tree unchanged.
  """
  num_groups: int = 32
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, film: tuple[jax.Array, jax.Array] | None = None
               ) -> jax.Array:  # [B, ..., C] -> [B, ..., C]
    c, g = x.shape[-1], self.num_groups
    if c % g:
      raise ValueError(f"GroupNorm: {c} channels are not divisible by {g} groups")
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    return group_norm_silu(x, scale, bias, g, self.epsilon, film)
