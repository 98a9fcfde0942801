"""Resampling of numpy volumes and their affines: ×f downsampling, resampling to isotropic voxels.

Used by the preprocessing chain (`preprocess.preprocess_volume`, METHOD §2.3) and wherever
a volume's voxel size is read (`affine_spacing`). Volumes are [H, W, D] in NIfTI voxel order;
affines [4, 4] voxel → world. Intensity images: cubic B-spline (order 3, float64 internally,
float32 out); label maps: ITK nearest neighbour (order 0, dtype kept).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage


def translation(offset: Sequence[float]) -> np.ndarray:
  """[4, 4] homogeneous translation by `offset` (voxel units)."""
  t = np.eye(4)
  t[:3, 3] = offset
  return t


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
  """Whole-sample symmetric extension (…2 1 0 1 2…), as ITK's B-spline and scipy 'mirror'."""
  if n == 1:
    return np.zeros_like(index)
  period = 2 * (n - 1)
  index = np.abs(index) % period
  return np.where(index > n - 1, period - index, index)


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
  """Centred cubic B-spline β3(t)."""
  t = np.abs(t)
  return np.where(t < 1.0, 2.0 / 3.0 - t * t + 0.5 * t ** 3,
                  np.where(t < 2.0, (2.0 - t) ** 3 / 6.0, 0.0))


def _cubic_matrix(n: int, positions: np.ndarray) -> np.ndarray:
  """[m, n] weights mapping B-spline coefficients to values at continuous `positions` (mirror)."""
  base = np.floor(positions).astype(np.int64)
  taps = base[:, None] + np.arange(-1, 3)[None, :]  # [m, 4]
  weights = _cubic_bspline(positions[:, None] - taps)
  matrix = np.zeros((positions.size, n))
  rows = np.broadcast_to(np.arange(positions.size)[:, None], taps.shape)
  np.add.at(matrix, (rows, _mirror(taps, n)), weights)
  return matrix


def _resample_axis(volume: np.ndarray, axis: int, positions: np.ndarray, order: int) -> np.ndarray:
  """Samples `volume` along one axis at continuous indices `positions`.

  order 3: cubic B-spline interpolation with prefilter and mirror boundary (sitkBSpline / scipy
  `map_coordinates(order=3, mode='mirror')`), float64. order 0: ITK nearest neighbour, i.e. index
  floor(x + 0.5) (round half up), clamped to the volume; keeps the dtype.
  """
  n = volume.shape[axis]
  if order == 0:
    index = np.clip(np.floor(positions + 0.5).astype(np.int64), 0, n - 1)
    return np.take(volume, index, axis=axis)
  if order != 3:
    raise ValueError(f"interpolation order must be 0 (nearest) or 3 (cubic B-spline), got {order}")
  coeffs = ndimage.spline_filter1d(np.asarray(volume, dtype=np.float64), order=3, axis=axis,
                                   mode="mirror")
  moved = np.moveaxis(coeffs, axis, 0)
  out = _cubic_matrix(n, positions) @ moved.reshape(n, -1)
  return np.moveaxis(out.reshape((positions.size,) + moved.shape[1:]), 0, axis)


def downsample(volume: np.ndarray, factor: int = 2, order: int = 3) -> np.ndarray:
  """torchio `Resample(factor)` on a 1-mm grid (the reference's ×2 downsampling).

  Output size ceil(n / factor) per axis; output voxel k is centred at continuous input index
  factor·k + (factor − 1)/2 (= 2k + 0.5 for factor 2). No anti-aliasing, no clipping.

  Args:
    volume: [H, W, D] array.
    factor: integer downsampling factor.
    order: 3 for intensity images (cubic B-spline with prefilter, mirror boundary, like
      sitkBSpline; may overshoot the input range slightly), 0 for label maps (ITK nearest
      neighbour with round-half-up: for factor 2 the label of input index 2k + 1). For an odd n the
      last sample lies half a voxel beyond the last centre; it is taken from the mirror extension
      (order 3) or the last voxel (order 0), where ITK would return its pad value.

  Returns:
    [ceil(H/f), ceil(W/f), ceil(D/f)] float32 for order 3, input dtype for order 0.
  """
  out = np.asarray(volume)
  for axis, n in enumerate(out.shape):
    positions = factor * np.arange(math.ceil(n / factor)) + (factor - 1) / 2.0
    out = _resample_axis(out, axis, positions, order)
  return out.astype(np.float32) if order == 3 else out


