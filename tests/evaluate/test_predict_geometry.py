"""Predict's geometry without models: working-grid maps carried back onto the scan's own grid."""

from __future__ import annotations

import numpy as np
import pytest

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
