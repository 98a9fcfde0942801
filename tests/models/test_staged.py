"""Staged sums, GroupNorm32, Conv, ConvTranspose's adjoint gradient and SiLU vs plain forms."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sadm_jax.models import layers, staged
from tests.helpers import compiled_apply, compiled_init, dilated_convs, normal_data

CASES = [  # shape, axes
    ((16, 64, 64, 48), (0, 1, 2)),  # a conv bias's gradient (staged: [N·H, W·C], then W)
    ((4, 96, 96, 128), (0, 1, 2)),
    ((4, 16, 16, 8, 4), (1, 2, 4)),  # GroupNorm statistics
    ((4, 16, 16, 32), (1, 2)),  # FiLM's gradient
    ((3, 5, 7), (0, 2)),  # too small to stage: one reduction
    ((2, 3, 300), (0, 1)),  # every axis above a long block: [1, 2, 900], then the middle one
    ((2, 8, 8, 256), (0, 1, 2)),  # C ≥ MIN_INNER_BLOCK: [N·H, W·C], then W
    ((300, 260), (0,)),  # one axis, already whole rows: one reduction
]


def _sums(f, *args):
  """The reduce_sum equations of f's jaxpr (their operand shapes)."""
  jaxpr = jax.make_jaxpr(f)(*args)
  return [tuple(e.invars[0].aval.shape) for e in jaxpr.eqns if e.primitive.name == "reduce_sum"]


@pytest.mark.parametrize("shape,axes", CASES)
def test_staged_sum_and_mean_match_float64(shape, axes):
  x = normal_data(len(shape), shape) * 2.0 + 0.5
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
  with pytest.raises(ValueError, match="out of range"):
    staged.staged_sum(x, 4)


def test_which_sums_are_staged():
  x = jnp.zeros((16, 64, 64, 48))
  assert _sums(lambda x: staged.staged_sum(x, (0, 1, 2)), x) == [(1, 1024, 3072), (1, 1, 64, 48)]
  assert len(_sums(lambda x: staged.staged_sum(x, (0, 2)), jnp.zeros((3, 5, 7)))) == 1  # small
  # C ≥ MIN_INNER_BLOCK: every axis has a long block; the innermost is kept for the second stage
  # (one step: 7.9 ms for [4, 48, 48, 256], BENCHMARKS.md "Per-channel reductions on CPU")
  assert _sums(lambda x: staged.staged_sum(x, (0, 1, 2)), jnp.zeros((2, 8, 8, 256))) == [
      (1, 16, 2048), (1, 1, 8, 256)]
  assert len(_sums(lambda x: staged.staged_sum(x, 0), jnp.zeros((300, 260)))) == 1


def test_programs_for_other_backends_keep_one_step_sums(monkeypatch):
  """Only CPU programs are staged: on a GPU the extra reduction kernel is unmeasured."""
  monkeypatch.setattr(staged, "STAGED_BACKENDS", ("gpu",))
  x = jnp.zeros((16, 64, 64, 48))
  assert len(_sums(lambda x: staged.staged_sum(x, (0, 1, 2)), x)) == 1
  # the loss's own sum and the bias gradient, both over the whole activation
  assert _sums(jax.grad(lambda b: staged.add_bias(x, b).sum()), jnp.zeros(48)) == [x.shape] * 2


def test_staged_mean_of_half_precision_sums_in_float32():
  x = jnp.ones((4, 128, 128, 2), jnp.float16)  # 65,536 values per channel: inf as a float16 count
  m = staged.staged_mean(x, (0, 1, 2))
  assert m.dtype == jnp.float16
  np.testing.assert_array_equal(np.asarray(m, np.float32), np.ones(2, np.float32))


def test_bias_gradient_is_two_reductions():
  """The first stage reduces a [N·H, W·C] view (the fast form); XLA would merge two plain sums."""
  y = jnp.zeros((16, 64, 64, 48))
  shapes = _sums(jax.grad(lambda b: staged.add_bias(y, b).sum()), jnp.zeros(48))
  assert (16 * 64, 1, 64 * 48) in shapes or (1, 16 * 64, 64 * 48) in shapes, shapes
  assert any(s[-1] == 48 and np.prod(s) == 64 * 48 for s in shapes), shapes