def affine_spacing(affine: np.ndarray) -> tuple[float, float, float]:
  """Voxel size (mm) per axis: the norms of the affine's first three columns."""
  return tuple(float(s) for s in np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3],
                                                axis=0))


def _isotropic_axes(shape: Sequence[int], spacing: Sequence[float], target: float,
                    tolerance: float) -> list[tuple[int, np.ndarray, float, float] | None]:
  """Per axis None (already `target` within tolerance) or (m, positions, scale, start).

  The new grid keeps the physical field of view: m = floor(n·s/target + 0.5) voxels of size
  `target` centred on the old field's centre; new voxel k sits at old continuous index
  start + k·scale with scale = target/s and start = (n − 1)/2 − (m − 1)/2·scale.
  """
  axes = []
  for n, s in zip(shape, spacing):
    if abs(s - target) <= tolerance:
      axes.append(None)
      continue
    m = max(1, int(math.floor(n * s / target + 0.5)))
    scale = target / s
    start = (n - 1) / 2.0 - (m - 1) / 2.0 * scale
    axes.append((m, start + scale * np.arange(m), scale, start))
  return axes


def resample_to_isotropic(volume: np.ndarray, spacing: Sequence[float], order: int,
                          target: float = 1.0, tolerance: float = 1e-3) -> np.ndarray:
  """Resamples axes whose spacing differs from `target` (mm) so that every voxel is `target` mm.

  Axes within `tolerance` are left untouched. See `_isotropic_axes` for the grid and
  `isotropic_affine` for the matching affine.

  Args:
    volume: [H, W, D] array.
    spacing: current voxel size per axis (mm).
    order: 3 (cubic B-spline, images; float32 out) or 0 (nearest, labels; dtype kept).
    target: new voxel size (mm).
    tolerance: spacing tolerance (mm).

  Returns:
    [round(H·s_H), round(W·s_W), round(D·s_D)] resampled volume.
  """
  out = np.asarray(volume)
  for axis, spec in enumerate(_isotropic_axes(out.shape, spacing, target, tolerance)):
    if spec is not None:
      out = _resample_axis(out, axis, spec[1], order)
  return out.astype(np.float32) if order == 3 else out


def isotropic_affine(affine: np.ndarray, shape: Sequence[int], target: float = 1.0,
                     tolerance: float = 1e-3) -> np.ndarray:
  """[4, 4] affine of the grid produced by `resample_to_isotropic` (same field of view)."""
  affine = np.asarray(affine, dtype=np.float64)
  grid = np.eye(4)
  for axis, spec in enumerate(_isotropic_axes(shape, affine_spacing(affine), target, tolerance)):
    if spec is not None:
      grid[axis, axis], grid[axis, 3] = spec[2], spec[3]
  return affine @ grid


def working_affine(affine: np.ndarray, offset: Sequence[int], factor: int = 2) -> np.ndarray:
  """[4, 4] affine of the final (downsampled) grid.

  affine @ T(offset) @ [[f, 0, 0, (f−1)/2], [0, f, 0, (f−1)/2], [0, 0, f, (f−1)/2], [0, 0, 0, 1]]:
  output voxel k maps to the world point of input index f·k + (f − 1)/2 + offset.
  """
  scale = np.diag([float(factor)] * 3 + [1.0])
  scale[:3, 3] = (factor - 1) / 2.0
  return np.asarray(affine, dtype=np.float64) @ translation(offset) @ scale
