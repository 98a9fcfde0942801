"""NIfTI I/O (reading, the one atomic writer) and per-row validation that collects every problem
before any work starts."""

from __future__ import annotations

import dataclasses
import os
from concurrent import futures
from typing import Iterable, Sequence

import nibabel as nib
import numpy as np

from sadm_jax.data.errors import DataError, DataProblems
from sadm_jax.data.splits import Row
from sadm_jax.utils import io

# Allowed label values per role/data set. BraTS uses {1 necrotic, 2 edema, 4 enhancing}.
SEG_LABELS = {"Brats21": {0, 1, 2, 4}}
DEFAULT_SEG_LABELS = {0, 1}
MASK_LABELS = {0, 1}
AFFINE_ATOL = 1e-3


@dataclasses.dataclass
class Volume:
  """A NIfTI volume in voxel order (i, j, k) with its affine."""
  data: np.ndarray  # [H, W, D]
  affine: np.ndarray  # [4, 4]
  path: str

  @property
  def spacing(self) -> tuple[float, float, float]:
    return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def load_volume(path: str, dtype=np.float32) -> Volume:
  """Loads a 3-D NIfTI (trailing singleton dims squeezed); DataError naming the file otherwise."""
  if os.path.isdir(path):
    raise DataError(f"{path}: is a directory, not a NIfTI file")
  if not os.path.isfile(path):
    if os.path.islink(path) and not os.path.exists(path):
      raise DataError(f"{path}: a broken symbolic link (to {os.readlink(path)}; a git-annex or "
                      "DataLad file whose content is not fetched?)")
    if os.path.exists(path):  # a FIFO, socket or device: reading it could block for ever
      raise DataError(f"{path}: not a regular file (a pipe, socket or device)")
    raise DataError(f"{path}: file not found")
  img = None
  try:
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
  except Exception as e:  # nibabel raises many types for truncated/corrupt files
    hint = ""
    if isinstance(e, MemoryError) and img is not None:  # (its message is empty)
      hint = f"; its header's data shape {img.shape} does not fit in memory (a damaged header?)"
    try:
      with open(path, "rb") as f:
        head = f.read(348)
      gzipped = head[:2] == b"\x1f\x8b"  # gzip's magic: nibabel goes by the name
      if gzipped and not path.lower().endswith(".gz"):
        hint = "; the file is gzip-compressed: name it .nii.gz"
      elif path.lower().endswith(".gz") and (head[344:348] == b"n+1\0"  # NIfTI-1's magic
                                             or head[4:8] == b"n+2\0"):  # NIfTI-2's
        hint = "; the file is not gzip-compressed: name it .nii"
    except OSError:  # unreadable: nibabel's own message says so
      pass
    raise DataError(f"{path}: cannot read as NIfTI ({type(e).__name__}: {e}){hint}") from None
  if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)
          or data.dtype == np.bool_):
    raise DataError(f"{path}: data type {data.dtype} is not real-valued (complex or RGB "
                    "volumes cannot be used; save the magnitude or one channel)")
  shape = data.shape
  while data.ndim > 3 and data.shape[-1] == 1:
    data = data[..., 0]
  if data.ndim != 3:
    raise DataError(f"{path}: expected a 3-D volume, got shape {shape} ({len(shape)}-D)")
  with np.errstate(over="ignore"):
    out = np.asarray(data, dtype=dtype)
  # only a narrowing cast (float64 data, scaled integers) can make finite values infinite: a
  # float32, int16 or uint8 file needs no extra pass over its voxels here
  if (not np.can_cast(data.dtype, out.dtype, "safe") and np.issubdtype(out.dtype, np.floating)
      and not np.isfinite(out).all()):
    finite = np.isfinite(data)
    if np.any(finite & ~np.isfinite(out)):  # finite in the file, beyond float32 here
      raise DataError(f"{path}: values up to {float(np.abs(data[finite]).max()):.4g} exceed "
                      f"{out.dtype}'s range (±{float(np.finfo(out.dtype).max):.4g}); rescale the "
                      "scan (e.g. to 0-1000) and retry")
  return Volume(out, np.asarray(img.affine, dtype=np.float64), path)


