"""benchmarks/conv_formulations.py: each weight-gradient formulation equals autodiff of the plain conv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import conv_formulations as cf


def _conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("k", [1, 2, 3])  # 2: XLA's 'SAME' puts the extra padding row at the end
def test_weight_gradients_equal_autodiff(k):
  rng = np.random.default_rng(k)
  x = jnp.asarray(rng.normal(size=(2, 5, 6, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(2, 5, 6, 4)), jnp.float32)
  expected = jax.vjp(lambda w: _conv(x, w), w)[1](g)[0]
  for fn in (cf.conv_weight_grad_im2col, cf.conv_weight_grad_shifted):
    got = jax.jit(fn, static_argnums=2)(x, g, k)
    assert got.shape == (k, k, 3, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_custom_vjp_conv_matches_the_plain_conv_and_its_gradients():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 6, 5, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(2, 6, 5, 4)), jnp.float32)
  np.testing.assert_array_equal(cf.conv2d_im2col_vjp(x, w), _conv(x, w))

  def grads(conv):
    return jax.jit(jax.grad(lambda x, w: jnp.vdot(conv(x, w), g), (0, 1)))(x, w)

  for got, want in zip(grads(cf.conv2d_im2col_vjp), grads(_conv)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # A single hand-checkable entry: dW[1, 1, i, o] = Σ_{b,h,w} x[b,h,w,i] g[b,h,w,o] (centre tap).
  dw = cf.conv_weight_grad_im2col(x, g, 3)
  np.testing.assert_allclose(dw[1, 1], np.einsum("bhwi,bhwo->io", x, g), rtol=1e-5, atol=1e-5)
