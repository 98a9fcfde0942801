"""Prediction inputs: listing scans (file, list, folder, CSV), reading them, mapping maps back to their grid."""

from __future__ import annotations

import csv
import dataclasses
import os
import re

import nibabel as nib
import numpy as np
from scipy import ndimage

from sadm_jax.data import nifti, orientation
from sadm_jax.data.errors import DataError
from sadm_jax.data.resample import affine_spacing

MAX_SPACING_MM = 3.0  # coarser scans cannot reach the 2 mm working grid without inventing detail
SPACING_ATOL_MM = 1e-3  # a float32 header's 3 mm (oblique: a column norm of 3.0000001) is 3 mm
AFFINE_ATOL = 1e-3
SKEW_DEGREES = 0.01  # axes this close to perpendicular (or to each other) are, for the messages
OUTPUT_SUFFIXES = ("_anomaly_map", "_anomaly_mask")  # predict's outputs: <stem><suffix>.nii.gz


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


NEGATIVE_SHARE = 0.01  # more voxels than this share of the brain far below 0: not image > 0
NEGATIVE_DEPTH = 0.1  # far: below -NEGATIVE_DEPTH x the brain's 99th percentile (interpolation's
# undershoot beside a skull-stripped brain's edge stays within a few per cent of it)


def _positive_brain(image: np.ndarray, path: str) -> np.ndarray:
  """`image > 0` as the brain of a scan given without a mask [H, W, D] uint8; DataError naming
  `path` when that cannot be its brain: nothing above 0, or many voxels far below 0 (an
  intensity-normalised scan, e.g. z-scores, whose brain is half negative)."""
  brain = image > 0
  if not brain.any():
    raise DataError(f"{path}: no voxel is above 0, so its brain (image > 0, as no mask was given) "
                    "is empty; give its brain mask (predict.mask)")
  deep = image < -NEGATIVE_DEPTH * np.percentile(image[brain], 99)
  if np.count_nonzero(deep) > NEGATIVE_SHARE * np.count_nonzero(brain):
    raise DataError(f"{path}: {np.count_nonzero(deep)} voxels are far below 0 (down to "
                    f"{float(image[deep].min()):.4g}; an intensity-normalised scan, e.g. "
                    "z-scores?), so image > 0 is not its brain; give its brain mask (predict.mask)")
  return brain.astype(np.uint8)


def load_scan(image_path: str, mask_path: str | None = None
              ) -> tuple[nifti.Volume, np.ndarray]:
  """(image volume, brain mask [H, W, D] uint8) with every check that names the offending file.

  Both in the file's own voxel order; a file whose orientation cannot be determined is refused.
  """
  img = nifti.load_volume(image_path)
  _check_header(image_path)
  spacing = affine_spacing(img.affine)
  if not all(np.isfinite(spacing)) or min(spacing) <= 0:
    raise DataError(f"{image_path}: invalid voxel spacing {spacing}")
  if max(spacing) > MAX_SPACING_MM + SPACING_ATOL_MM:
    shown = tuple(round(s, 3) for s in spacing)
    raise DataError(f"{image_path}: voxel spacing {shown} mm is coarser "
                    f"than {MAX_SPACING_MM} mm; the models work on 1 mm scans (2 mm after the ×2 "
                    "downsampling) and cannot resample such a scan reliably")
  if not mask_path:
    return img, _positive_brain(img.data, image_path)
  mask = nifti.load_volume(mask_path)
  _check_header(mask_path)
  if mask.data.shape != img.data.shape:
    raise DataError(f"{mask_path}: mask shape {mask.data.shape} differs from the image grid "
                    f"{img.data.shape} ({image_path})")
  if not np.allclose(mask.affine, img.affine, atol=AFFINE_ATOL):
    raise DataError(f"{mask_path}: mask affine ({_grid(mask.affine)}) differs from the image "
                    f"affine ({_grid(img.affine)}; {image_path}): not the same grid")
  if not np.any(mask.data > 0):
    raise DataError(f"{mask_path}: brain mask is empty")
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


# ----------------------------------------------------------------------------- listing


