"""Anomaly maps: SSIM against a SciPy float64 reference, median backends against SciPy, combinations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sadm_jax.evaluate import anomaly_map as am

SHAPE = (16, 14, 12)  # one shape for all jitted calls: one compilation


def _pair(seed=0):
  rng = np.random.default_rng(seed)
  x = ndimage.gaussian_filter(rng.random(SHAPE), 1.0).astype(np.float32)
  y = np.clip(x + 0.05 * rng.standard_normal(SHAPE), 0, 1).astype(np.float32)
  return x, y


def _brain():
  m = np.zeros(SHAPE, bool)
  m[2:-2, 3:-2, 1:-2] = True
  return m


def _ssim_reference(x, y, data_range=None, sigma=1.0, k1=0.01, k2=0.03):
  """float64 SciPy SSIM: separable Gaussian with torch-style reflection (SciPy's 'mirror')."""
  x, y = x.astype(np.float64), y.astype(np.float64)
  taps = am.gaussian_taps(sigma)

  def blur(v):
    for axis in range(3):
      v = ndimage.correlate1d(v, taps, axis=axis, mode="mirror")
    return v

  L = max(np.ptp(x), np.ptp(y)) if data_range is None else data_range
  c1, c2 = (k1 * L) ** 2, (k2 * L) ** 2
  mx, my = blur(x), blur(y)
  vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
  return (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def test_gaussian_taps():
  g = am.gaussian_taps(1.0)
  assert g.shape == (9,) and g.sum() == pytest.approx(1.0)
  np.testing.assert_allclose(g, g[::-1])
  assert g[4] / g[5] == pytest.approx(np.exp(0.5))


def test_ssim_identical_is_one():
  x, _ = _pair()
  np.testing.assert_allclose(np.asarray(am.ssim_3d_map(x, x)), 1.0, atol=1e-5)


def test_ssim_matches_scipy_reference():
  x, y = _pair(1)
  got = np.asarray(am.ssim_3d_map(y, x))
  assert got.shape == SHAPE
  np.testing.assert_allclose(got, _ssim_reference(y, x), atol=2e-5)
  got_fixed = np.asarray(am.ssim_3d_map(y, x, data_range=am.FIXED_DATA_RANGE))
  np.testing.assert_allclose(got_fixed, _ssim_reference(y, x, data_range=1.0), atol=2e-5)


def test_ssim_constant_shift_is_luminance_term():
  # y = x + c: the contrast-structure term is exactly 1, so SSIM = (2μ(μ+c)+C1)/(μ²+(μ+c)²+C1)
  x, _ = _pair(2)
  c = 0.2
  mu = x.astype(np.float64)
  for axis in range(3):
    mu = ndimage.correlate1d(mu, am.gaussian_taps(1.0), axis=axis, mode="mirror")
  c1 = (0.01 * np.ptp(x)) ** 2
  want = (2 * mu * (mu + c) + c1) / (mu ** 2 + (mu + c) ** 2 + c1)
  np.testing.assert_allclose(np.asarray(am.ssim_3d_map(x, x + np.float32(c))), want, atol=2e-5)


def test_ssim_constant_volumes_hand():
  x = np.full(SHAPE, 0.25, np.float32)
  y = np.full(SHAPE, 0.75, np.float32)
  want = (2 * 0.25 * 0.75 + 1e-4) / (0.25 ** 2 + 0.75 ** 2 + 1e-4)
  np.testing.assert_allclose(np.asarray(am.ssim_3d_map(x, y, data_range=1.0)), want, rtol=1e-5)
  # zero data range and identical constants: 0/0 defined as 1
  np.testing.assert_allclose(np.asarray(am.ssim_3d_map(x, x)), 1.0)


def test_residual_modes():
  x, y = _pair(3)
  np.testing.assert_allclose(np.asarray(am.residual_map(y, x, "l1")), np.abs(x - y), atol=1e-7)
  np.testing.assert_allclose(np.asarray(am.residual_map(y, x, "l2")), (x - y) ** 2, atol=1e-7)
  np.testing.assert_allclose(np.asarray(am.residual_map(y, x)),
                             1 - _ssim_reference(y, x), atol=2e-5)
  with pytest.raises(ValueError):
    am.residual_map(y, x, "l3")


@pytest.mark.parametrize("backend", ["numpy", "scipy", "jax"])
def test_median_backends_identical_to_scipy(backend):
  rng = np.random.default_rng(4)
  v = np.round(rng.random(SHAPE), 1).astype(np.float32)     # many ties
  want = ndimage.median_filter(v, size=5)
  np.testing.assert_array_equal(am.median_filter_3d(v, 5, backend=backend), want)
  where = _brain()
  np.testing.assert_array_equal(am.median_filter_3d(v, 5, backend=backend, where=where),
                                np.where(where, want, 0))
  np.testing.assert_array_equal(am.median_filter_3d(v, 3, backend=backend),
                                ndimage.median_filter(v, size=3))


def test_median_rejects_even_size():
  with pytest.raises(ValueError):
    am.median_filter_3d(np.zeros(SHAPE), 4)


def test_anomaly_map_combinations():
  x, y = _pair(5)
  m = _brain()
  seg = np.random.default_rng(6).random(SHAPE).astype(np.float32)
  r = (1 - _ssim_reference(y, x)) * m
  r_med = ndimage.median_filter(r.astype(np.float32), size=5) * m
  res = am.anomaly_map(y, x, m, combination="residual")
  np.testing.assert_allclose(res, r_med, atol=3e-5)
  np.testing.assert_array_equal(am.anomaly_map(y, x, m, combination="residual_only"), res)
  seg_only = am.anomaly_map(y, x, m, seg, combination="segmentation")
  np.testing.assert_array_equal(seg_only, seg * m)
  total = am.anomaly_map(y, x, m, seg)                       # default: 'sum'
  np.testing.assert_allclose(total, res + seg * m, atol=1e-6)
  assert np.all(total[~m] == 0)
  w = am.anomaly_map(y, x, m, seg, combination="weighted", lam=0.3)
  np.testing.assert_allclose(w, 0.3 * res + 0.7 * seg * m, atol=1e-6)
  half = am.anomaly_map(y, x, m, seg, combination="weighted", lam=0.5)
  np.testing.assert_allclose(2 * half, total, atol=1e-6)     # λ = 0.5 is the sum up to a factor 2
  assert total.dtype == np.float32 and total.shape == SHAPE


def test_anomaly_map_needs_segmentation():
  x, y = _pair(7)
  for combination in ("sum", "segmentation", "weighted"):
    with pytest.raises(ValueError, match="seg_prob"):
      am.anomaly_map(y, x, _brain(), None, combination=combination)
  with pytest.raises(ValueError, match="combination"):
    am.anomaly_map(y, x, _brain(), None, combination="max")


def test_anomaly_map_l1_and_no_median():
  x, y = _pair(8)
  m = _brain()
  # l1 is median-filtered unmasked, then masked (as in the reference)
  want = ndimage.median_filter(np.abs(x - y), size=5) * m
  np.testing.assert_allclose(am.anomaly_map(y, x, m, combination="residual", residual_mode="l1"),
                             want, atol=1e-7)
  raw = am.anomaly_map(y, x, m, combination="residual", median_size=0)
  np.testing.assert_allclose(raw, (1 - _ssim_reference(y, x)) * m, atol=3e-5)


def test_erode_brain_mask_per_slice():
  m = np.zeros((7, 7, 3), bool)
  m[1:6, 1:6, :] = True
  e = am.erode_brain_mask(m, 1)
  want = np.zeros_like(m)
  want[2:5, 2:5, :] = True                                   # every axial slice shrinks, D does not
  np.testing.assert_array_equal(e, want)
  np.testing.assert_array_equal(am.erode_brain_mask(m, 0), m)


def test_filter_components():
  b = np.zeros((6, 6, 6), bool)
  b[0, 0, 0] = True                                          # size 1
  b[3:5, 3:5, 3] = True                                      # size 4
  b[2, 2, 2] = True                                          # diagonal neighbour of the 4-block
  np.testing.assert_array_equal(am.filter_components(b, 2, connectivity=26), b & ~(
      np.arange(216).reshape(b.shape) == 0))
  kept6 = am.filter_components(b, 2, connectivity=6)
  assert kept6.sum() == 4 and not kept6[2, 2, 2]
  np.testing.assert_array_equal(am.filter_components(b, 0), b)


def test_anomaly_map_component_filter():
  x, y = _pair(9)
  m = _brain()
  seg = np.zeros(SHAPE, np.float32)
  seg[5:9, 5:9, 4:8] = 0.9                                   # 64-voxel blob
  seg[12, 3, 2] = 0.9                                        # single voxel
  a = am.anomaly_map(y, x, m, seg, combination="segmentation", min_component_size=2,
                     component_threshold=0.5)
  assert a[12, 3, 2] == 0 and np.all(a[5:9, 5:9, 4:8] == np.float32(0.9))
