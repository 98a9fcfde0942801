"""OpenSimplex 2-D noise: hand-checked values, fractal statistics and the batch noise sampler."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sadm_jax.diffusion import simplex
from sadm_jax.diffusion.noise import sample_noise

IDENTITY = jnp.arange(256, dtype=jnp.int32)
SQ = (math.sqrt(3.0) - 1.0) / 2.0


def _hand_vertex(dx: float, dy: float, g: tuple[float, float]) -> float:
  attn = max(2.0 - dx * dx - dy * dy, 0.0)
  return attn ** 4 * (g[0] * dx + g[1] * dy)


def test_noise2_zero_on_lattice_vertices():
  # At the origin only the (0,0) vertex is in range and its offset is 0; the (1,0), (0,1) and extra
  # vertices sit at squared distance exactly 2 (attenuation 0). Holds for any permutation.
  assert float(simplex.noise2(0.0, 0.0, IDENTITY)) == pytest.approx(0.0, abs=1e-9)
  perm = simplex.make_permutation(jax.random.key(3))
  a, b = jnp.meshgrid(jnp.arange(-3.0, 4.0), jnp.arange(-3.0, 4.0))
  x, y = a + (a + b) * SQ, b + (a + b) * SQ  # input-space positions of lattice vertices
  np.testing.assert_allclose(np.asarray(simplex.noise2(x, y, perm)), 0.0, atol=1e-5)


def test_noise2_hand_computed_value():
  # (0.5, 0) with the identity permutation: stretched (0.394, −0.106) -> rhombus origin (0, −1),
  # offset d0 = (0.5 + S, 1 + S), upper triangle with extra vertex (0, +2). Every hash is 0 or 1,
  # so all four vertices use gradient (5, 2).
  g = (5.0, 2.0)
  expected = (_hand_vertex(-0.5, 1.0, g)  # vertex (1, −1)
              + _hand_vertex(0.5, 0.0, g)  # vertex (0, 0)
              + _hand_vertex(0.5 - SQ, -1.0 - SQ, g)  # extra vertex (0, 1)
              + _hand_vertex(-0.5 - SQ, -SQ, g)) / 47.0  # base vertex (1, 0)
  assert expected == pytest.approx(0.32841963, abs=1e-7)
  assert float(simplex.noise2(0.5, 0.0, IDENTITY)) == pytest.approx(expected, abs=1e-6)


def test_noise2_bounded_and_continuous():
  perm = simplex.make_permutation(jax.random.key(0))
  x, y = jax.random.uniform(jax.random.key(1), (2, 200_000), minval=-100.0, maxval=100.0)
  values = np.asarray(simplex.noise2(x, y, perm))
  assert np.all(np.abs(values) <= 1.0)
  assert 0.3 < values.std() < 0.45 and np.abs(values).max() > 0.6
  # Lipschitz-like: a 1e-3 step changes the value by far less than the range.
  step = np.asarray(simplex.noise2(x + 1e-3, y, perm)) - values
  assert np.abs(step).max() < 1e-2


def test_gradient_decoding_matches_octagon_table():
  # A constant "table" makes the hash equal to that constant: 2g selects gradient g.
  for g, (gx, gy) in enumerate(simplex.GRADIENTS_2D):
    table = jnp.full((256,), 2 * g, jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    along_x = simplex._vertex(table, 0, zero, zero, jnp.float32(1.0), jnp.float32(0.0))
    along_y = simplex._vertex(table, 0, zero, zero, jnp.float32(0.0), jnp.float32(1.0))
    assert (float(along_x), float(along_y)) == (gx, gy)  # attenuation (2 − 1)⁴ = 1


def test_make_permutation_is_a_permutation():
  perms = np.asarray(simplex.make_permutation(jax.random.key(5), 4))
  assert perms.shape == (4, 256) and perms.dtype == np.int32
  for p in perms:
    np.testing.assert_array_equal(np.sort(p), np.arange(256))
  assert len({tuple(p) for p in perms}) == 4


def test_fractal_deterministic_shape_dtype_and_key_dependence():
  a = simplex.simplex_fractal(jax.random.key(0), (40, 56))
  b = simplex.simplex_fractal(jax.random.key(0), (40, 56))
  c = simplex.simplex_fractal(jax.random.key(1), (40, 56))
  assert a.shape == (40, 56) and a.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(a) - np.asarray(c)).mean() > 0.1
  legacy = simplex.simplex_fractal(jax.random.PRNGKey(0), (40, 56))  # raw uint32 keys work too
  assert legacy.shape == (40, 56) and np.isfinite(np.asarray(legacy)).all()
  # Field n of the batched generator is the single-key field.
  keys = jax.random.split(jax.random.key(7), 3)
  fields = simplex.simplex_fields(keys, (40, 56))
  np.testing.assert_allclose(np.asarray(fields[2]),
                             np.asarray(simplex.simplex_fractal(keys[2], (40, 56))), atol=1e-6)


@pytest.fixture(scope="module")
def fields() -> np.ndarray:
  return np.asarray(sample_noise(jax.random.key(2024), (128, 96, 96, 1)))[..., 0]


def test_fractal_statistics(fields):
  # Reference (500 fields of 96×96): per-field std ≈ 0.54, pooled ≈ 0.59, range ≈ ±2.4; the
  # decorrelated default measures 0.57 / 0.595.
  per_field_std = fields.std(axis=(1, 2))
  assert abs(fields.mean()) < 0.05
  assert 0.50 < per_field_std.mean() < 0.62
  assert np.all((per_field_std > 0.3) & (per_field_std < 0.9))
  assert 0.55 < fields.std() < 0.64
  assert 1.5 < np.abs(fields).max() < 2.7
  assert simplex.fractal_std() == pytest.approx(0.594, abs=0.005)


def test_fractal_is_spatially_smooth(fields):
  horiz = np.corrcoef(fields[:, :, :-1].ravel(), fields[:, :, 1:].ravel())[0, 1]
  vert = np.corrcoef(fields[:, :-1].ravel(), fields[:, 1:].ravel())[0, 1]
  far = np.corrcoef(fields[:, :, :-48].ravel(), fields[:, :, 48:].ravel())[0, 1]
  assert horiz > 0.9 and vert > 0.9
  assert far < 0.5


def test_aligned_octaves_reproduce_reference_layout():
  f = np.asarray(sample_noise(jax.random.key(1), (64, 96, 96, 1), aligned_octaves=True))[..., 0]
  np.testing.assert_allclose(f[:, 0, 0], 0.0, atol=1e-5)  # every octave has a vertex at (0, 0)
  assert 0.48 < f.std(axis=(1, 2)).mean() < 0.60


def test_aligned_octaves_share_one_permutation_without_offsets():
  # Q4 faithful layout: octave k is octave 0 sampled at 2^k x the coordinates (same permutation,
  # no offset), so (2-octave field − 1-octave field)[i, j] = persistence · (1-octave field)[2i, 2j].
  # The default layout (own permutation and offset per octave) breaks this.
  key, shape = jax.random.key(7), (2, 32, 32, 1)
  for aligned in (True, False):
    f1, f2 = (np.asarray(sample_noise(key, shape, octaves=n, persistence=0.8, frequency=8.0,
                                      aligned_octaves=aligned))[..., 0] for n in (1, 2))
    second = f2 - f1
    if aligned:
      np.testing.assert_allclose(second[:, :16, :16], 0.8 * f1[:, ::2, ::2], atol=1e-5)
    else:
      assert np.abs(second[:, :16, :16] - 0.8 * f1[:, ::2, ::2]).max() > 0.05


def test_sample_noise_independent_vs_shared():
  shape = (4, 32, 32, 1)
  indep = np.asarray(sample_noise(jax.random.key(0), shape))
  shared = np.asarray(sample_noise(jax.random.key(0), shape, shared=True))
  assert indep.shape == shared.shape == shape
  assert indep.dtype == shared.dtype == np.float32
  for b in range(1, 4):
    np.testing.assert_array_equal(shared[b], shared[0])
    assert np.abs(indep[b] - indep[0]).mean() > 0.1
  np.testing.assert_array_equal(indep, np.asarray(sample_noise(jax.random.key(0), shape)))
  assert np.abs(indep - np.asarray(sample_noise(jax.random.key(1), shape))).mean() > 0.1


def test_sample_noise_channels_are_independent():
  noise = np.asarray(sample_noise(jax.random.key(0), (2, 16, 16, 3), shared=True))
  assert noise.shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(noise[0], noise[1])
  assert np.abs(noise[..., 0] - noise[..., 1]).mean() > 0.05


def test_sample_noise_under_jit_and_normalised():
  @jax.jit
  def draw(key):
    return sample_noise(key, (64, 96, 96, 1), normalise=True)

  noise = np.asarray(draw(jax.random.key(11)))
  assert noise.shape == (64, 96, 96, 1) and noise.dtype == np.float32
  assert noise.std() == pytest.approx(1.0, abs=0.08)
  np.testing.assert_allclose(noise, np.asarray(draw(jax.random.key(11))))


def test_sample_noise_gaussian():
  noise = np.asarray(sample_noise(jax.random.key(0), (8, 32, 32, 1), kind="gaussian"))
  assert noise.dtype == np.float32
  assert noise.std() == pytest.approx(1.0, abs=0.03) and abs(noise.mean()) < 0.03
  shared = np.asarray(sample_noise(jax.random.key(0), (8, 32, 32, 1), kind="gaussian", shared=True))
  np.testing.assert_array_equal(shared[3], shared[0])
  with pytest.raises(ValueError):
    sample_noise(jax.random.key(0), (8, 32, 32, 1), kind="perlin")
