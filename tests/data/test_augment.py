"""Tests for the torchio-style intensity augmentation (gamma, bias field, blur, ghosting)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from sadm_jax.data import augment as aug

_OFF = aug.IntensityAugConfig(p_gamma=0.0, p_bias=0.0, p_blur=0.0, p_ghosting=0.0)
_ALL = aug.IntensityAugConfig(p_gamma=1.0, p_bias=1.0, p_blur=1.0, p_ghosting=1.0)


def _brainish(shape, seed=0) -> np.ndarray:
  """A smooth ellipsoid with noise in [0, 1], float32 of `shape`."""
  rng = np.random.default_rng(seed)
  grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
  r2 = sum(g ** 2 / s for g, s in zip(grids, (0.6, 0.8, 0.9)[:len(shape)]))
  x = np.clip(1.0 - r2, 0.0, 1.0) * 0.8 + 0.1 * rng.random(shape) * (r2 < 1)
  return x.astype(np.float32)


@pytest.mark.parametrize("shape", [(96, 96, 50), (96, 96)])
def test_identity_when_all_probabilities_zero(shape):
  x = _brainish(shape)
  out = aug.augment(x, np.random.default_rng(0), _OFF)
  assert out.dtype == np.float32 and out.shape == x.shape
  np.testing.assert_array_equal(out, x)


def test_gamma_known_answer():
  x = np.array([0.0, 0.25, 0.5, 1.0, -0.25], np.float32)
  out = aug.apply_gamma(x, 2.0)
  np.testing.assert_allclose(out, [0.0, 0.0625, 0.25, 1.0, -0.0625], rtol=1e-6)
  assert out.dtype == np.float32
  np.testing.assert_allclose(aug.apply_gamma(np.float32([0.25, 0.81]), 0.5), [0.5, 0.9], rtol=1e-6)


def test_gamma_drawn_in_log_range():
  cfg = dataclasses.replace(_OFF, p_gamma=1.0)
  rng = np.random.default_rng(0)
  gammas = np.array([aug.sample_aug_params(2, rng, cfg).gamma for _ in range(2000)])
  assert gammas.min() >= np.exp(-0.3) and gammas.max() <= np.exp(0.3)
  assert abs(np.log(gammas).mean()) < 0.02  # log gamma ~ U(-0.3, 0.3), mean 0


def test_bias_monomial_counts_and_zero_field():
  assert len(aug.bias_monomials(3, 3)) == 20 and len(aug.bias_monomials(2, 3)) == 10
  assert all(sum(e) <= 3 for e in aug.bias_monomials(3, 3))
  np.testing.assert_array_equal(aug.bias_field((7, 5, 3), np.zeros(20), 3), 1.0)
  np.testing.assert_array_equal(aug.bias_field((9, 4), np.zeros(10), 3), 1.0)


def test_bias_field_known_polynomial():
  exps = aug.bias_monomials(2, 3)
  c = np.zeros(len(exps))
  c[exps.index((0, 0))] = 0.1
  c[exps.index((1, 0))] = 0.5
  c[exps.index((1, 2))] = -0.3
  field = aug.bias_field((5, 3), c, 3)
  u, v = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 3), indexing="ij")
  np.testing.assert_allclose(field, np.exp(0.1 + 0.5 * u - 0.3 * u * v ** 2), rtol=1e-6)
  with pytest.raises(ValueError):
    aug.bias_field((5, 3), np.zeros(20), 3)


def test_blur_keeps_constant_and_smooths_noise():
  const = np.full((32, 32, 12), 0.7, np.float32)
  np.testing.assert_allclose(aug.apply_blur(const, (1.5, 0.7, 2.0)), 0.7, rtol=1e-6)
  noise = np.random.default_rng(0).random((64, 64)).astype(np.float32)
  blurred = aug.apply_blur(noise, (1.5, 1.5))
  assert blurred.dtype == np.float32
  assert abs(blurred.mean() - noise.mean()) < 1e-3  # reflect boundary preserves the mean closely
  assert blurred.var() < 0.1 * noise.var()
  np.testing.assert_array_equal(aug.apply_blur(noise, (0.0, 0.0)), noise)


def test_ghosting_creates_shifted_copies():
  # A single bright square; ghosts appear at shifts of multiples of n / num_ghosts along the axis.
  x = np.zeros((64, 64), np.float32)
  x[28:36, 28:36] = 1.0
  out = aug.apply_ghosting(x, num_ghosts=4, axis=0, intensity=1.0, restore=None)
  assert out.dtype == np.float32 and np.isfinite(out).all()
  shifted = np.abs(out[12:20, 28:36]).mean()  # the square shifted by 64 / 4 = 16 rows
  off_axis = np.abs(out[28:36, 4:12]).mean()  # shifted along the other axis: no ghost
  assert shifted > 0.1 and off_axis < 1e-5
  # the energy along the other axis is untouched: column profile outside the square stays zero
  np.testing.assert_allclose(out[:, :20], 0.0, atol=1e-5)
  # intensity 0 / no ghosts: identity
  np.testing.assert_array_equal(aug.apply_ghosting(x, 4, 0, 0.0), x)


def test_ghosting_matches_direct_nd_fft():
  """The 1-D real-FFT shortcut equals torchio's full N-D complex formulation."""
  x = np.random.default_rng(0).random((24, 18, 10)).astype(np.float32)
  for axis, num, restore in [(0, 4, None), (1, 7, 0.02), (2, 5, 0.3)]:
    spec = np.moveaxis(np.fft.fftshift(np.fft.fftn(x.astype(np.float64))), axis, 0)
    w = aug.ghosting_weights(x.shape[axis], num, 0.8, restore)
    spec = np.moveaxis(spec * w.reshape(-1, 1, 1), 0, axis)
    ref = np.real(np.fft.ifftn(np.fft.ifftshift(spec)))
    np.testing.assert_allclose(aug.apply_ghosting(x, num, axis, 0.8, restore), ref, atol=1e-5)