def scan_stem(path: str) -> str:
  """The file name without .nii/.nii.gz (any case): names the scan and its outputs."""
  return re.sub(r"\.nii(\.gz)?$", "", os.path.basename(path), flags=re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Scan:
  """One scan to predict: name (its file stem, names the outputs), image path, mask path or None."""
  name: str
  image: str
  mask: str | None


def _is_nifti(path: str) -> bool:
  return bool(re.search(r"\.nii(\.gz)?$", path, flags=re.IGNORECASE))


def _mask_bases(stem: str) -> list[str]:
  """The names a scan's mask may start with: its stem, then `<base>` for a stem
  `<base>_<modality>` (`sub-01_T1w`), not for one ending in a number (`patient_001`: a stray
  `patient_mask` is not every patient's mask)."""
  head, _, tail = stem.rpartition("_")
  return [stem] + ([head] if head and not tail.isdigit() else [])


def find_mask(stem: str, folder: str, suffix: str = "_mask") -> str | None:
  """The brain mask of scan `stem` in `folder`, None when there is none.

  `<stem><suffix>.nii[.gz]`, else (for a stem `<base>_<modality>`, e.g. `sub-01_T1w`)
  `<base><suffix>.nii[.gz]`; the extension in any case (`.NII.GZ`), the exact one first.
  """
  for base in _mask_bases(stem):
    for ext in (".nii.gz", ".nii"):
      path = os.path.join(folder, base + suffix + ext)
      if os.path.isfile(path):
        return path
    others = sorted(n for n in os.listdir(folder) if _is_nifti(n) and scan_stem(n) == base + suffix)
    if others:  # the extension in another case, e.g. `.NII.GZ`
      return os.path.join(folder, others[0])
  return None


def _given_mask(stem: str, folder: str, suffix: str) -> str:
  """The mask of scan `stem` in the mask folder the user gave (`predict.mask`); when it has none,
  the path it was expected at, so that the scan fails naming it instead of silently taking
  `image > 0` as its brain: `<base><suffix>.nii.gz` for a stem `<base>_<modality>` (`sub-01_T1w`
  -> `sub-01_mask`), `<stem><suffix>.nii.gz` for one that ends in a number (`patient_001`)."""
  return find_mask(stem, folder, suffix) or os.path.join(folder, _mask_bases(stem)[-1] + suffix
                                                         + ".nii.gz")


def _split(text: str) -> list[str]:
  return [t.strip() for t in str(text).split(",") if t.strip()]


def _read_csv(path: str) -> list[tuple[str, str | None]]:
  """(image, mask or None) rows of a CSV with columns image[,mask]; paths relative to the CSV."""
  if not os.path.isfile(path):
    raise ValueError(f"predict.input={path}: CSV file not found")
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte order mark
      reader = csv.DictReader(f)
      fields = [c.strip() for c in reader.fieldnames or []]
      if "image" not in fields:
        sep = next((c for c in ";\t" if len(fields) == 1 and c in fields[0]), "")
        hint = f"; the file is separated by {sep!r}, expected ','" if sep else ""
        raise ValueError(f"predict.input={path}: the CSV needs a header with columns "
                         f"image[,mask]; got {fields}{hint}")
      twice = sorted({c for c in fields if c and fields.count(c) > 1})
      if twice:  # csv.DictReader keeps the last one's values
        raise ValueError(f"predict.input={path}: column(s) {twice} appear twice in the header; "
                         "give one scan per row (columns image[,mask])")
      others = [c for c in fields if c and c not in ("image", "mask")]
      if others and "mask" not in fields:  # the masks under another name: image > 0, silently
        raise ValueError(f"predict.input={path}: column(s) {others} are not read (columns "
                         "image[,mask]); name the brain masks' column 'mask', or remove the "
                         "other columns to use image > 0 as the brain")
      rows = []
      for r in reader:
        if None in r:  # more fields than the header: csv.DictReader keeps them under None
          raise ValueError(f"predict.input={path}: line {reader.line_num} has "
                           f"{len(fields) + len(r[None])} fields, the header {len(fields)}; "
                           "quote a path that holds a comma")
        rows.append({(k or "").strip(): (v or "").strip() for k, v in r.items()})
  except UnicodeDecodeError as e:
    raise ValueError(f"predict.input={path}: not UTF-8 text (byte {e.start}: {e.reason}); save "
                     "it as UTF-8 (e.g. Excel's \"CSV UTF-8\")") from None
  here = os.path.dirname(os.path.abspath(path))
  resolve = lambda p: os.path.join(here, p) if p and not os.path.isabs(p) else p  # noqa: E731
  return [(resolve(r["image"]), resolve(r.get("mask", "")) or None) for r in rows if r["image"]]


def list_scans(input_spec: str, mask_spec: str = "", mask_suffix: str = "_mask"
               ) -> tuple[list[Scan], bool]:
  """(scans, batch) named by `predict.input` / `predict.mask`; batch = one output folder per scan.

  input_spec: one NIfTI file (batch False: today's flat layout); a comma-separated list of files;
    a folder (every .nii/.nii.gz in it except masks, `*<mask_suffix>.nii[.gz]`, predict's own
    outputs, `*_anomaly_map` / `*_anomaly_mask`, and hidden files, `.*`); or a .csv with
    columns image[,mask] (paths relative to the CSV).
  mask_spec: '' (folder input: masks found by `find_mask` next to the scans, the brain is
    `image > 0` for a scan without one; otherwise the brain is `image > 0`); a folder (masks found
    there by `find_mask`: a scan without one fails, naming the mask expected; with an empty
    `mask_suffix` the masks are named like the scans); a file (one scan) or a comma-separated
    list as long as the input list.
  Raises ValueError (one line) for an unusable specification; missing or unreadable scan files are
  not checked here: they fail on their own when predicted.
  """
  spec = str(input_spec).strip()
  mask_spec = str(mask_spec or "").strip()
  mask_dir = mask_spec if mask_spec and os.path.isdir(mask_spec) else ""
  if spec.lower().endswith(".csv"):
    if mask_spec:
      raise ValueError("predict.mask is not used with a CSV input: give masks in its mask column")
    pairs, batch = _read_csv(spec), True
    if not pairs:
      raise ValueError(f"predict.input={spec}: the CSV lists no scans")
  elif os.path.isdir(spec):
    if mask_spec and not mask_dir:
      raise ValueError(f"predict.mask={mask_spec}: with a folder input it must be a folder")
    if not mask_suffix and not mask_dir:  # every name ends with '': all would be masks
      raise ValueError(f"predict.mask_suffix is empty: the masks next to the scans in {spec} "
                       "cannot be told from the scans; give a suffix (default '_mask') or "
                       "predict.mask=<folder of masks named like the scans>")
    skip = ((mask_suffix,) if mask_suffix else ()) + OUTPUT_SUFFIXES
    names = sorted(n for n in os.listdir(spec) if _is_nifti(n) and not n.startswith(".")
                   and not scan_stem(n).endswith(skip))
    if not names:
      raise ValueError(f"predict.input={spec}: no .nii/.nii.gz scans in this folder")
    pairs = [(os.path.join(spec, n), _given_mask(scan_stem(n), mask_dir, mask_suffix)
              if mask_dir else find_mask(scan_stem(n), spec, mask_suffix)) for n in names]
    batch = True
  else:
    images, batch = _split(spec), "," in spec
    if mask_dir:
      masks = [_given_mask(scan_stem(i), mask_dir, mask_suffix) for i in images]
    elif mask_spec:
      masks = _split(mask_spec)
      if len(masks) != len(images):
        raise ValueError(f"predict.mask lists {len(masks)} masks for {len(images)} scans; give "
                         "one mask per scan (same order) or a folder of masks")
    else:
      masks = [None] * len(images)
    pairs = list(zip(images, masks))
  scans = [Scan(scan_stem(i), i, m) for i, m in pairs]
  seen: dict[str, Scan] = {}
  for s in scans:  # names differing only in case share their files on macOS / Windows
    first = seen.setdefault(s.name.casefold(), s)
    if first is not s and os.path.realpath(first.image) == os.path.realpath(s.image):
      raise ValueError(f"predict.input lists {s.image} twice; list each scan once")
    if first is not s:
      same = repr(s.name) if first.name == s.name else f"{first.name!r} and {s.name!r}"
      raise ValueError(f"predict.input: two scans named {same} ({first.image}, {s.image}); "
                       "outputs are named by scan (case-insensitively), rename one")
  return scans, batch