@pytest.mark.parametrize("vshape,shape", [((1, 1, 1, 48), (16, 64, 64, 48)),
                                          ((16, 1, 1, 48), (16, 64, 64, 48)),
                                          ((4, 1, 1, 8, 1), (4, 16, 16, 8, 4)),
                                          ((1, 5), (3, 5))])
def test_expand_values_and_gradient(vshape, shape):
  v, g = normal_data(1, vshape), normal_data(2, shape)
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
  rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))  # numpy: no compiles
  return jax.tree.unflatten(tree, [jnp.asarray(0.5 * rng.standard_normal(l.shape) + 1.0,
                                               jnp.float32) for l in leaves])


def _compare(ours, theirs, x, key, atol):
  """Same parameter tree; values and the gradients of parameters and input within `atol`."""
  params = _random_params(theirs, key, x)
  assert jax.tree.structure(jax.eval_shape(ours.init, key, x)) == jax.tree.structure(params)
  g = normal_data(9, jax.eval_shape(theirs.apply, params, x).shape)
  out = []
  for m in (ours, theirs):
    y, vjp = jax.vjp(jax.jit(m.apply), params, x)  # jitted: one compile, not one per op
    out.append((y,) + vjp(g))
  for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(out[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0,
                               atol=atol * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("shape,groups", [((4, 16, 16, 32), 8),  # UNet / SegUnet
                                          ((2, 64, 32), 8),  # rank 3, e.g. [B, T, C]
                                          ((2, 8, 8, 256), 32)])  # paper UNet width
def test_groupnorm_matches_flax_two_pass_groupnorm(shape, groups):
  x = normal_data(3, shape) * 3.0 + 1.0
  flax_gn = nn.GroupNorm(num_groups=groups, epsilon=1e-5, use_fast_variance=False)
  _compare(layers.GroupNorm32(groups), flax_gn, x, jax.random.key(4), 2e-5)


def test_groupnorm_rejects_channels_not_divisible_by_groups():
  with pytest.raises(ValueError, match="not divisible by 8 groups"):
    layers.GroupNorm32(8).init(jax.random.key(0), jnp.zeros((1, 4, 4, 12)))


def test_groupnorm_keeps_input_dtype_and_computes_in_float32():
  x = (normal_data(5, (2, 8, 8, 16)) * 4.0).astype(jnp.bfloat16)
  gn = layers.GroupNorm32(4)
  params = gn.init(jax.random.key(0), x)
  y = gn.apply(params, x)
  assert y.dtype == jnp.bfloat16
  ref = nn.GroupNorm(num_groups=4, epsilon=1e-5, use_fast_variance=False).apply(
      params, x.astype(jnp.float32)).astype(jnp.bfloat16)
  # float32 statistics: at most one bfloat16 rounding step from flax's float32 result
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref, np.float32),
                             rtol=2.0 ** -7, atol=1e-6)


@pytest.mark.parametrize("kernel,strides,padding", [((3, 3), (1, 1), "SAME"),
                                                    ((1, 1), (1, 1), "SAME"),
                                                    ((7, 7), (2, 2), ((3, 3), (3, 3)))])
def test_conv_matches_flax_conv(kernel, strides, padding):
  """nn.Conv's parameters and initial values bit for bit (3×3), its forward bit for bit, gradients
  close (the initial values take one case: each kernel shape's init is a program to compile)."""
  x = normal_data(6, (2, 16, 16, 8))
  kw = dict(kernel_init=layers.torch_kernel_init(), bias_init=layers.torch_bias_init(72))
  ours = layers.Conv(12, kernel, strides=strides, padding=padding, **kw)
  theirs = nn.Conv(12, kernel, strides=strides, padding=padding, **kw)
  if kernel == (3, 3):
    init_ours, init_theirs = (compiled_init(m, jax.random.key(0), x) for m in (ours, theirs))
    jax.tree.map(np.testing.assert_array_equal, init_ours, init_theirs)
  params = _random_params(theirs, jax.random.key(7), x)
  np.testing.assert_array_equal(ours.apply(params, x), theirs.apply(params, x))
  _compare(ours, theirs, x, jax.random.key(8), 2e-5)
  no_bias = jax.eval_shape(layers.Conv(12, kernel, padding=padding, use_bias=False).init,
                           jax.random.key(0), x)
  assert set(no_bias["params"]) == {"kernel"}


