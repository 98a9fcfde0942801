"""Per-channel sums and broadcasts over activations in two stages, the form XLA:CPU reduces fast.

A network's per-channel reductions over N·H·W (a conv bias's gradient, BatchNorm's statistics,
the gradients of BatchNorm's and GroupNorm's scale and bias) sum an NHWC activation over every
axis but the minor channel axis. XLA:CPU (jaxlib 0.10) emits such a sum as a tree-reduction
`reduce-window` that walks each channel with a stride of C: 2.8 ms for [16, 64, 64, 48] → [48],
19 ms for [4, 96, 96, 128] → [128]. Reducing first the axes that sit above a long contiguous
block ([N·H, W·C] → [W·C], whole rows added as vectors) and then the rest ([W, C] → [C]) takes
0.5 and 0.7 ms (BENCHMARKS.md, "Per-channel reductions on CPU"). Sums over H·W per sample
(FiLM's gradient, GroupNorm's statistics) gain nothing: XLA merges their stages back into one
reduction, which already runs near memory speed.

`staged_sum` / `staged_mean` are such sums. `expand` broadcasts a keep-dims statistic back to
the activation in the mirror-image two steps, so that autodiff's transpose of it (the gradient
with respect to the statistic, a bias or a FiLM scale) is a `staged_sum` too; `add_bias` adds a
per-channel bias through it. Values are those of the one-step forms up to float32 round-off;
forward broadcasts are fused away by XLA, so they cost nothing. Only programs for the backends
in STAGED_BACKENDS (CPU) are staged: on a GPU the extra reduction kernel is unmeasured, so GPU
programs keep the one-step forms.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

# A broadcast/reduced axis whose inner block (the product of the sizes after it) has at least
# this many elements is reduced first, as whole contiguous rows.
MIN_INNER_BLOCK = 256
STAGED_BACKENDS = ("cpu",)  # jax.default_backend() values whose programs are staged


def _split_axes(shape: Sequence[int], axes: Sequence[int]) -> tuple[int, int] | None:
  """(a, b) when the axes to reduce first are the contiguous run a..b-1 and others remain; else None.

  The first stage takes the axes whose inner block (the product of the sizes after them) has at
  least MIN_INNER_BLOCK elements, less the innermost of them when that would be every axis (e.g.
  [N, H, W, 256] over N·H·W: [N·H, W·C] first, then W, instead of one slow sum); it is done as
  one reduction over the middle axis of a [before, run, after] view. XLA merges two reductions of
  one array into one (the slow form), so the view, not two `jnp.sum` calls, is what keeps the
  stages apart.
  """
  if jax.default_backend() not in STAGED_BACKENDS:
    return None
  outer = [a for a in axes if math.prod(shape[a + 1:]) >= MIN_INNER_BLOCK]
  if len(outer) == len(axes):  # every block is long (C ≥ MIN_INNER_BLOCK): keep the innermost
    outer = outer[:-1]         # axis for the second stage, a sum of whole rows as well
  if not outer or outer != list(range(outer[0], outer[-1] + 1)):
    return None
  return outer[0], outer[-1] + 1


def _canonical(ndim: int, axes: int | Sequence[int]) -> tuple[int, ...]:
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  bad = [a for a in axes if not -ndim <= a < ndim]
  if bad:
    raise ValueError(f"axes {bad} out of range for an array of rank {ndim}")
  return tuple(sorted({a % ndim for a in axes}))


def _view(shape: Sequence[int], a: int, b: int) -> tuple[int, int, int]:
  return math.prod(shape[:a]), math.prod(shape[a:b]), math.prod(shape[b:])


def staged_sum(x: jax.Array, axes: int | Sequence[int], keepdims: bool = False) -> jax.Array:
  """Sum of `x` over `axes`: first the axes above a long contiguous block, then the others."""
  axes = _canonical(x.ndim, axes)
  run = _split_axes(x.shape, axes)
  if run is None:
    y = jnp.sum(x, axes, keepdims=True)
  else:
    a, b = run
    y = jnp.sum(x.reshape(_view(x.shape, a, b)), axis=1)
    y = y.reshape(x.shape[:a] + (1,) * (b - a) + x.shape[b:])
    y = jnp.sum(y, tuple(i for i in axes if not a <= i < b), keepdims=True)
  return y if keepdims else jnp.squeeze(y, axes)


def staged_mean(x: jax.Array, axes: int | Sequence[int], keepdims: bool = False) -> jax.Array:
  """Mean of `x` over `axes` via `staged_sum` (half-precision inputs summed in float32)."""
  axes = _canonical(x.ndim, axes)
  count = math.prod(x.shape[a] for a in axes)
  wide = jnp.promote_types(x.dtype, jnp.float32)
  return (staged_sum(x.astype(wide), axes, keepdims) / count).astype(x.dtype)


def expand(v: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Broadcasts `v` (same rank as `shape`, size 1 on the axes to broadcast) to `shape`.

  Broadcasts the inner axes first, then the outer ones through a [before, run, after] view, so
  that the gradient with respect to `v` is a `staged_sum`. E.g. a bias [1, 1, 1, C] or a FiLM
  scale [N, 1, 1, C].
  """
  shape = tuple(shape)
  if v.ndim != len(shape):
    raise ValueError(f"expand needs the same rank: {v.shape} to {shape}")
  axes = tuple(i for i, (m, n) in enumerate(zip(v.shape, shape)) if m == 1 and n != 1)
  run = _split_axes(shape, axes)
  if run is None:
    return jnp.broadcast_to(v, shape)
  a, b = run
  partial = tuple(1 if a <= i < b else n for i, n in enumerate(shape))
  v = jnp.broadcast_to(v, partial)  # the inner axes
  before, middle, after = _view(shape, a, b)
  v = jnp.broadcast_to(v.reshape(before, 1, after), (before, middle, after))
  return v.reshape(shape)


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """y [..., C] + bias [C] through `expand` (the bias gradient in two fast reductions)."""
  return y + expand(bias.reshape((1,) * (y.ndim - 1) + bias.shape), y.shape)
