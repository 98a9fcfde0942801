"""GroupNormSiLU: the composition by default, and the recomputing VJP against autodiff of it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sadm_jax.models import layers, norm_act, staged
from tests.helpers import normal_data


def _inputs(shape, film):
  c = shape[-1]
  x = normal_data(0, shape, 3.0) + 1.0
  scale, bias = 1.0 + normal_data(1, (c,), 0.1), normal_data(2, (c,), 0.1)
  f_shape = (shape[0],) + (1,) * (len(shape) - 2) + (c,)
  fm = (normal_data(3, f_shape, 0.3), normal_data(4, f_shape, 0.3)) if film else None
  return x, scale, bias, fm


def _vjp(fn, x, scale, bias, fm, g):
  y, pull = jax.vjp(jax.jit(fn), x, scale, bias, fm)
  return (y,) + pull(g)


def _composed(groups):
  """`nn.silu(GroupNorm32(x))` with the FiLM as the UNet wrote it before `norm_act`."""
  def fn(x, scale, bias, fm):
    h = nn.GroupNorm(num_groups=groups, epsilon=1e-5, use_fast_variance=False).apply(
        {"params": {"scale": scale, "bias": bias}}, x)
    if fm is not None:
      h = h * (1 + fm[0]) + fm[1]
    return nn.silu(h)
  return fn


@pytest.mark.parametrize("shape,groups,film", [((4, 16, 16, 32), 8, False),
                                               ((4, 16, 16, 32), 8, True),
                                               ((2, 64, 32), 8, False),  # rank 3
                                               ((2, 64, 32), 8, True),
                                               ((2, 8, 8, 256), 32, True)])  # paper width
def test_recomputing_vjp_matches_autodiff_of_the_composition(shape, groups, film):
  x, scale, bias, fm = _inputs(shape, film)
  g = normal_data(5, shape)
  plain = _vjp(lambda *a: norm_act._plain(*a, groups, 1e-5), x, scale, bias, fm, g)
  ours = _vjp(norm_act._recomputing(groups, 1e-5), x, scale, bias, fm, g)
  ref = _vjp(_composed(groups), x, scale, bias, fm, g)  # flax's GroupNorm, autodiff
  np.testing.assert_array_equal(np.asarray(ours[0]), np.asarray(plain[0]))  # same forward
  for a, b, r in zip(jax.tree.leaves(ours), jax.tree.leaves(plain), jax.tree.leaves(ref)):
    assert a.shape == b.shape == r.shape
    tol = 2e-5 * max(1.0, float(np.abs(r).max()))
    np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=0, atol=tol)
    np.testing.assert_allclose(np.asarray(b), np.asarray(r), rtol=0, atol=tol)
  if film:  # FiLM gradients keep the FiLM's [B, 1.., C] shape
    assert ours[4][0].shape == fm[0].shape and ours[4][1].shape == fm[1].shape


def test_the_comparison_catches_a_wrong_gradient():
  # the tolerance above is tight enough: a gradient off by the SiLU's second term fails it
  x, scale, bias, _ = _inputs((2, 8, 8, 16), False)
  g = normal_data(5, x.shape)
  ref = _vjp(_composed(4), x, scale, bias, None, g)[1]

  @jax.jit  # one program, not each operation eagerly
  def wrong_gradient(x, g):
    h = layers.group_norm(x, scale, bias, 4)
    return jax.vjp(lambda x_: layers.group_norm(x_, scale, bias, 4), x)[1](
        g * jax.nn.sigmoid(h))[0]  # d silu ≈ sigmoid only

  wrong = wrong_gradient(x, g)
  with pytest.raises(AssertionError):
    np.testing.assert_allclose(np.asarray(wrong), np.asarray(ref), rtol=0,
                               atol=2e-5 * max(1.0, float(np.abs(ref).max())))


def test_film_broadcast_over_the_batch_gets_its_own_shape_back():
  x, scale, bias, _ = _inputs((2, 8, 8, 16), False)
  fm = (normal_data(3, (1, 1, 1, 16), 0.3), normal_data(4, (1, 1, 1, 16), 0.3))
  g = normal_data(5, x.shape)
  ours = _vjp(norm_act._recomputing(4, 1e-5), x, scale, bias, fm, g)
  ref = _vjp(_composed(4), x, scale, bias, fm, g)
  assert ours[4][0].shape == ours[4][1].shape == (1, 1, 1, 16)
  for a, r in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=0,
                               atol=2e-5 * max(1.0, float(np.abs(r).max())))


def test_group_norm_silu_uses_the_recomputing_vjp_only_on_listed_backends(monkeypatch):
  x, scale, bias, fm = _inputs((2, 8, 8, 16), True)
  g = normal_data(5, x.shape)
  # a fresh function per setting: JAX caches traces per function object
  fresh = lambda: (lambda *a: norm_act.group_norm_silu(*a[:3], 4, 1e-5, a[3]))
  monkeypatch.setattr(norm_act, "RECOMPUTE_BACKENDS", ())
  assert "custom_vjp" not in str(jax.make_jaxpr(fresh())(x, scale, bias, fm))
  plain = _vjp(fresh(), x, scale, bias, fm, g)
  monkeypatch.setattr(norm_act, "RECOMPUTE_BACKENDS", (jax.default_backend(),))
  assert "custom_vjp" in str(jax.make_jaxpr(fresh())(x, scale, bias, fm))
  ours = _vjp(fresh(), x, scale, bias, fm, g)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0,
                               atol=2e-5 * max(1.0, float(np.abs(b).max())))


def test_default_is_groupnorm32_then_film_then_silu():
  # by default (no backend listed) the module is the composition the UNet had before, with the
  # FiLM folded into GroupNorm's multiply-add and the SiLU through tanh: equal up to round-off
  assert norm_act.RECOMPUTE_BACKENDS == ()
  x, _, _, fm = _inputs((2, 8, 8, 16), True)
  m, gn = norm_act.GroupNormSiLU(4), layers.GroupNorm32(4)
  params = m.init(jax.random.key(0), x, fm)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, gn.init(jax.random.key(0), x))
  params = jax.tree.map(lambda p: p + normal_data(6, p.shape, 0.1), params)

  def composed(p, x):
    h = gn.apply(p, x)
    return nn.silu(h * staged.expand(1 + fm[0], h.shape) + staged.expand(fm[1], h.shape))

  jaxpr = str(jax.make_jaxpr(m.apply)(params, x, fm))
  assert "logistic" not in jaxpr and "tanh" in jaxpr  # layers.silu, not jax.nn.silu
  for ours, ref in [(jax.jit(m.apply)(params, x, fm), jax.jit(composed)(params, x)),
                    (jax.jit(m.apply)(params, x), jax.jit(lambda p, x: nn.silu(gn.apply(p, x)))(params, x))]:
    ours, ref = np.asarray(ours), np.asarray(ref)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6 * max(1.0, float(np.abs(ref).max())))


def test_rejects_channels_not_divisible_by_groups():
  with pytest.raises(ValueError, match="not divisible by 8 groups"):
    norm_act.GroupNormSiLU(8).init(jax.random.key(0), jnp.zeros((1, 4, 4, 12)))


def test_bfloat16_input_keeps_its_dtype_and_gradients():
  x, scale, bias, fm = _inputs((2, 8, 8, 16), True)
  xb = x.astype(jnp.bfloat16)
  fmb = tuple(f.astype(jnp.bfloat16) for f in fm)
  g = normal_data(5, x.shape).astype(jnp.bfloat16)
  ours = _vjp(norm_act._recomputing(4, 1e-5), xb, scale, bias, fmb, g)
  plain = _vjp(lambda *a: norm_act._plain(*a, 4, 1e-5), xb, scale, bias, fmb, g)
  assert ours[0].dtype == ours[1].dtype == jnp.bfloat16 and ours[2].dtype == jnp.float32
  assert ours[4][0].dtype == ours[4][1].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(ours[0], np.float32), np.asarray(plain[0], np.float32))
  for a, b in zip(jax.tree.leaves(ours[1:]), jax.tree.leaves(plain[1:])):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    # the recomputing VJP works in float32 throughout: within bfloat16 rounding of autodiff's
    np.testing.assert_allclose(a, b, rtol=0, atol=3 * 2.0 ** -8 * max(1.0, float(np.abs(b).max())))