def test_conv_with_bfloat16_compute_matches_flax():
  x = normal_data(12, (2, 16, 16, 8))
  kw = dict(dtype=jnp.bfloat16, param_dtype=jnp.float32, bias_init=layers.torch_bias_init(72))
  ours, theirs = layers.Conv(12, (3, 3), **kw), nn.Conv(12, (3, 3), **kw)
  params = compiled_init(theirs, jax.random.key(0), x)
  y = ours.apply(params, x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y, np.float32),
                                np.asarray(theirs.apply(params, x), np.float32))


TRANSPOSED = [dict(kernel_size=(2, 2), strides=(2, 2), padding="VALID"),  # SegUnet up-conv
              dict(kernel_size=(4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                   transpose_kernel=True)]  # SparK decoder


@pytest.mark.parametrize("kw", TRANSPOSED)
def test_conv_transpose_matches_flax(kw, monkeypatch):
  """nn.ConvTranspose's parameters (initial values bit for bit on the SegUnet case) and forward
  bit for bit, gradients close; the kernel gradient is no longer a conv over the dilated input."""
  monkeypatch.setattr(layers, "ADJOINT_BACKENDS", (jax.default_backend(),))  # on any backend
  x = normal_data(13, (2, 6, 6, 8))
  ours, theirs = layers.ConvTranspose(12, **kw), nn.ConvTranspose(12, **kw)
  if not kw.get("transpose_kernel"):
    jax.tree.map(np.testing.assert_array_equal, compiled_init(ours, jax.random.key(0), x),
                 compiled_init(theirs, jax.random.key(0), x))
  params = _random_params(theirs, jax.random.key(7), x)
  np.testing.assert_array_equal(ours.apply(params, x), theirs.apply(params, x))
  _compare(ours, theirs, x, jax.random.key(8), 2e-5)
  # forward and kernel gradient (flax) vs the forward only (ours): the input gradient is strided
  assert (dilated_convs(theirs, params, x), dilated_convs(ours, params, x)) == (2, 1)


def test_conv_transpose_on_other_backends_is_differentiated_as_is(monkeypatch):
  """Only CPU programs take the adjoint kernel gradient: on a GPU it is unmeasured."""
  assert layers.ADJOINT_BACKENDS == ("cpu",)
  monkeypatch.setattr(layers, "ADJOINT_BACKENDS", ("no-such-backend",))
  x = normal_data(13, (2, 6, 6, 8))
  ours = layers.ConvTranspose(12, **TRANSPOSED[0])
  assert dilated_convs(ours, _random_params(ours, jax.random.key(7), x), x) == 2


def test_conv_transpose_with_bfloat16_compute_matches_flax():
  x = normal_data(15, (2, 6, 6, 8))
  kw = dict(TRANSPOSED[0], dtype=jnp.bfloat16, param_dtype=jnp.float32)
  ours, theirs = layers.ConvTranspose(12, **kw), nn.ConvTranspose(12, **kw)
  params = _random_params(theirs, jax.random.key(7), x)
  y = ours.apply(params, x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y, np.float32),
                                np.asarray(theirs.apply(params, x), np.float32))
  grads = jax.grad(lambda p: jnp.sum(jnp.square(ours.apply(p, x).astype(jnp.float32))))(params)
  assert jax.tree.map(lambda g: g.dtype, grads) == jax.tree.map(lambda p: p.dtype, params)


