"""GroupNorm → [FiLM] → SiLU as one op, with an optional VJP that recomputes instead of storing.

The ADM UNet applies `silu(GroupNorm(x))` and `silu(GroupNorm(h)·(1 + scale) + shift)` at every
resolution (`GroupNormSiLU`; its parameters are GroupNorm32's). Differentiated as composed, the
backward pass keeps several full-size intermediates per block and runs the chain as many
memory-bound loops. The recomputing VJP (`_recomputing`) keeps only the input and the per-group
mean and 1/std, and recomputes the normalised value and the sigmoid where the backward needs them.
Its gradients agree with autodiff of the composition up to float32 round-off
(tests/models/test_norm_act.py).

On XLA:CPU it is slower, so no backend uses it by default (RECOMPUTE_BACKENDS is empty): the
demo cDDPM train step took 1.10× as long, XLA writing the recomputed values out as full-size
arrays instead of fusing them into the reductions that use them (BENCHMARKS.md, "The demo
step's convolutions, and GroupNorm → FiLM → SiLU").
On an H200 it gains nothing either (paper cDDPM train step, bf16, batch 32: 51.2 vs 51.5 ms
pipelined, GPU busy 49.9 vs 50.1 ms, the program's temporaries 7.55 vs 6.84 GB; BENCHMARKS.md,
"GPU: one H200"), so GPUs keep the composition too. The composition folds the FiLM into
GroupNorm's per-channel multiply-add and takes the SiLU through tanh (`layers.silu`): the same
function up to float32 round-off, with fewer operations per element (BENCHMARKS.md, "SiLU through
tanh, and the FiLM folded into the GroupNorm").
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sadm_jax.models import layers, staged

# jax.default_backend() values whose programs use the recomputing VJP (none: see above)
RECOMPUTE_BACKENDS: tuple[str, ...] = ()


def _film(h: jax.Array, film: tuple[jax.Array, jax.Array] | None) -> jax.Array:
  """h·(1 + film_scale) + film_shift (the UNet's scale-shift), or h without `film`."""
  if film is None:
    return h
  return h * staged.expand(1 + film[0], h.shape) + staged.expand(film[1], h.shape)


def _plain(x, scale, bias, film, groups, eps):
  """GroupNorm32, the FiLM folded into its per-channel multiply-add, then `layers.silu`."""
  return layers.silu(layers.group_norm(x, scale, bias, groups, eps, film))


def _film_grad(d: jax.Array, f: jax.Array) -> jax.Array:
  """d [B, ..., C] summed over the axes that the FiLM term `f` broadcasts over, in f's shape."""
  axes = tuple(i for i, (m, n) in enumerate(zip(f.shape, d.shape)) if m == 1 and n != 1)
  return staged.staged_sum(d, axes, keepdims=True).reshape(f.shape).astype(f.dtype)


def _recomputing(groups: int, eps: float):
  """The op for one (groups, eps): forward as `_plain`, a VJP that recomputes (film may be None)."""

  @jax.custom_vjp
  def op(x, scale, bias, film):
    return _plain(x, scale, bias, film, groups, eps)

  def fwd(x, scale, bias, film):  # `_plain`'s operations, its statistics kept for `bwd`
    xg, mean, rstd = layers.group_statistics(x, groups, eps)
    y = layers.group_normalise(xg, mean, rstd, scale, bias, x.shape, x.dtype, film)
    return layers.silu(y), (x, mean, rstd, scale, bias, film)

  def bwd(res, dout):
    x, mean, rstd, scale, bias, film = res
    xg, axes = layers.grouped(x, groups)
    centred = xg - staged.expand(mean, xg.shape)
    normed = layers.group_normalise(xg, mean, rstd, scale, bias, x.shape, x.dtype)
    y32 = _film(normed, film).astype(jnp.float32)
    sig = layers.sigmoid(y32)
    dy = dout.astype(jnp.float32) * (sig * (1.0 + y32 * (1.0 - sig)))  # d silu(y) / dy
    if film is not None:
      f_scale, f_shift = film
      d_film = (_film_grad(dy * normed.astype(jnp.float32), f_scale), _film_grad(dy, f_shift))
      dy = dy * (1 + f_scale.astype(jnp.float32))
    else:
      d_film = None
    xhat = centred * rstd  # [B, ..., G, C/G]
    channels = tuple(range(x.ndim - 1))
    d_bias = staged.staged_sum(dy, channels).astype(bias.dtype)
    d_scale = staged.staged_sum(dy * xhat.reshape(x.shape), channels).astype(scale.dtype)
    dxhat = (dy * scale.astype(jnp.float32)).reshape(xg.shape)
    m1 = jnp.mean(dxhat, axes, keepdims=True)
    m2 = jnp.mean(dxhat * xhat, axes, keepdims=True)
    dx = rstd * (dxhat - m1 - xhat * m2)
    return dx.reshape(x.shape).astype(x.dtype), d_scale, d_bias, d_film

  op.defvjp(fwd, bwd)
  return op


def group_norm_silu(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int,
                    eps: float = 1e-5, film: tuple[jax.Array, jax.Array] | None = None
                    ) -> jax.Array:
  """silu(GroupNorm(x)·(1 + film_scale) + film_shift); without `film`, silu(GroupNorm(x)).

  x: [B, ..., C] (C divisible by `groups`); scale, bias: [C] (float32); film: (scale, shift),
  each of x's rank with size 1 on the axes it broadcasts over, e.g. [B, 1, 1, C] or
  [1, 1, 1, C]. Statistics in float32 (two-pass variance); returns x.dtype.
  """
  if jax.default_backend() not in RECOMPUTE_BACKENDS:
    return _plain(x, scale, bias, film, groups, eps)
  return _recomputing(groups, eps)(x, scale, bias, film)


class GroupNormSiLU(layers.GroupNorm32):
  """`silu(GroupNorm32(x))`, optionally with FiLM in between, via `group_norm_silu`.

  GroupNorm32's fields and parameters (`scale`, `bias` [C] directly under the module's name), so
  it replaces `nn.silu(GroupNorm32(...)(x))` in a parameter tree unchanged.
  """

  @nn.compact
  def __call__(self, x: jax.Array, film: tuple[jax.Array, jax.Array] | None = None
               ) -> jax.Array:  # [B, ..., C] -> [B, ..., C]
    scale, bias = self._scale_bias(x)
    return group_norm_silu(x, scale, bias, self.num_groups, self.epsilon, film)