def test_ghosting_weights_restore_center():
  # planes 0, 4, ..., 92 scaled; the central 2 (47, 48) restored
  w = aug.ghosting_weights(96, 4, 0.75, restore=0.02)
  assert w[0] == 0.25 and w[44] == 0.25 and w[48] == 1.0 and w[47] == 1.0 and w[1] == 1.0
  w = aug.ghosting_weights(50, 5, 1.0, restore=None)
  assert w[25] == 1.0 and w[20] == 0.0 and (w == 0.0).sum() == 9


@pytest.mark.parametrize("shape", [(96, 96, 50), (96, 96)])
def test_augment_deterministic_and_seed_dependent(shape):
  x = _brainish(shape)
  a = aug.augment(x, np.random.default_rng(7), _ALL)
  b = aug.augment(x, np.random.default_rng(7), _ALL)
  c = aug.augment(x, np.random.default_rng(8), _ALL)
  assert a.dtype == np.float32 and a.shape == x.shape and np.isfinite(a).all()
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert not np.array_equal(a, x)


def test_transform_frequencies_match_probabilities():
  cfg = aug.IntensityAugConfig()
  rng = np.random.default_rng(0)
  n = 4000
  draws = [aug.sample_aug_params(3, rng, cfg) for _ in range(n)]
  for field, p in [("gamma", cfg.p_gamma), ("bias_coeffs", cfg.p_bias),
                   ("blur_sigma", cfg.p_blur), ("ghosting", cfg.p_ghosting)]:
    freq = np.mean([getattr(d, field) is not None for d in draws])
    assert abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n), (field, freq, p)
  ghosts = [d.ghosting for d in draws if d.ghosting is not None]
  nums = {g[0] for g in ghosts}
  axes = np.array([g[1] for g in ghosts])
  assert nums == set(range(4, 11)) and set(axes) == {0, 1, 2}
  assert all(0.5 <= g[2] <= 1.0 for g in ghosts)
  sigmas = np.array([d.blur_sigma for d in draws if d.blur_sigma is not None])
  assert sigmas.shape[1] == 3 and sigmas.min() >= 0 and sigmas.max() <= 2
  coeffs = np.array([d.bias_coeffs for d in draws if d.bias_coeffs is not None])
  assert coeffs.shape[1] == 20 and np.abs(coeffs).max() <= 0.5
  # 2-D: in-plane axes only, 10 bias coefficients, 2 sigmas
  d2 = [aug.sample_aug_params(2, rng, _ALL) for _ in range(200)]
  assert {d.ghosting[1] for d in d2} == {0, 1}
  assert all(len(d.bias_coeffs) == 10 and len(d.blur_sigma) == 2 for d in d2)


def test_rejects_bad_input_and_config():
  with pytest.raises(ValueError):
    aug.augment(np.zeros((4,), np.float32), np.random.default_rng(0))
  with pytest.raises(ValueError):
    aug.IntensityAugConfig(p_gamma=1.5)
  with pytest.raises(ValueError):
    aug.IntensityAugConfig(log_gamma=(0.3, -0.3))


def test_timing_report():
  """Prints the mean time of `augment` (default probabilities) on a volume and on a slice."""
  rng = np.random.default_rng(0)
  for shape, reps in [((96, 96, 50), 30), ((96, 96), 300)]:
    x = _brainish(shape)
    for cfg, name in [(aug.IntensityAugConfig(), "default p"), (_ALL, "all on")]:
      t0 = time.perf_counter()
      for _ in range(reps):
        aug.augment(x, rng, cfg)
      ms = (time.perf_counter() - t0) / reps * 1e3
      print(f"augment {shape} {name}: {ms:.2f} ms")
      assert ms < 2000
