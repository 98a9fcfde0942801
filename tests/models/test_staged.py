"""Two-stage per-channel sums/broadcasts, and the GroupNorm32 / Conv built on them, against the plain forms."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sadm_jax.models import layers, staged

CASES = [  # shape, axes
    ((16, 64, 64, 48), (0, 1, 2)),  # a conv bias's gradient (staged: [N·H, W·C], then W)
    ((4, 96, 96, 128), (0, 1, 2)),
    ((4, 16, 16, 8, 4), (1, 2, 4)),  # GroupNorm statistics
    ((4, 16, 16, 32), (1, 2)),  # FiLM's gradient
    ((3, 5, 7), (0, 2)),  # too small to stage: one reduction
    ((2, 3, 300), (0, 1)),  # every axis above a long block: one reduction
]


@pytest.mark.parametrize("shape,axes", CASES)
def test_staged_sum_and_mean_match_float64(shape, axes):
  x = jax.random.normal(jax.random.key(len(shape)), shape) * 2.0 + 0.5
  ref = np.asarray(x, np.float64).sum(axes)
  got = staged.staged_sum(x, axes)
  assert got.shape == ref.shape
  np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=2e-6 * np.abs(ref).max() + 1e-5)
  keep = staged.staged_mean(x, axes, keepdims=True)
  assert keep.shape == np.asarray(x).mean(axes, keepdims=True).shape
  count = np.prod([shape[a] for a in axes])
  np.testing.assert_allclose(np.asarray(keep).reshape(ref.shape), ref / count, rtol=1e-5,
                             atol=1e-6)


def test_staged_sum_known_answer_and_negative_axes():
  x = jnp.ones((8, 32, 32, 16))
  np.testing.assert_array_equal(staged.staged_sum(x, (0, 1, 2)), np.full(16, 8 * 32 * 32.0))
  np.testing.assert_array_equal(staged.staged_sum(x, (-3, -2)), np.full((8, 16), 32 * 32.0))


def test_bias_gradient_is_two_reductions():
  """The first stage reduces a [N·H, W·C] view (the fast form); XLA would merge two plain sums."""
  y = jnp.zeros((16, 64, 64, 48))
  jaxpr = jax.make_jaxpr(jax.grad(lambda b: staged.add_bias(y, b).sum()))(jnp.zeros(48))
  sums = [e for e in jaxpr.eqns if e.primitive.name == "reduce_sum"]
  shapes = [tuple(e.invars[0].aval.shape) for e in sums]
  assert (16 * 64, 1, 64 * 48) in shapes or (1, 16 * 64, 64 * 48) in shapes, shapes
  assert any(s[-1] == 48 and np.prod(s) == 64 * 48 for s in shapes), shapes


@pytest.mark.parametrize("vshape,shape", [((1, 1, 1, 48), (16, 64, 64, 48)),
                                          ((16, 1, 1, 48), (16, 64, 64, 48)),
                                          ((4, 1, 1, 8, 1), (4, 16, 16, 8, 4)),
                                          ((1, 5), (3, 5))])
def test_expand_values_and_gradient(vshape, shape):
  v = jax.random.normal(jax.random.key(1), vshape)
  g = jax.random.normal(jax.random.key(2), shape)
  np.testing.assert_array_equal(staged.expand(v, shape), jnp.broadcast_to(v, shape))
  got = jax.grad(lambda v: (staged.expand(v, shape) * g).sum())(v)
  ref = np.asarray(g, np.float64).sum(tuple(i for i, n in enumerate(vshape) if n == 1),
                                      keepdims=True)
  np.testing.assert_allclose(np.asarray(got), np.broadcast_to(ref, vshape), rtol=0,
                             atol=2e-6 * np.abs(ref).max() + 1e-5)
  with pytest.raises(ValueError, match="same rank"):
    staged.expand(v.reshape(-1), shape)


def _random_params(module, key, x):
  leaves, tree = jax.tree.flatten(jax.eval_shape(module.init, key, x))
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(tree, [0.5 * jax.random.normal(k, l.shape) + 1.0
                                   for k, l in zip(keys, leaves)])


def _compare(ours, theirs, x, key, atol):
  """Same parameter tree; values and the gradients of parameters and input within `atol`."""
  params = _random_params(theirs, key, x)
  assert jax.tree.structure(jax.eval_shape(ours.init, key, x)) == jax.tree.structure(params)
  g = jax.random.normal(jax.random.key(9), jax.eval_shape(theirs.apply, params, x).shape)
  out = []
  for m in (ours, theirs):
    y, vjp = jax.vjp(m.apply, params, x)
    out.append((y,) + vjp(g))
  for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(out[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0,
                               atol=atol * max(1.0, float(np.abs(b).max())))


def test_groupnorm_matches_flax_two_pass_groupnorm():
  x = jax.random.normal(jax.random.key(3), (4, 16, 16, 32)) * 3.0 + 1.0
  flax_gn = nn.GroupNorm(num_groups=8, epsilon=1e-5, use_fast_variance=False)
  _compare(layers.GroupNorm32(8), flax_gn, x, jax.random.key(4), 2e-5)
  with pytest.raises(ValueError, match="not divisible by 8 groups"):
    layers.GroupNorm32(8).init(jax.random.key(0), jnp.zeros((1, 4, 4, 12)))


def test_groupnorm_keeps_input_dtype_and_computes_in_float32():
  x = (jax.random.normal(jax.random.key(5), (2, 8, 8, 16)) * 4.0).astype(jnp.bfloat16)
  gn = layers.GroupNorm32(4)
  params = gn.init(jax.random.key(0), x)
  y = gn.apply(params, x)
  assert y.dtype == jnp.bfloat16
  ref = nn.GroupNorm(num_groups=4, epsilon=1e-5, use_fast_variance=False).apply(
      params, x.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref), atol=3e-2)


@pytest.mark.parametrize("kernel,strides,padding", [((3, 3), (1, 1), "SAME"),
                                                    ((1, 1), (1, 1), "SAME"),
                                                    ((7, 7), (2, 2), ((3, 3), (3, 3)))])
def test_conv_matches_flax_conv(kernel, strides, padding):
  """nn.Conv's parameters and initial values bit for bit, its forward bit for bit, gradients close."""
  x = jax.random.normal(jax.random.key(6), (2, 16, 16, 8))
  kw = dict(kernel_init=layers.torch_kernel_init(), bias_init=layers.torch_bias_init(72))
  ours = layers.Conv(12, kernel, strides=strides, padding=padding, **kw)
  theirs = nn.Conv(12, kernel, strides=strides, padding=padding, **kw)
  init_ours, init_theirs = ours.init(jax.random.key(0), x), theirs.init(jax.random.key(0), x)
  jax.tree.map(np.testing.assert_array_equal, init_ours, init_theirs)
  np.testing.assert_array_equal(ours.apply(init_theirs, x), theirs.apply(init_theirs, x))
  _compare(ours, theirs, x, jax.random.key(8), 2e-5)
  no_bias = layers.Conv(12, kernel, padding=padding, use_bias=False).init(jax.random.key(0), x)
  assert set(no_bias["params"]) == {"kernel"}

