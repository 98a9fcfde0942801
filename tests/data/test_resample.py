"""Tests for sadm_jax.data.resample: ×2 downsampling, isotropic resampling and the affines."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sadm_jax.data import resample as rs
from tests.data import fake_data


def test_working_affine_maps_output_voxel_to_input_world_point():
  affine = fake_data.rotation_affine() @ np.diag([1.0, 1.2, 0.9, 1.0])
  offset = np.array([1, -1, 3])
  work = rs.working_affine(affine, offset, factor=2)
  for k in [(0, 0, 0), (5, 2, 7), (95, 95, 49)]:
    src = 2 * np.array(k) + 0.5 + offset
    np.testing.assert_allclose(work @ np.r_[k, 1.0], affine @ np.r_[src, 1.0], atol=1e-12)


def test_downsample_shapes_and_constant():
  vol = np.full((7, 8, 5), 0.3)
  for order in (0, 3):
    out = rs.downsample(vol, 2, order)
    assert out.shape == (4, 4, 3)
    np.testing.assert_allclose(out, 0.3, atol=1e-6)
  assert rs.downsample(vol, 2, 3).dtype == np.float32
  assert rs.downsample(vol.astype(np.uint8), 2, 0).dtype == np.uint8


def test_downsample_cubic_ramp_hits_half_voxel_positions():
  ramp = np.arange(48.0)[:, None, None] * np.ones((48, 4, 4))
  out = rs.downsample(ramp, 2, 3)[:, 1, 1]
  k = np.arange(24)
  interior = slice(5, 19)  # mirror boundary effects decay as 0.268^distance
  np.testing.assert_allclose(out[interior], (2 * k + 0.5)[interior], atol=1e-4)


def test_downsample_cubic_matches_scipy_map_coordinates():
  vol = np.random.default_rng(2).normal(size=(9, 8, 7))
  grid = np.meshgrid(*[2 * np.arange(-(-n // 2)) + 0.5 for n in vol.shape], indexing="ij")
  expected = ndimage.map_coordinates(vol, grid, order=3, mode="mirror", prefilter=True)
  np.testing.assert_allclose(rs.downsample(vol, 2, 3), expected, atol=1e-5)


def test_downsample_nearest_takes_index_2k_plus_1():
  i, j, k = np.indices((8, 6, 4))
  labels = i * 10000 + j * 100 + k
  out = rs.downsample(labels, 2, 0)
  a, b, c = np.indices(out.shape)
  np.testing.assert_array_equal(out, (2 * a + 1) * 10000 + (2 * b + 1) * 100 + (2 * c + 1))


def test_resample_to_isotropic_keeps_field_of_view():
  affine = fake_data.rotation_affine() @ np.diag([1.0, 1.0, 2.0, 1.0])
  shape = (6, 5, 24)
  new = rs.isotropic_affine(affine, shape)
  np.testing.assert_allclose(rs.affine_spacing(new), (1.0, 1.0, 1.0), atol=1e-12)
  corner_lo, corner_hi = np.r_[-0.5, -0.5, -0.5, 1], np.r_[5.5, 4.5, 23.5, 1]
  np.testing.assert_allclose(new @ corner_lo, affine @ corner_lo, atol=1e-12)
  np.testing.assert_allclose(new @ np.r_[5.5, 4.5, 47.5, 1], affine @ corner_hi, atol=1e-12)
  # A ramp along k is sampled at the old continuous index of each new voxel (interior).
  vol = np.broadcast_to(3.0 * np.arange(24.0), shape)
  out = rs.resample_to_isotropic(vol, (1.0, 1.0, 2.0), order=3)
  assert out.shape == (6, 5, 48)
  new_k = np.arange(48.0)
  old_k = np.linalg.solve(affine, new @ np.c_[np.zeros((48, 2)), new_k, np.ones(48)].T)[2]
  np.testing.assert_allclose(old_k, 0.5 * new_k - 0.25, atol=1e-12)
  np.testing.assert_allclose(out[2, 2, 16:32], 3.0 * old_k[16:32], atol=1e-3)
  labels = rs.resample_to_isotropic(vol.astype(np.int16), (1.0, 1.0, 2.0), order=0)
  np.testing.assert_array_equal(labels[0, 0], 3 * np.repeat(np.arange(24), 2))
