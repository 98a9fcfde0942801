"""Tests for sadm_jax.data.preprocess: hand-computed answers on tiny volumes, one real-size run."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from sadm_jax.data import preprocess as pp
from sadm_jax.data.errors import DataError

SMALL = pp.PreprocessConfig(crop_size=(32, 32, 20))


def _rotation_affine() -> np.ndarray:
  """A 1-mm affine with a rotation about k and a translation (voxel → world)."""
  c, s = np.cos(0.3), np.sin(0.3)
  return np.array([[c, -s, 0.0, -20.0], [s, c, 0.0, 7.5], [0.0, 0.0, 1.0, 3.0], [0, 0, 0, 1.0]])


# --------------------------------------------------------------------------- config


def test_config_key_is_stable_and_sensitive():
  key = pp.PreprocessConfig().key()
  assert len(key) == 16 and int(key, 16) >= 0
  assert pp.PreprocessConfig().key() == key
  assert pp.PreprocessConfig(crop_size=[192, 192, 100], percentiles=[1, 99]).key() == key
  assert pp.PreprocessConfig(curvature_flow=False).key() != key
  assert pp.PreprocessConfig(percentiles=(0.5, 99.5)).key() != key
  with pytest.raises(ValueError):
    pp.PreprocessConfig(percentiles=(99.0, 1.0))
  with pytest.raises(ValueError):
    pp.PreprocessConfig(crop_size=(192, 192))


# --------------------------------------------------------------------------- crop / pad


@pytest.mark.parametrize("n, target, offset, first, last", [
    (193, 192, 1, 1, 192),  # odd crop: the extra voxel is removed at the start
    (101, 100, 1, 1, 100),
    (190, 192, -1, None, None),  # even pad: one zero on each side
    (191, 192, -1, None, 190),  # odd pad: the extra zero goes to the start
    (100, 100, 0, 0, 99),
])
def test_crop_or_pad_single_axis(n, target, offset, first, last):
  for axis in range(3):
    shape, tshape = [2, 2, 2], [2, 2, 2]
    shape[axis], tshape[axis] = n, target
    values = np.arange(1, n + 1).reshape([-1 if a == axis else 1 for a in range(3)])
    vol = np.broadcast_to(values, shape)  # value = input index + 1 along `axis`
    out, o = pp.crop_or_pad(vol, tshape)
    assert out.shape == tuple(tshape) and out.dtype == vol.dtype
    assert o[axis] == offset and o.sum() == offset
    line = np.moveaxis(out, axis, 0)[:, 0, 0]
    assert line[0] == (0 if first is None else first + 1)
    assert line[-1] == (0 if last is None else last + 1)
    inside = line > 0
    np.testing.assert_array_equal(line[inside] - 1, np.flatnonzero(inside) + o[axis])


def test_crop_or_pad_index_relation_3d():
  vol = np.random.default_rng(0).integers(1, 100, size=(9, 6, 7))
  out, o = pp.crop_or_pad(vol, (8, 8, 6))
  np.testing.assert_array_equal(o, [1, -1, 1])
  for idx in np.ndindex(out.shape):
    src = np.array(idx) + o
    if np.all(src >= 0) and np.all(src < vol.shape):
      assert out[idx] == vol[tuple(src)]
    else:
      assert out[idx] == 0


def test_working_affine_maps_output_voxel_to_input_world_point():
  affine = _rotation_affine() @ np.diag([1.0, 1.2, 0.9, 1.0])
  offset = np.array([1, -1, 3])
  work = pp.working_affine(affine, offset, factor=2)
  for k in [(0, 0, 0), (5, 2, 7), (95, 95, 49)]:
    src = 2 * np.array(k) + 0.5 + offset
    np.testing.assert_allclose(work @ np.r_[k, 1.0], affine @ np.r_[src, 1.0], atol=1e-12)


# --------------------------------------------------------------------------- percentile rescale


def test_rescale_percentile_known_answer():
  image = np.full((1, 105, 1), -50.0)
  image[0, :101, 0] = np.arange(101.0)  # ramp 0..100 inside the mask → p1 = 1, p99 = 99
  image[0, 101, 0] = 500.0  # bright voxel outside the mask
  mask = np.zeros(image.shape, np.uint8)
  mask[0, :101, 0] = 1
  out = pp.rescale_percentile(image, mask, (1.0, 99.0))
  assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
  np.testing.assert_allclose(out[0, [0, 1, 25, 50, 99, 100], 0],
                             [0.0, 0.0, 24 / 98, 0.5, 1.0, 1.0], atol=1e-7)
  assert out[0, 101, 0] == 1.0  # clipped to p99
  np.testing.assert_array_equal(out[0, 102:, 0], 0.0)  # background clipped to p1 → 0


def test_rescale_percentile_errors_name_the_file():
  image = np.random.default_rng(0).random((4, 4, 4))
  with pytest.raises(DataError, match="sub-01_t1.nii.gz.*empty"):
    pp.rescale_percentile(image, np.zeros_like(image), source="sub-01_t1.nii.gz")
  with pytest.raises(DataError, match="sub-02_t1.nii.gz.*constant"):
    pp.rescale_percentile(np.full((4, 4, 4), 7.0), np.ones((4, 4, 4)), source="sub-02_t1.nii.gz")


# --------------------------------------------------------------------------- curvature flow


def test_curvature_flow_keeps_constant_and_ramps():
  np.testing.assert_array_equal(pp.curvature_flow(np.full((6, 7, 5), 3.5)), 3.5)
  i = np.arange(9.0)[:, None, None] * np.ones((9, 8, 7))
  np.testing.assert_allclose(pp.curvature_flow(i), i, atol=1e-6)  # everywhere, boundary included
  oblique = np.add.outer(np.add.outer(0.5 * np.arange(12.0), 2.0 * np.arange(11.0)),
                         -np.arange(10.0))
  out = pp.curvature_flow(oblique, iterations=3)
  # Neumann boundaries bend the isophotes near the border; 3 iterations reach 3 voxels inward.
  np.testing.assert_allclose(out[4:-4, 4:-4, 4:-4], oblique[4:-4, 4:-4, 4:-4], atol=1e-5)


def test_curvature_flow_hand_computed_update():
  x = np.arange(-3.0, 4.0)[:, None, None] * np.ones((7, 7, 7))
  y = np.arange(-3.0, 4.0)[None, :, None] * np.ones((7, 7, 7))
  inner = (slice(1, -1),) * 3
  # I = x² + y: I_x = 2x, I_y = 1, I_xx = 2 → κ|∇I| = I_y² I_xx / |∇I|² = 2 / (4x² + 1).
  image = x**2 + y
  out = pp.curvature_flow(image, time_step=0.125, iterations=1)
  np.testing.assert_allclose(out[inner], (image + 0.125 * 2 / (4 * x**2 + 1))[inner], atol=1e-5)
  # Spacing 2 mm along i: I_x = x, I_xx = 1/2 → κ|∇I| = 0.5 / (x² + 1).
  out = pp.curvature_flow(image, time_step=0.125, iterations=1, spacing=(2.0, 1.0, 1.0))
  np.testing.assert_allclose(out[inner], (image + 0.125 * 0.5 / (x**2 + 1))[inner], atol=1e-5)
  # I = xy + x + y: I_x = y + 1, I_y = x + 1, I_xy = 1 → κ|∇I| = −2 I_x I_y / (I_x² + I_y²).
  image = x * y + x + y
  speed = -2 * (x + 1) * (y + 1) / np.maximum((x + 1)**2 + (y + 1)**2, 1e-300)
  speed[(x == -1) & (y == -1)] = 0.0  # zero gradient → ITK returns no update
  out = pp.curvature_flow(image, time_step=0.125, iterations=1)
  np.testing.assert_allclose(out[inner], (image + 0.125 * speed)[inner], atol=1e-5)


def test_curvature_flow_denoises_but_keeps_edges_sharper_than_gaussian():
  clean = np.zeros((24, 24, 24))
  clean[..., 12:] = 1.0  # planar step edge between k = 11 and k = 12
  noisy = clean + np.random.default_rng(0).normal(scale=0.1, size=clean.shape)

  def noise_and_contrast(v):
    flat = np.concatenate([v[4:-4, 4:-4, 3:8].ravel(), v[4:-4, 4:-4, 16:21].ravel() - 1.0])
    return flat.var(), (v[4:-4, 4:-4, 12] - v[4:-4, 4:-4, 11]).mean()

  noise0, _ = noise_and_contrast(noisy)
  noise_cf, contrast_cf = noise_and_contrast(pp.curvature_flow(noisy).astype(np.float64))
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
  got, reference = pp.curvature_flow(framed), pp.curvature_flow(full)
  np.testing.assert_array_equal(got[5:, 5:, 5:], reference[5:, 5:, 5:])
  np.testing.assert_array_equal(got[:3], 0.0)


# --------------------------------------------------------------------------- resampling


def test_downsample_shapes_and_constant():
  vol = np.full((7, 8, 5), 0.3)
  for order in (0, 3):
    out = pp.downsample(vol, 2, order)
    assert out.shape == (4, 4, 3)
    np.testing.assert_allclose(out, 0.3, atol=1e-6)
  assert pp.downsample(vol, 2, 3).dtype == np.float32
  assert pp.downsample(vol.astype(np.uint8), 2, 0).dtype == np.uint8


def test_downsample_cubic_ramp_hits_half_voxel_positions():
  ramp = np.arange(48.0)[:, None, None] * np.ones((48, 4, 4))
  out = pp.downsample(ramp, 2, 3)[:, 1, 1]
  k = np.arange(24)
  interior = slice(5, 19)  # mirror boundary effects decay as 0.268^distance
  np.testing.assert_allclose(out[interior], (2 * k + 0.5)[interior], atol=1e-4)


def test_downsample_cubic_matches_scipy_map_coordinates():
  vol = np.random.default_rng(2).normal(size=(9, 8, 7))
  grid = np.meshgrid(*[2 * np.arange(-(-n // 2)) + 0.5 for n in vol.shape], indexing="ij")
  expected = ndimage.map_coordinates(vol, grid, order=3, mode="mirror", prefilter=True)
  np.testing.assert_allclose(pp.downsample(vol, 2, 3), expected, atol=1e-5)


def test_downsample_nearest_takes_index_2k_plus_1():
  i, j, k = np.indices((8, 6, 4))
  labels = i * 10000 + j * 100 + k
  out = pp.downsample(labels, 2, 0)
  a, b, c = np.indices(out.shape)
  np.testing.assert_array_equal(out, (2 * a + 1) * 10000 + (2 * b + 1) * 100 + (2 * c + 1))


def test_resample_to_isotropic_keeps_field_of_view():
  affine = _rotation_affine() @ np.diag([1.0, 1.0, 2.0, 1.0])
  shape = (6, 5, 24)
  new = pp.isotropic_affine(affine, shape)
  np.testing.assert_allclose(pp.affine_spacing(new), (1.0, 1.0, 1.0), atol=1e-12)
  corner_lo, corner_hi = np.r_[-0.5, -0.5, -0.5, 1], np.r_[5.5, 4.5, 23.5, 1]
  np.testing.assert_allclose(new @ corner_lo, affine @ corner_lo, atol=1e-12)
  np.testing.assert_allclose(new @ np.r_[5.5, 4.5, 47.5, 1], affine @ corner_hi, atol=1e-12)
  # A ramp along k is sampled at the old continuous index of each new voxel (interior).
  vol = np.broadcast_to(3.0 * np.arange(24.0), shape)
  out = pp.resample_to_isotropic(vol, (1.0, 1.0, 2.0), order=3)
  assert out.shape == (6, 5, 48)
  new_k = np.arange(48.0)
  old_k = np.linalg.solve(affine, new @ np.c_[np.zeros((48, 2)), new_k, np.ones(48)].T)[2]
  np.testing.assert_allclose(old_k, 0.5 * new_k - 0.25, atol=1e-12)
  np.testing.assert_allclose(out[2, 2, 16:32], 3.0 * old_k[16:32], atol=1e-3)
  labels = pp.resample_to_isotropic(vol.astype(np.int16), (1.0, 1.0, 2.0), order=0)
  np.testing.assert_array_equal(labels[0, 0], 3 * np.repeat(np.arange(24), 2))


# --------------------------------------------------------------------------- full chain


def _phantom(shape, cube_start, cube_size=6):
  """Brain box (intensity ~100 with a gentle ramp), a bright cube lesion and its seg."""
  rng = np.random.default_rng(3)
  image = np.zeros(shape, np.float32)
  mask = np.zeros(shape, np.uint8)
  brain = tuple(slice(3, n - 3) for n in shape)
  mask[brain] = 1
  image[brain] = 100 + rng.normal(scale=3, size=mask[brain].shape)
  lesion = tuple(slice(s, s + cube_size) for s in cube_start)
  image[lesion] = 300.0
  seg = np.zeros(shape, np.uint8)
  seg[lesion] = 1
  return image, mask, seg


def test_preprocess_volume_keeps_image_mask_and_seg_aligned():
  affine = _rotation_affine()
  shape = (35, 30, 23)  # crop/pad offsets (2, -1, 2)
  image, mask, seg = _phantom(shape, cube_start=(16, 9, 8))  # cropped start (14, 10, 6): even
  out = pp.preprocess_volume(image, mask, seg, affine, SMALL, source="phantom_t1.nii.gz")
  assert out.image.shape == out.mask.shape == out.seg.shape == (16, 16, 10)
  assert out.image.dtype == np.float32 and out.mask.dtype == out.seg.dtype == np.uint8
  assert set(np.unique(out.seg)) == {0, 1} and not out.resampled_to_1mm
  assert out.source_spacing == pytest.approx((1.0, 1.0, 1.0))
  np.testing.assert_array_equal(np.argwhere(out.seg).min(0), [7, 5, 3])
  np.testing.assert_array_equal(np.argwhere(out.seg).max(0), [9, 7, 5])
  assert out.image[out.seg > 0].min() > 0.9  # the lesion is where the bright cube is
  assert out.image[(out.mask > 0) & (out.seg == 0)].mean() < 0.3
  assert np.abs(out.image[out.mask == 0]).max() < 0.05  # background → 0 (small cubic ringing)
  # World centre of the lesion is preserved by the working affine.
  centre_out = out.affine @ np.r_[np.argwhere(out.seg).mean(0), 1.0]
  centre_in = affine @ np.r_[np.argwhere(seg).mean(0), 1.0]
  np.testing.assert_allclose(centre_out, centre_in, atol=1e-9)


def test_curvature_flow_is_applied_to_the_intensity_image_only():
  image, mask, seg = _phantom((34, 34, 22), cube_start=(14, 14, 8))
  on = pp.preprocess_volume(image, mask, seg, np.eye(4), SMALL)
  off = pp.preprocess_volume(image, mask, seg, np.eye(4),
                             pp.PreprocessConfig(crop_size=(32, 32, 20), curvature_flow=False))
  np.testing.assert_array_equal(on.mask, off.mask)
  np.testing.assert_array_equal(on.seg, off.seg)
  assert np.abs(on.image - off.image).max() > 1e-3
  expected = pp.rescale_percentile(*(pp.crop_or_pad(v, (32, 32, 20))[0]
                                     for v in (pp.curvature_flow(image), mask)))
  np.testing.assert_allclose(on.image, pp.downsample(expected, 2, 3), atol=1e-6)


@pytest.mark.parametrize("shape, target", [((21, 16, 9), (8, 16, 4)),  # odd, none, odd surplus
                                           ((20, 7, 10), (8, 12, 5)),  # even, padded, odd
                                           ((5, 6, 7), (8, 9, 10))])  # padded on every axis
def test_crop_box_is_what_crop_or_pad_keeps(shape, target):
  index = np.arange(np.prod(shape)).reshape(shape)
  cropped, _ = pp.crop_or_pad(index + 1, target)  # 0 = padding
  kept = np.unique(cropped[cropped > 0]) - 1
  box = pp.crop_box(shape, target)
  np.testing.assert_array_equal(kept, np.sort(index[box].ravel()))
  grown = pp.crop_box(shape, target, margin=2)
  for b, g, n in zip(box, grown, shape):
    assert (g.start, g.stop) == (max(b.start - 2, 0), min(b.stop + 2, n))


def test_curvature_flow_on_the_crop_box_equals_the_whole_volume_flow():
  # The flow runs only on the crop box grown by iterations + 1 voxels: bit-identical output.
  rng = np.random.default_rng(5)
  for shape, crop in (((50, 46, 40), (32, 32, 12)),  # cropped on every axis: interior box edges
                      ((50, 28, 40), (32, 32, 20))):  # padded along j: that axis kept whole
    image = np.zeros(shape, np.float32)
    image[2:-2, 2:-2, 2:-2] = 100 + rng.normal(scale=10, size=tuple(n - 4 for n in shape))
    mask = (image > 0).astype(np.uint8)
    box = pp.crop_box(shape, crop, margin=4)
    assert all(b.stop - b.start < n for b, n, t in zip(box, shape, crop) if t < n)
    cfg = pp.PreprocessConfig(crop_size=crop)
    got = pp.preprocess_volume(image, mask, None, np.eye(4), cfg)
    whole = pp.rescale_percentile(*(pp.crop_or_pad(v, crop)[0]
                                    for v in (pp.curvature_flow(image), mask)))
    np.testing.assert_array_equal(got.image, pp.downsample(whole, 2, 3))


def test_preprocess_volume_resamples_anisotropic_input_to_1mm():
  affine = _rotation_affine() @ np.diag([1.0, 1.0, 2.0, 1.0])
  image, mask, seg = _phantom((32, 32, 10), cube_start=(12, 12, 4), cube_size=4)
  cfg = pp.PreprocessConfig(crop_size=(32, 32, 20))
  out = pp.preprocess_volume(image, mask, seg, affine, cfg)
  assert out.resampled_to_1mm and out.source_spacing == pytest.approx((1.0, 1.0, 2.0))
  assert out.image.shape == (16, 16, 10)  # 10 slices × 2 mm → 20 slices, no crop needed
  np.testing.assert_allclose(pp.affine_spacing(out.affine), (2.0, 2.0, 2.0), atol=1e-12)
  centre_out = out.affine @ np.r_[np.argwhere(out.seg).mean(0), 1.0]
  centre_in = affine @ np.r_[np.argwhere(seg).mean(0), 1.0]
  np.testing.assert_allclose(centre_out, centre_in, atol=1e-9)
  assert out.image[out.seg > 0].min() > 0.7 and out.image[out.seg > 0].mean() > 0.9


def test_preprocess_volume_rejects_bad_input():
  image, mask, seg = _phantom((20, 20, 12), cube_start=(8, 8, 4))
  with pytest.raises(DataError, match="bad_t1.nii.gz: seg shape"):
    pp.preprocess_volume(image, mask, seg[:-1], np.eye(4), SMALL, source="bad_t1.nii.gz")
  with pytest.raises(DataError, match="bad_t1.nii.gz: expected a 3-D"):
    pp.preprocess_volume(image[0], mask[0], None, np.eye(4), SMALL, source="bad_t1.nii.gz")
  nan_image = image.copy()
  nan_image[0, 0, 0] = np.nan
  with pytest.raises(DataError, match="NaN"):
    pp.preprocess_volume(nan_image, mask, None, np.eye(4), SMALL, source="bad_t1.nii.gz")
  with pytest.raises(DataError, match="bad_t1.nii.gz: brain mask is empty"):
    pp.preprocess_volume(image, np.zeros_like(mask), None, np.eye(4), SMALL,
                         source="bad_t1.nii.gz")


def test_preprocess_volume_real_size():
  """197×233×189 (the atlas size): 96×96×50 out; the time is printed, not asserted."""
  shape = (197, 233, 189)
  grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape],
                              indexing="ij"))
  mask = (np.sum((grid / np.array([0.75, 0.8, 0.7], np.float32)[:, None, None, None])**2, axis=0)
          < 1).astype(np.uint8)
  image = mask * (100 + 20 * grid[0] + np.random.default_rng(4).normal(scale=5, size=shape))
  start = time.perf_counter()
  out = pp.preprocess_volume(image.astype(np.float32), mask, None, np.eye(4))
  elapsed = time.perf_counter() - start
  print(f"\npreprocess_volume {shape}: {elapsed:.2f} s")
  assert out.image.shape == out.mask.shape == (96, 96, 50) and out.seg is None
  # Cubic B-spline ringing at the sharp brain edge overshoots [0, 1] a little (reference too).
  assert -0.25 < out.image.min() and out.image.max() < 1.25
  assert np.mean((out.image < -0.02) | (out.image > 1.02)) < 0.01