def save_volume(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray, *,
                header: nib.Nifti1Header | None = None, dtype=None) -> None:
  """Atomically writes `data` [H, W, D] (voxel order) with `affine` [4, 4] as NIfTI-1 (.nii.gz).

  The one NIfTI writer of the project: the file appears complete under `path` or not at all
  (written through `utils.io.atomic_path`). `dtype` casts the data first (default: its own dtype).
  header: a nibabel header to keep (e.g. the input scan's, so that a map written on the scan's own
    grid carries its orientation codes, units and description): it is copied, its data dtype set
    to the data's, its scaling to slope 1, intercept 0, its display window (cal_min/cal_max) and
    intent unset; its sform/qform are kept when they already describe `affine`, else both are set
    to `affine` (keeping their codes, 1 where unset).
    Without a header, sform = qform = `affine`, both with code 1 (scanner), spatial units mm.
  """
  data = np.asarray(data) if dtype is None else np.asarray(data, dtype)
  affine = np.asarray(affine, np.float64)
  if header is None:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
  else:
    hdr = header.copy()
    hdr.set_data_dtype(data.dtype)
    hdr.set_slope_inter(1.0, 0.0)
    hdr["cal_min"] = hdr["cal_max"] = 0  # the header's display window is in the old data's units
    hdr.set_intent("none")  # e.g. a z-score intent does not describe the new data
    if not np.allclose(hdr.get_best_affine(), affine):
      hdr.set_sform(affine, code=int(hdr["sform_code"]) or 1)
      hdr.set_qform(affine, code=int(hdr["qform_code"]) or 1)
    img = nib.Nifti1Image(data, affine, header=hdr)
  with io.atomic_path(path, suffix=".nii.gz") as tmp:
    nib.save(img, tmp)


def check_labels(vol: Volume, allowed: set[int], role: str) -> list[tuple[str, str]]:
  """Problems of a label volume (float32, as `load_volume` reads it) with labels not in `allowed`."""
  # A pass per allowed label finds the voxels to report (NaN/Inf among them); only those are
  # sorted (np.unique sorted the whole volume: ~4x slower for a valid 1 mm mask or segmentation).
  ok = np.isin(vol.data, np.asarray(sorted(allowed), vol.data.dtype))
  if ok.all():
    return []
  bad = np.unique(vol.data[~ok])  # every value here is outside `allowed`
  if not np.all(np.isfinite(bad)):
    return [(vol.path, f"{role} contains NaN/Inf voxels")]
  shown = ", ".join(f"{float(v):g}" for v in bad[:8])
  return [(vol.path, f"{role} has unexpected label value(s) {shown}; allowed {sorted(allowed)}")]


def validate_row(row: Row) -> list[tuple[str, str]]:
  """Returns every (path, problem) of one row; empty when the row is usable."""
  problems: list[tuple[str, str]] = []
  vols = {}
  for role, path in (("image", row.img), ("mask", row.mask), ("seg", row.seg)):
    if path is None:
      continue
    try:
      vols[role] = load_volume(path)
    except DataError as e:
      problems.append((path, str(e).split(": ", 1)[-1]))
  if "image" in vols and not np.all(np.isfinite(vols["image"].data)):
    n = int(np.size(vols["image"].data) - np.isfinite(vols["image"].data).sum())
    problems.append((row.img, f"image contains {n} NaN/Inf voxel(s)"))
  if "mask" in vols:
    problems += check_labels(vols["mask"], MASK_LABELS, "brain mask")
    if not np.any(vols["mask"].data > 0):
      problems.append((row.mask, "brain mask is empty"))
  if "seg" in vols:
    problems += check_labels(vols["seg"], SEG_LABELS.get(row.dataset, DEFAULT_SEG_LABELS),
                              "segmentation")
  ref = vols.get("image")
  if ref is not None:
    for role in ("mask", "seg"):
      other = vols.get(role)
      if other is None:
        continue
      if other.data.shape != ref.data.shape:
        problems.append((other.path, f"{role} shape {other.data.shape} differs from image "
                                     f"shape {ref.data.shape} ({ref.path})"))
      elif not np.allclose(other.affine, ref.affine, atol=AFFINE_ATOL):
        problems.append((other.path, f"{role} affine differs from the image affine ({ref.path})"))
  return problems


def validate_rows(rows: Sequence[Row], num_workers: int = 0) -> dict[int, list[tuple[str, str]]]:
  """Validates rows (optionally in threads; nibabel's gzip reading releases the GIL).

  Returns {position in `rows`: problems} for invalid rows only.
  """
  if num_workers and num_workers > 1 and len(rows) > 1:
    with futures.ThreadPoolExecutor(num_workers) as pool:
      results = list(pool.map(validate_row, rows))
  else:
    results = [validate_row(r) for r in rows]
  return {i: p for i, p in enumerate(results) if p}


def raise_problems(problems: Iterable[tuple[str, str]], header: str) -> None:
  problems = list(problems)
  if problems:
    raise DataProblems(problems, header)
