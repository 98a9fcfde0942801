"""Prediction inputs: reading and checking one scan and its mask, mapping maps back to its grid (listing them: `listing`)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from sadm_jax.data import nifti, orientation
from sadm_jax.data.errors import DataError
from sadm_jax.data.resample import affine_spacing

MAX_SPACING_MM = 3.0  # coarser scans cannot reach the 2 mm working grid without inventing detail
MIN_SPACING_MM = 0.05  # finer: not a brain MRI's voxels (ex-vivo scans reach 0.1 mm), or wrong units
UNIT_TO_MM = {1: 1000.0, 3: 0.001}  # NIfTI spatial unit codes other than mm: metre, micron
UNIT_NAMES = {0: "unknown", 1: "meter", 2: "mm", 3: "micron"}
SPACING_ATOL_MM = 1e-3  # a float32 header's 3 mm (oblique: a column norm of 3.0000001) is 3 mm
AFFINE_ATOL = 1e-3
SKEW_DEGREES = 0.01  # axes this close to perpendicular (or to each other) are, for the messages


# ----------------------------------------------------------------------------- reading


def _grid(affine: np.ndarray) -> str:
  """A voxel grid in words: axis codes, spacing and origin (mm), to name what two grids differ in."""
  return (f"{orientation.axis_codes(affine)}, spacing "
          f"{tuple(round(v, 4) for v in affine_spacing(affine))} mm, origin "
          f"{tuple(round(float(v), 4) for v in np.asarray(affine)[:3, 3])} mm")


def _check_header(path: str) -> str:
  """Axis codes of the scan; DataError without an orientation or when qform and sform disagree."""
  img = nib.load(path)
  hdr = img.header
  qform, qcode = hdr.get_qform(coded=True)
  sform, scode = hdr.get_sform(coded=True)
  codes = orientation.scan_orientation(img.affine, qcode or 0, scode or 0, path)
  if qcode and scode and not np.allclose(qform, sform, atol=AFFINE_ATOL):
    skew = _skew_degrees(sform)
    if skew > SKEW_DEGREES:  # a qform is a rotation and zooms: none can agree with this sform
      raise DataError(f"{path}: inconsistent header: the sform (code {int(scode)}) is sheared "
                      f"(two voxel axes {skew:.3g}° from perpendicular), which a qform cannot "
                      f"store, so the qform (code {int(qcode)}) describes another grid; keep the "
                      "form you trust (e.g. the sform: nibabel img.set_qform(None, code=0)) and "
                      "retry")
    q, s = (f"{name} (code {int(code)}: {_grid(form)})"
            for name, form, code in (("qform", qform, qcode), ("sform", sform, scode)))
    turn = _turn_degrees(qform, sform)
    turned = f", axes turned up to {turn:.3g}° apart" if turn > SKEW_DEGREES else ""
    raise DataError(f"{path}: inconsistent header: {q} and {s} describe different grids{turned}; "
                    "make them agree (e.g. nibabel img.set_qform(img.get_sform(), code=1)) and "
                    "retry")
  return codes


def _unit_columns(affine: np.ndarray) -> np.ndarray:
  lin = np.asarray(affine, np.float64)[:3, :3]
  return lin / np.maximum(np.linalg.norm(lin, axis=0), 1e-30)


def _skew_degrees(affine: np.ndarray) -> float:
  """How far (degrees) the most skewed pair of voxel axes of `affine` is from perpendicular."""
  u = _unit_columns(affine)
  cos = max(abs(float(u[:, i] @ u[:, j])) for i, j in ((0, 1), (0, 2), (1, 2)))
  return float(np.degrees(np.arcsin(min(cos, 1.0))))


def _turn_degrees(a: np.ndarray, b: np.ndarray) -> float:
  """The largest angle (degrees) between a voxel axis of `a` and the same axis of `b`."""
  cos = np.clip(np.sum(_unit_columns(a) * _unit_columns(b), axis=0), -1.0, 1.0)
  return float(np.degrees(np.arccos(cos)).max())


UNSTRIPPED_SHARE = 0.95  # image > 0 over more of the field of view: a head, not a stripped brain
# (an ellipsoid fills 52 % of its bounding box; an unstripped scan's noise is > 0 everywhere)
NEGATIVE_SHARE = 0.01  # more voxels than this share of the brain far below 0: not image > 0
NEGATIVE_DEPTH = 0.1  # far: below -NEGATIVE_DEPTH x the brain's 99th percentile (interpolation's
# undershoot beside a skull-stripped brain's edge stays within a few per cent of it)


def _positive_brain(image: np.ndarray, path: str) -> np.ndarray:
  """`image > 0` as the brain of a scan given without a mask [H, W, D] uint8; DataError naming
  `path` when that cannot be its brain: nothing above 0, nearly every voxel above 0 (a scan not
  skull-stripped: its background noise is > 0), or many voxels far below 0 (an
  intensity-normalised scan, e.g. z-scores, whose brain is half negative)."""
  brain = image > 0
  if not brain.any():
    if np.isnan(image).all():  # (nothing compares > 0 either)
      raise DataError(f"{path}: every voxel is NaN: no image to predict on (a damaged or "
                      "unfinished export?)")
    raise DataError(f"{path}: no voxel is above 0, so its brain (image > 0, as no mask was given) "
                    "is empty; give its brain mask (predict.mask)")
  share = np.count_nonzero(brain) / brain.size
  if share > UNSTRIPPED_SHARE:
    raise DataError(f"{path}: {100 * share:.1f}% of its voxels are above 0, so its brain (image > "
                    "0, as no mask was given) would be nearly the whole field of view: a scan that "
                    "is not skull-stripped? Give its brain mask (predict.mask) or skull-strip it "
                    "(e.g. SynthStrip, HD-BET)")
  deep = np.isfinite(image) & (image < -NEGATIVE_DEPTH * np.percentile(image[brain], 99))
  # (-Inf: background, as NaN, read as 0 by `clear_background` when outside the brain)
  if np.count_nonzero(deep) > NEGATIVE_SHARE * np.count_nonzero(brain):
    raise DataError(f"{path}: {np.count_nonzero(deep)} voxels are far below 0 (down to "
                    f"{float(image[deep].min()):.4g}; an intensity-normalised scan, e.g. "
                    "z-scores?), so image > 0 is not its brain; give its brain mask (predict.mask)")
  return brain.astype(np.uint8)


def _holes(brain: np.ndarray) -> np.ndarray:
  """bool: the voxels outside `brain` it encloses (their 6-connected component touches no face of
  the volume; `ndimage.binary_fill_holes`'s answer, in one labelling pass, not its dilations)."""
  labels, _ = ndimage.label(brain == 0)
  faces = np.concatenate([np.moveaxis(labels, axis, 0)[[0, -1]].ravel() for axis in range(3)])
  return (labels > 0) & ~np.isin(labels, faces)


def clear_background(image: np.ndarray, brain: np.ndarray, image_path: str,
                     mask_path: str | None) -> tuple[np.ndarray, int]:
  """(image [H, W, D] with its NaN/Inf voxels outside the brain set to 0, how many were): SPM
  and other tools write NaN where a resampled scan has no data, outside the brain; DataError
  naming `image_path` when any is inside its brain (mask `mask_path`, else `image > 0` with the
  holes it encloses: NaN is never > 0, a corrupted block in the brain would be a hole read as 0)."""
  bad = ~np.isfinite(image)
  if not bad.any():
    return image, 0
  inside = int(np.count_nonzero(bad & ((brain > 0) | (False if mask_path else _holes(brain)))))
  if inside:
    raise DataError(f"{image_path}: {inside} voxel(s) inside its brain ({mask_path or 'image > 0'})"
                    " are NaN or infinite; the map cannot be computed there: fill or mask them "
                    "and retry")
  return np.where(bad, np.float32(0), image).astype(image.dtype, copy=False), int(bad.sum())


def _spatial_unit(path: str) -> int:
  """The NIfTI spatial unit code of the file's header (xyzt_units' bits 0-2; nibabel's own reader
  raises KeyError for the undefined codes 4-7 an old converter may leave: mm then, as unknown)."""
  return int(nib.load(path).header["xyzt_units"]) & 7


def _in_mm(vol: nifti.Volume) -> nifti.Volume:
  """`vol` with its affine in mm: a header whose spatial units are metres or microns (NIfTI's
  xyzt_units) is scaled, unless its numbers are already a brain MRI's in mm (a wrong label, which
  other tools ignore too)."""
  factor = UNIT_TO_MM.get(_spatial_unit(vol.path))
  spacing = affine_spacing(vol.affine)
  if factor is None or MIN_SPACING_MM <= min(spacing) <= max(spacing) <= (MAX_SPACING_MM
                                                                      + SPACING_ATOL_MM):
    return vol
  affine = np.array(vol.affine, np.float64)
  affine[:3, :] *= factor
  return nifti.Volume(vol.data, affine, vol.path)


def load_scan(image_path: str, mask_path: str | None = None
              ) -> tuple[nifti.Volume, np.ndarray]:
  """(image volume, brain mask [H, W, D] uint8) with every check that names the offending file.

  Both in the file's own voxel order; a file whose orientation cannot be determined is refused.
  """
  img = _in_mm(nifti.load_volume(image_path))
  _check_header(image_path)
  spacing = affine_spacing(img.affine)
  if not all(np.isfinite(spacing)) or min(spacing) <= 0:
    raise DataError(f"{image_path}: invalid voxel spacing {spacing}")
  if min(spacing) < MIN_SPACING_MM:
    code = _spatial_unit(image_path)
    units = UNIT_NAMES.get(code, f"code {code}")
    raise DataError(f"{image_path}: voxel spacing {tuple(float(f'{s:.3g}') for s in spacing)} mm "
                    f"is finer than {MIN_SPACING_MM} mm: not a brain MRI's voxels, or the header's "
                    f"spatial units ({units}) or affine are wrong")
  if max(spacing) > MAX_SPACING_MM + SPACING_ATOL_MM:
    shown = tuple(round(s, 3) for s in spacing)
    raise DataError(f"{image_path}: voxel spacing {shown} mm is coarser "
                    f"than {MAX_SPACING_MM} mm; the models work on 1 mm scans (2 mm after the ×2 "
                    "downsampling) and cannot resample such a scan reliably")
  if not mask_path:
    return img, _positive_brain(img.data, image_path)
  mask = _in_mm(nifti.load_volume(mask_path))
  _check_header(mask_path)
  if mask.data.shape != img.data.shape:
    raise DataError(f"{mask_path}: mask shape {mask.data.shape} differs from the image grid "
                    f"{img.data.shape} ({image_path})")
  if not np.allclose(mask.affine, img.affine, atol=AFFINE_ATOL):
    raise DataError(f"{mask_path}: mask affine ({_grid(mask.affine)}) differs from the image "
                    f"affine ({_grid(img.affine)}; {image_path}): not the same grid")
  if not np.any(mask.data > 0):
    nan = int(np.count_nonzero(np.isnan(mask.data)))
    raise DataError(f"{mask_path}: brain mask is empty (no voxel > 0" +
                    (f"; {nan} of {mask.data.size} voxels are NaN" if nan else "") + ")")
  values = mask.data[np.isfinite(mask.data)]
  fractional = values[values != np.round(values)]
  if fractional.size:  # a probability map or an interpolated mask: > 0 would take all it touches
    raise DataError(f"{mask_path}: brain mask has {fractional.size} voxel(s) with fractional "
                    f"values ({float(fractional.min()):g} to {float(fractional.max()):g}; a "
                    "probability map or an interpolated mask?): the brain is every voxel > 0, so "
                    "binarise it first (e.g. > 0.5) and retry")
  return img, (mask.data > 0).astype(np.uint8)


# ----------------------------------------------------------------------------- the input grid


def to_input_grid(volume: np.ndarray, work_affine: np.ndarray, input_affine: np.ndarray,
                  input_shape, order: int) -> np.ndarray:
  """Resamples a working-grid volume [h, w, d] onto the input grid `input_shape` via the affines.

  Input voxel v sits at world point A_in·v, i.e. at working-grid index x = A_work⁻¹·A_in·v; `order`
  1 (trilinear) for maps, 0 (nearest) for masks. Working voxel k covers the indices [k − ½, k + ½)
  (×2 downsampling: input voxels 2k and 2k + 1, centred at x = k ∓ ¼), so points up to half a
  working voxel beyond the edge centres take the edge values; points outside [−½, n − ½) (cropped
  away) get 0.
  """
  m = np.linalg.solve(np.asarray(work_affine, np.float64), np.asarray(input_affine, np.float64))
  shape = tuple(int(n) for n in input_shape)
  out = ndimage.affine_transform(np.asarray(volume, np.float32 if order else volume.dtype),
                                 m[:3, :3], offset=m[:3, 3], output_shape=shape, order=order,
                                 mode="nearest", prefilter=False)
  out *= covered(work_affine, input_affine, input_shape, np.shape(volume))
  return out


def covered(work_affine: np.ndarray, input_affine: np.ndarray, input_shape, work_shape
            ) -> np.ndarray:
  """bool, broadcastable to `input_shape`: the input voxels a working grid of `work_shape`
  covers (working index in [−½, n − ½) along every axis; `to_input_grid` gives the others 0)."""
  m = np.linalg.solve(np.asarray(work_affine, np.float64), np.asarray(input_affine, np.float64))
  axes = [np.arange(int(n), dtype=np.float64).reshape([-1 if a == b else 1 for b in range(3)])
          for a, n in enumerate(input_shape)]
  inside = np.ones((1, 1, 1), bool)
  for i, n in enumerate(work_shape):  # working index along axis i of every input voxel
    # (only the axes it depends on: [H, 1, 1] for the axis-aligned grids predict passes)
    x = m[i, 3] + sum(m[i, j] * axes[j] for j in range(3) if abs(m[i, j]) > 1e-9)
    inside = inside & (x >= -0.5) & (x < n - 0.5)
  return inside