@pytest.mark.parametrize("masked", [False, True])
def test_batchnorm_matches_the_plain_formulas(masked):
  """The encoder's BatchNorm (train and eval) against jnp's one-step sums: values and gradients."""
  from sadm_jax.models.resnet import BatchNorm
  x = normal_data(13, (8, 32, 32, 64)) * 2.0 + 0.5
  mask = jnp.asarray(np.random.default_rng(14).random((8, 32, 32, 1)) > 0.3, jnp.float32)
  m = mask if masked else None
  bn = BatchNorm()
  variables = compiled_init(bn, jax.random.key(0), x, train=True, mask=m)
  params = {"scale": jnp.linspace(0.5, 1.5, 64), "bias": jnp.linspace(-1.0, 1.0, 64)}

  def plain(p, x):
    w = mask if masked else jnp.ones_like(x[..., :1])
    n = jnp.sum(w) * 1.0
    mean = jnp.sum(x * w, (0, 1, 2)) / n
    var = jnp.sum(jnp.square(x - mean) * w, (0, 1, 2)) / n
    y = (x - mean) * (p["scale"] * jax.lax.rsqrt(var + 1e-5)) + p["bias"]
    return y * w if masked else y

  def ours(p, x):
    y, _ = bn.apply({"params": p, "batch_stats": variables["batch_stats"]}, x, True, m,
                    mutable=["batch_stats"])
    return y

  def value_and_vjp(f, g):  # f(params, x) and its VJP of g, as one jitted program
    def both(p, x, g):
      y, pull = jax.vjp(f, p, x)
      return y, pull(g)
    return jax.jit(both)(params, x, g)

  g = normal_data(15, x.shape)
  got, ref = value_and_vjp(ours, g), value_and_vjp(plain, g)
  np.testing.assert_allclose(got[0], ref[0], atol=2e-5)
  for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(ref[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0,
                               atol=1e-4 * max(1.0, float(np.abs(b).max())))
  stats = {"mean": jnp.linspace(-0.2, 0.2, 64), "var": jnp.linspace(0.5, 2.0, 64)}
  y_eval = compiled_apply(bn, static_argnums=2)({"params": params, "batch_stats": stats}, x,
                                                 False, m)

  @jax.jit
  def plain_eval(p, s, x):
    return (x - s["mean"]) * (p["scale"] * jax.lax.rsqrt(s["var"] + 1e-5)) + p["bias"]

  ref_eval = plain_eval(params, stats, x)
  np.testing.assert_allclose(y_eval, ref_eval * mask if masked else ref_eval, atol=1e-5)


@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_groupnorm_affine_form_error_stays_small_for_a_large_mean(offset):
  """GroupNorm32 applies x·a + (bias − mean·a); with |mean| = 50·std its float32 error against a
  float64 GroupNorm stays at a few ulps of |mean·a| (8 allowed: the summation order, and so the
  last bits, depend on the CPU's vector width; 4.5 measured on an AVX-512 Xeon, under 2 on an
  AVX2 EPYC), far below what a one-pass variance E[x²] − E[x]² would give (≈ 160 ulps here)."""
  x = normal_data(6, (2, 8, 8, 16)) + offset
  gn = layers.GroupNorm32(4)
  params = _random_params(gn, jax.random.key(2), x)
  got = np.asarray(jax.jit(gn.apply)(params, x), np.float64)
  x64 = np.asarray(x, np.float64).reshape(2, 8, 8, 4, 4)
  mean = x64.mean(axis=(1, 2, 4), keepdims=True)
  var = ((x64 - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
  normed = ((x64 - mean) / np.sqrt(var + 1e-5)).reshape(2, 8, 8, 16)
  p = params["params"]
  want = normed * np.asarray(p["scale"], np.float64) + np.asarray(p["bias"], np.float64)
  mean_a = np.abs(mean * np.asarray(p["scale"], np.float64).reshape(4, 4) / np.sqrt(var + 1e-5))
  ulp = np.finfo(np.float32).eps * float(mean_a.max())
  np.testing.assert_allclose(got, want, rtol=0, atol=8 * ulp if offset else 2e-6)


@pytest.mark.parametrize("film_batch", [2, 1])  # per sample (the UNet's) or broadcast over it
def test_film_folded_into_groupnorm_matches_float64(film_batch):
  """group_normalise with `film` folds GroupNorm(x)·(1 + s) + t into one multiply-add per
  element; against the two steps in float64 it stays at float32 round-off."""
  x = normal_data(7, (2, 8, 8, 16)) * 2.0 + 0.5
  scale, bias = 1.0 + 0.1 * normal_data(8, (16,)), 0.1 * normal_data(9, (16,))
  s, t = 0.3 * normal_data(10, (film_batch, 1, 1, 16)), 0.3 * normal_data(11, (film_batch, 1, 1, 16))
  xg, mean, rstd = layers.group_statistics(x, 4)
  got = layers.group_normalise(xg, mean, rstd, scale, bias, x.shape, x.dtype, (s, t))
  plain = layers.group_normalise(xg, mean, rstd, scale, bias, x.shape, x.dtype)
  want = (np.asarray(plain, np.float64) * (1 + np.asarray(s, np.float64))
          + np.asarray(t, np.float64))
  assert got.shape == x.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=4e-6)
  half = layers.group_normalise(xg, mean, rstd, scale, bias, x.shape, jnp.bfloat16,
                                (s.astype(jnp.bfloat16), t.astype(jnp.bfloat16)))
  assert half.dtype == jnp.bfloat16  # the fold in float32, one rounding to the input's dtype
  np.testing.assert_allclose(np.asarray(half, np.float64), np.asarray(got, np.float64),
                             rtol=2.0 ** -8, atol=2e-2)


def test_sigmoid_and_silu_through_tanh_match_float64():
  x = np.concatenate([np.linspace(-40.0, 40.0, 20001), [0.0, -0.0, 1e-8, -1e-8]])
  x32 = jnp.asarray(x, jnp.float32)
  x64 = np.asarray(x32, np.float64)
  sig64 = 1.0 / (1.0 + np.exp(-x64))
  sig = np.asarray(layers.sigmoid(x32), np.float64)
  assert layers.sigmoid(x32).dtype == jnp.float32
  assert np.abs(sig - sig64).max() < 1.5e-7  # ≈ 2 ulp of [0.5, 1)
  assert sig.min() >= 0.0 and sig.max() <= 1.0 and layers.sigmoid(jnp.float32(0.0)) == 0.5
  silu = np.asarray(layers.silu(x32), np.float64)
  rel = lambda a, b: float((np.abs(a - b) / np.maximum(1.0, np.abs(x64))).max())
  assert rel(silu, x64 * sig64) < 2e-7  # jax.nn.silu's own error here: 1.3e-7
  # jax.nn.silu, the form it replaces: the same function up to float32 round-off
  assert rel(silu, np.asarray(jax.nn.silu(x32), np.float64)) < 3e-7
  grad = jax.vmap(jax.grad(layers.silu))(x32)  # σ(x)·(1 + x·(1 − σ(x)))
  assert rel(np.asarray(grad, np.float64), sig64 * (1 + x64 * (1 - sig64))) < 2e-7


def test_silu_in_bfloat16_is_computed_in_float32():
  # in bfloat16 arithmetic ½·tanh(x/2) + ½ would lose σ for negative x (σ(−5) 12 % low, 0 below
  # ≈ −7); widened first, the result is the float32 one rounded once to bfloat16: within the
  # bfloat16 unit round-off (2⁻⁸ relative) plus the float32 form's own absolute error (1.5e-7
  # for σ, above)
  x = jnp.asarray(np.linspace(-12.0, 12.0, 241), jnp.bfloat16)
  x64 = np.asarray(x, np.float64)
  sig64 = 1 / (1 + np.exp(-x64))
  for fn, ref, abs_err in ((layers.sigmoid, sig64, 1.5e-7),
                           (layers.silu, x64 * sig64, 2e-7 * np.maximum(1.0, np.abs(x64)))):
    got = fn(x)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32),
                                  np.asarray(fn(x.astype(jnp.float32)).astype(jnp.bfloat16),
                                             np.float32))
    err = np.abs(np.asarray(got, np.float64) - ref)
    assert (err <= 2.0 ** -8 * np.abs(ref) + abs_err).all()
  assert float(layers.sigmoid(jnp.bfloat16(-12.0))) > 0  # 6.1e-6, not rounded away


def test_film_of_another_rank_is_refused():
  x = normal_data(7, (2, 8, 8, 16))
  xg, mean, rstd = layers.group_statistics(x, 4)
  ones, zeros = jnp.ones((16,)), jnp.zeros((16,))
  with pytest.raises(ValueError, match="need the rank of x"):
    layers.group_normalise(xg, mean, rstd, ones, zeros, x.shape, x.dtype,
                           (jnp.zeros((2, 16)), jnp.zeros((2, 16))))
