"""Predict's geometry without models: working-grid maps carried back onto the scan's own grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from sadm_jax.data.errors import DataError
from sadm_jax.data.preprocess import PreprocessConfig, crop_box, preprocess_volume
from sadm_jax.evaluate import scans as scans_lib


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
    nib.save(nib.Nifti1Image(np.ones((8, 8, 6), np.float32), affine), path)
    if ok:
      scans_lib.load_scan(path)
    else:
      with pytest.raises(DataError, match=r"voxel spacing \(0.9, 0.9, 3.01\) mm is coarser"):
        scans_lib.load_scan(path)
