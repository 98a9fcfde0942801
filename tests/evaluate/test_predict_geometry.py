"""Predict's geometry without models: working-grid maps carried back onto the scan's own grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from sadm_jax.data.errors import DataError
from sadm_jax.data.preprocess import PreprocessConfig, crop_box, preprocess_volume
from sadm_jax.evaluate import predict
from sadm_jax.evaluate import scans as scans_lib
from tests.evaluate.test_predict_files import _threshold_predictor


@pytest.mark.parametrize("order", [0, 1])
def test_every_input_voxel_of_the_crop_box_gets_its_working_voxel(order):
  """Working voxel k covers input voxels 2k and 2k + 1 (centre 2k + 0.5): the outermost input
  voxels of the crop box sit a quarter working voxel outside the working voxel centres and must
  still get the edge working voxel's value, not 0; voxels outside the crop box get 0."""
  shape, crop = (20, 6, 9), (8, 8, 4)  # axis 0 cropped, axis 1 padded, axis 2 cropped
  rng = np.random.default_rng(0)
  work = preprocess_volume(rng.uniform(1, 2, shape).astype(np.float32), np.ones(shape, np.uint8),
                           None, np.eye(4), PreprocessConfig(curvature_flow=False, crop_size=crop))
  values = np.arange(1, work.mask.size + 1).reshape(work.mask.shape)  # distinct, nonzero
  values = values.astype(np.float32 if order else np.int32)
  back = scans_lib.to_input_grid(values, work.affine, np.eye(4), shape, order)
  inside = np.zeros(shape, bool)
  inside[crop_box(shape, crop)] = True
  assert np.array_equal(back != 0, inside), np.argwhere((back != 0) != inside)[:5]
  # Nearest: input voxel i of the crop box gets working voxel (i − crop start + pad start) // 2.
  if order == 0:
    i = np.arange(6, 14)  # axis 0: crop start 6; axis 1: pad start 1; axis 2: crop start 3
    np.testing.assert_array_equal(back[6:14, 5, 6], values[(i - 6) // 2, (5 + 1) // 2, 1])
    np.testing.assert_array_equal(back[6, :, 3], values[0, (np.arange(6) + 1) // 2, 0])


def test_oblique_3mm_slices_stored_in_float32_are_not_refused_as_coarser_than_3mm(tmp_path):
  """A clinical 0.9×0.9×3 mm scan tilted a few degrees: the float32 header makes the third column's
  norm 3.0000002 mm for many angles, which was refused as 'voxel spacing (0.9, 0.9, 3.0) mm is
  coarser than 3.0 mm'. 3 mm is allowed up to float32 rounding; 3.01 mm is still refused."""
  for deg, slice_mm, ok in ((1.0, 3.0, True), (3.0, 3.0, True), (14.5, 3.0, True),
                            (6.5, 3.01, False)):
    t = np.deg2rad(deg)
    affine = np.eye(4)
    affine[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    affine = affine @ np.diag([0.9, 0.9, slice_mm, 1.0])
    affine[:3, 3] = (-90.0, -100.0, -60.0)
    path = str(tmp_path / f"tilted_{deg}_{slice_mm}.nii.gz")
    nib.save(nib.Nifti1Image(np.pad(np.ones((6, 6, 6), np.float32), ((1, 1), (1, 1), (0, 0))),
                             affine), path)
    if ok:
      scans_lib.load_scan(path)
    else:
      with pytest.raises(DataError, match=r"voxel spacing \(0.9, 0.9, 3.01\) mm is coarser"):
        scans_lib.load_scan(path)


def _tilted(deg: float) -> np.ndarray:
  t = np.deg2rad(deg)
  r = np.eye(4)
  r[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
  return r


_PSR = np.array([[0, 0, 1.0, -10], [-1, 0, 0, 12], [0, -1, 0, 8], [0, 0, 0, 1]])


def _predicted_map(folder, data, mask, affine, qform_only) -> tuple[nib.Nifti1Image, np.ndarray]:
  """(the scan as saved, its intensity-baseline map) for a scan `data` with brain `mask`."""
  paths = []
  for stem, volume in (("scan", data), ("scan_mask", mask)):
    img = nib.Nifti1Image(volume, affine)
    if qform_only:
      img.set_qform(affine, code=1)
      img.set_sform(None, code=0)
    paths.append(str(folder / f"{stem}.nii.gz"))
    nib.save(img, paths[-1])
  # A crop larger than every scan: no crop edges (there the edge values are repeated, not linear).
  out = predict.predict(_threshold_predictor(None, (48, 48, 48)), *paths, str(folder / "out"))
  got, src = nib.load(out["anomaly_map"]), nib.load(paths[0])
  assert got.shape == data.shape
  np.testing.assert_allclose(got.affine, src.affine, atol=1e-5)
  assert (int(got.header["qform_code"]), int(got.header["sform_code"])) == (
      int(src.header["qform_code"]), int(src.header["sform_code"]))
  return src, np.asarray(got.dataobj)


@pytest.mark.parametrize("name, affine, shape, qform_only", [
    ("RAS", np.diag([1.0, 1, 1, 1]), (24, 26, 20), False),
    ("LPS", np.diag([-1.0, -1, 1, 1]), (24, 26, 20), False),
    ("PSR permuted", _PSR, (24, 26, 20), False),
    ("LAS left-handed, qform only", np.diag([-1.0, 1, 1, 1]), (24, 26, 20), True),
    ("oblique 12 deg", _tilted(12), (24, 26, 20), False),
    ("1x1x3 mm", np.diag([1.0, 1, 3, 1]), (24, 26, 14), False),
    ("0.5 mm", np.diag([0.5, 0.5, 0.5, 1]), (48, 52, 40), False),
    ("oblique 1.2x0.9x2.5 mm", _tilted(-20) @ np.diag([1.2, 0.9, 2.5, 1]), (22, 28, 14), False),
])
def test_maps_land_on_the_scans_own_voxels(tmp_path, name, affine, shape, qform_only):
  """The intensity baseline (map = rescaled intensity), so the map is known without models.

  (1) A scan whose intensity is linear in world coordinates: every step (reorientation, resampling
  to 1 mm, ×2 downsampling, back to the scan's grid) reproduces a linear function, so away from
  the mask border the map is a rising linear function of the scan's intensity (a flip or
  permutation breaks that). (2) A bright blob: the map's centroid is the blob's centre in world
  coordinates within 0.1 mm (a shift by a quarter working voxel, 0.5 mm, is caught). Both maps
  keep the scan's shape, affine and form codes."""
  spacing = np.linalg.norm(affine[:3, :3], axis=0)
  idx = np.indices(shape).reshape(3, -1)
  world = affine[:3, :3] @ idx + affine[:3, 3:]
  f = (np.array([0.3, -0.2, 0.5]) @ world + 100).reshape(shape).astype(np.float32)
  mask = np.zeros(shape, np.uint8)
  mask[2:-2, 2:-2, 2:-2] = 1
  (tmp_path / "ramp").mkdir()
  _, a = _predicted_map(tmp_path / "ramp", f, mask, affine, qform_only)
  # 4 mm inside the brain mask: the map is 0 outside the working-grid mask, which the trilinear
  # interpolation back blends in within one 2 mm working voxel of its edge.
  inner = mask > 0
  for axis, mm in enumerate(spacing):
    line = np.ones([3 if i == axis else 1 for i in range(3)], bool)
    inner = ndimage.binary_erosion(inner, line, iterations=int(np.ceil(4.0 / mm)))
  inner &= (a > 0.05) & (a < 0.95)
  assert inner.sum() > 300, name
  fit = np.polyfit(f[inner], a[inner], 1)
  assert np.abs(np.polyval(fit, f[inner]) - a[inner]).max() < 2e-3, name
  assert fit[0] > 0, name  # the map rises with the scan's intensity: not mirrored

  # A Gaussian blob (σ 2.5 mm) centred between voxels, on a flat image of 100: smooth, so every
  # resampling keeps its centroid to a few hundredths of a mm.
  centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3] + (0.37, -0.61, 0.23)
  blob = np.exp(-((world - centre[:, None]) ** 2).sum(0) / (2 * 2.5 ** 2)).reshape(shape)
  (tmp_path / "blob").mkdir()
  _, a = _predicted_map(tmp_path / "blob", (100 + 200 * blob).astype(np.float32), mask, affine,
                        qform_only)
  got = (world @ a.reshape(-1)) / a.sum()
  assert np.abs(got - centre).max() < 0.1, (name, got - centre)
