"""Tests for sadm_jax.data.curvature: the curvature flow against hand-computed updates."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sadm_jax.data.curvature import curvature_flow


def test_curvature_flow_keeps_constant_and_ramps():
  np.testing.assert_array_equal(curvature_flow(np.full((6, 7, 5), 3.5)), 3.5)
  i = np.arange(9.0)[:, None, None] * np.ones((9, 8, 7))
  np.testing.assert_allclose(curvature_flow(i), i, atol=1e-6)  # everywhere, boundary included
  oblique = np.add.outer(np.add.outer(0.5 * np.arange(12.0), 2.0 * np.arange(11.0)),
                         -np.arange(10.0))
  out = curvature_flow(oblique, iterations=3)
  # Neumann boundaries bend the isophotes near the border; 3 iterations reach 3 voxels inward.
  np.testing.assert_allclose(out[4:-4, 4:-4, 4:-4], oblique[4:-4, 4:-4, 4:-4], atol=1e-5)


def test_curvature_flow_hand_computed_update():
  x = np.arange(-3.0, 4.0)[:, None, None] * np.ones((7, 7, 7))
  y = np.arange(-3.0, 4.0)[None, :, None] * np.ones((7, 7, 7))
  inner = (slice(1, -1),) * 3
  # I = x² + y: I_x = 2x, I_y = 1, I_xx = 2 → κ|∇I| = I_y² I_xx / |∇I|² = 2 / (4x² + 1).
  image = x**2 + y
  out = curvature_flow(image, time_step=0.125, iterations=1)
  np.testing.assert_allclose(out[inner], (image + 0.125 * 2 / (4 * x**2 + 1))[inner], atol=1e-5)
  # Spacing 2 mm along i: I_x = x, I_xx = 1/2 → κ|∇I| = 0.5 / (x² + 1).
  out = curvature_flow(image, time_step=0.125, iterations=1, spacing=(2.0, 1.0, 1.0))
  np.testing.assert_allclose(out[inner], (image + 0.125 * 0.5 / (x**2 + 1))[inner], atol=1e-5)
  # I = xy + x + y: I_x = y + 1, I_y = x + 1, I_xy = 1 → κ|∇I| = −2 I_x I_y / (I_x² + I_y²).
  image = x * y + x + y
  speed = -2 * (x + 1) * (y + 1) / np.maximum((x + 1)**2 + (y + 1)**2, 1e-300)
  speed[(x == -1) & (y == -1)] = 0.0  # zero gradient → ITK returns no update
  out = curvature_flow(image, time_step=0.125, iterations=1)
  np.testing.assert_allclose(out[inner], (image + 0.125 * speed)[inner], atol=1e-5)


def test_curvature_flow_denoises_but_keeps_edges_sharper_than_gaussian():
  clean = np.zeros((24, 24, 24))
  clean[..., 12:] = 1.0  # planar step edge between k = 11 and k = 12
  noisy = clean + np.random.default_rng(0).normal(scale=0.1, size=clean.shape)

  def noise_and_contrast(v):
    flat = np.concatenate([v[4:-4, 4:-4, 3:8].ravel(), v[4:-4, 4:-4, 16:21].ravel() - 1.0])
    return flat.var(), (v[4:-4, 4:-4, 12] - v[4:-4, 4:-4, 11]).mean()

  noise0, _ = noise_and_contrast(noisy)
  noise_cf, contrast_cf = noise_and_contrast(curvature_flow(noisy).astype(np.float64))
  assert noise_cf < 0.2 * noise0 and contrast_cf > 0.95
  # The Gaussian blur that removes as much noise flattens the edge far more.
  for sigma in np.arange(0.3, 2.0, 0.05):
    noise_g, contrast_g = noise_and_contrast(ndimage.gaussian_filter(noisy, sigma, mode="nearest"))
    if noise_g <= noise_cf:
      break
  assert contrast_g < contrast_cf - 0.2


def test_curvature_flow_skipping_flat_background_is_exact():
  framed = np.zeros((30, 26, 24))
  framed[8:22, 7:19, 7:17] = np.random.default_rng(1).normal(size=(14, 12, 10))
  full = framed.copy()
  full[0, 0, 0] = 5.0  # far corner: forces the flow to run on the whole volume
  got, reference = curvature_flow(framed), curvature_flow(full)
  np.testing.assert_array_equal(got[5:, 5:, 5:], reference[5:, 5:, 5:])
  np.testing.assert_array_equal(got[:3], 0.0)
