"""Tests for sadm_jax.data.preprocess (crop/pad, rescale, the chain): hand-computed answers on tiny
volumes, one real-size run."""

from __future__ import annotations

import time

import numpy as np
import pytest

from sadm_jax.data import curvature, preprocess as pp, resample
from sadm_jax.data.errors import DataError
from tests.data import fake_data

SMALL = pp.PreprocessConfig(crop_size=(32, 32, 20))


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
  affine = fake_data.rotation_affine()
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
                                     for v in (curvature.curvature_flow(image), mask)))
  np.testing.assert_allclose(on.image, resample.downsample(expected, 2, 3), atol=1e-6)


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
                                    for v in (curvature.curvature_flow(image), mask)))
    np.testing.assert_array_equal(got.image, resample.downsample(whole, 2, 3))


def test_preprocess_volume_resamples_anisotropic_input_to_1mm():
  affine = fake_data.rotation_affine() @ np.diag([1.0, 1.0, 2.0, 1.0])
  image, mask, seg = _phantom((32, 32, 10), cube_start=(12, 12, 4), cube_size=4)
  cfg = pp.PreprocessConfig(crop_size=(32, 32, 20))
  out = pp.preprocess_volume(image, mask, seg, affine, cfg)
  assert out.resampled_to_1mm and out.source_spacing == pytest.approx((1.0, 1.0, 2.0))
  assert out.image.shape == (16, 16, 10)  # 10 slices × 2 mm → 20 slices, no crop needed
  np.testing.assert_allclose(resample.affine_spacing(out.affine), (2.0, 2.0, 2.0), atol=1e-12)
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
