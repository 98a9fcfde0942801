"""Scan orientation from the header; exact reorientation to the training axis order and back."""

from __future__ import annotations

import dataclasses

import numpy as np
from nibabel import orientations as ornt_lib

from sadm_jax.data.errors import DataError

DEFAULT = "RAS"  # assumed for runs trained before the training data's orientation was recorded
_PAIRS = ("LR", "PA", "IS")


def axis_codes(affine: np.ndarray) -> str:
  """Axis codes of a [4, 4] voxel → world affine, e.g. 'RAS' (nearest world axis per axis)."""
  return "".join(ornt_lib.aff2axcodes(np.asarray(affine, np.float64)))


def check_codes(codes: str) -> str:
  """`codes` upper-cased; ValueError unless it names one direction per world axis (e.g. 'LPS')."""
  c = str(codes).upper()
  axes = sorted(next((i for i, p in enumerate(_PAIRS) if a in p), -1) for a in c)
  if len(c) != 3 or axes != [0, 1, 2]:
    raise ValueError(f"orientation {codes!r}: expected 3 axis codes, one of each of L/R, P/A, I/S "
                     "(e.g. 'RAS')")
  return c


def scan_orientation(affine: np.ndarray, qform_code: int, sform_code: int, source: str) -> str:
  """Axis codes of a scan whose header locates it in the world; DataError (one line) otherwise.

  A NIfTI header with qform_code = sform_code = 0 says nothing about which way its axes point (the
  affine nibabel reports then is a guess), and a singular or non-finite affine has no orientation.
  """
  if not int(qform_code) and not int(sform_code):
    raise DataError(f"{source}: orientation unknown: qform_code and sform_code are both 0, so the "
                    "header does not say which way the voxel axes point; set a qform or sform "
                    "(e.g. nibabel set_sform(affine, code=1)) and retry")
  affine = np.asarray(affine, np.float64)
  if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
    raise DataError(f"{source}: orientation unknown: the affine is not a finite 4x4 matrix")
  lin = affine[:3, :3]
  if abs(np.linalg.det(lin)) <= 1e-6 * max(float(np.abs(lin).max()), 1e-30) ** 3:
    sizes = tuple(round(float(s), 4) for s in np.linalg.norm(lin, axis=0))
    raise DataError(f"{source}: orientation unknown: the header affine is singular "
                    f"(voxel sizes {sizes})")
  return axis_codes(affine)


@dataclasses.dataclass(frozen=True)
class Reorientation:
  """A flip/permutation of a scan's voxel axes onto the `target` axis order, and its inverse.

  source/target: axis codes of the input and of the reoriented array; input_shape: [H, W, D] of the
  input; affine: [4, 4] voxel → world of the reoriented array (same world points as the input).
  """
  source: str
  target: str
  input_shape: tuple[int, int, int]
  affine: np.ndarray
  _forward: np.ndarray  # [3, 2] nibabel orientation transform input → target
  _backward: np.ndarray  # [3, 2] target → input

  @property
  def identity(self) -> bool:
    return self.source == self.target

  def apply(self, volume: np.ndarray) -> np.ndarray:
    """Input voxel order [H, W, D] → target voxel order (a permuted/flipped copy)."""
    if tuple(volume.shape) != self.input_shape:
      raise ValueError(f"volume shape {volume.shape} is not the input shape {self.input_shape}")
    return np.ascontiguousarray(ornt_lib.apply_orientation(volume, self._forward))

  def undo(self, volume: np.ndarray) -> np.ndarray:
    """Target voxel order → the input's own voxel order [H, W, D]."""
    out = np.ascontiguousarray(ornt_lib.apply_orientation(volume, self._backward))
    if out.shape != self.input_shape:
      raise ValueError(f"volume shape {volume.shape} is not the reoriented input shape")
    return out


def reorientation(affine: np.ndarray, shape, target: str) -> Reorientation:
  """How to bring a volume of `shape` with voxel → world `affine` [4, 4] into `target` axis order.

  Uses nibabel.orientations: io_orientation (nearest world axis per voxel axis, so oblique scans
  are permuted/flipped, never resampled), ornt_transform, apply_orientation and inv_ornt_aff for
  the new affine; world coordinates of every voxel are unchanged.
  """
  target = check_codes(target)
  affine = np.asarray(affine, np.float64)
  shape = tuple(int(n) for n in shape)
  start = ornt_lib.io_orientation(affine)
  end = ornt_lib.axcodes2ornt(target)
  forward = ornt_lib.ornt_transform(start, end)
  backward = ornt_lib.ornt_transform(end, start)
  new_affine = affine @ ornt_lib.inv_ornt_aff(forward, shape)
  return Reorientation("".join(ornt_lib.ornt2axcodes(start)), target, shape, new_affine,
                       forward, backward)
