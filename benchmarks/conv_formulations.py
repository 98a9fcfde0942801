"""Alternatives to XLA's weight gradient of a stride-1 'SAME' conv (NHWC × HWIO), for `cpu_ops`.

Measured against `lax.conv_general_dilated`'s autodiff. None beat the plain conv under the
package's XLA flags (BENCHMARKS.md, "CPU ops"), so they live here and not in
sadm_jax.models.layers; `tests/benchmarks/test_conv_formulations.py` checks them against autodiff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_DN = ("NHWC", "HWIO", "NHWC")


def _same_pad(k: int) -> tuple[int, int]:
  return (k - 1) // 2, k // 2  # XLA's 'SAME' split for stride 1: the extra row at the end


def conv_weight_grad_im2col(x: jax.Array, g: jax.Array, k: int) -> jax.Array:
  """dL/dW of a stride-1 'SAME' k×k conv as one matmul: patches(x)ᵀ · g.

  x: [B, H, W, C_in] (the conv's input), g: [B, H, W, C_out] (dL/dy) -> [k, k, C_in, C_out].
  """
  b, h, w, ci = x.shape
  lo, hi = _same_pad(k)
  xp = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
  patches = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(k) for j in range(k)],
                            axis=-1)  # [B, H, W, k·k·C_in], (kh, kw, c_in) order
  dw = jnp.einsum("bhwp,bhwo->po", patches, g, preferred_element_type=jnp.float32)
  return dw.reshape(k, k, ci, g.shape[-1])


def conv_weight_grad_shifted(x: jax.Array, g: jax.Array, k: int) -> jax.Array:
  """dL/dW of a stride-1 'SAME' k×k conv as k·k matmuls over shifted views of x (no patches).

  x: [B, H, W, C_in], g: [B, H, W, C_out] -> [k, k, C_in, C_out].
  """
  _, h, w, _ = x.shape
  lo, hi = _same_pad(k)
  xp = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
  rows = [jnp.stack([jnp.einsum("bhwi,bhwo->io", xp[:, i:i + h, j:j + w, :], g,
                                preferred_element_type=jnp.float32) for j in range(k)])
          for i in range(k)]
  return jnp.stack(rows)


def _conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DN)


@jax.custom_vjp
def conv2d_im2col_vjp(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 'SAME' conv, NHWC × HWIO; backward: dX by XLA, dW by `conv_weight_grad_im2col`."""
  return _conv_same(x, kernel)


def _conv2d_fwd(x, kernel):
  return _conv_same(x, kernel), (x, kernel)


def _conv2d_bwd(res, g):
  x, kernel = res
  _, vjp_x = jax.vjp(lambda a: _conv_same(a, kernel), x)
  (dx,) = vjp_x(g)
  dw = conv_weight_grad_im2col(x, g, kernel.shape[0]).astype(kernel.dtype)
  return dx, dw


conv2d_im2col_vjp.defvjp(_conv2d_fwd, _conv2d_bwd)
