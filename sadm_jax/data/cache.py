"""Cache of preprocessed volumes as slice-major .npy files, keyed by preprocessing config and file identity."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Callable, Sequence

import numpy as np

from sadm_jax.data import nifti, orientation
from sadm_jax.data.errors import DataError
from sadm_jax.data.preprocess import PreprocessConfig, preprocess_volume
from sadm_jax.data.splits import Row
from sadm_jax.utils import io, workers

CACHE_FORMAT = 1


@dataclasses.dataclass
class CachedVolume:
  """A preprocessed volume, stored slice-major so one axial slice is one contiguous read.

  Attributes:
    image: [D, H, W] float32 (memory-mapped when loaded from the cache).
    mask: [D, H, W] uint8 brain mask.
    seg: [D, H, W] uint8 binary lesion map, or None (healthy).
    affine: [4, 4] affine of the working grid in NIfTI voxel order (i, j, k) = (H, W, D).
    meta: name, dataset, split, paths, per-slice brain voxel counts, lesion voxels, spacing.
  """
  image: np.ndarray
  mask: np.ndarray
  seg: np.ndarray | None
  affine: np.ndarray
  meta: dict

  def volume(self, name: str = "image") -> np.ndarray:
    """The array in NIfTI voxel order [H, W, D]."""
    return np.transpose(getattr(self, name), (1, 2, 0))


def load_array(directory: str, name: str, mmap: bool = True) -> np.ndarray:
  """`<directory>/<name>.npy` of a cache entry; DataError naming a damaged one (truncated, not
  .npy), which deleting the entry repairs: the next run recomputes it."""
  path = os.path.join(directory, f"{name}.npy")
  try:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise DataError(f"{path}: damaged preprocessing cache entry ({type(e).__name__}: {e}); "
                    f"delete {directory} and run again to recompute it") from None


def file_identity(path: str | None) -> list | None:
  """(absolute path, size, mtime_ns): a changed file gets a new identity and a new cache entry."""
  if path is None:
    return None
  st = os.stat(path)
  return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def entry_key(row: Row, cfg: PreprocessConfig) -> str:
  ident = {"format": CACHE_FORMAT, "preprocess": cfg.key(), "img": file_identity(row.img),
           "mask": file_identity(row.mask), "seg": file_identity(row.seg)}
  return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


class VolumeCache:
  """Directory cache: `<cache_dir>/<preprocess key>/<entry key>/{image,mask,seg}.npy + meta.json`.

  Entries are written into a temporary directory and renamed into place, so a reader sees a
  complete entry or none; a killed writer leaves only a `.tmp-*` directory that is ignored, and
  removed by the first computation six hours later (`io.remove_abandoned`).
  """

  def __init__(self, cache_dir: str, cfg: PreprocessConfig):
    self.cfg = cfg
    self.root = os.path.join(os.path.abspath(cache_dir), cfg.key())

  def path(self, row: Row) -> str:
    return os.path.join(self.root, entry_key(row, self.cfg))

  def contains(self, row: Row) -> bool:
    """Whether `row` is cached; False when one of its files cannot be stat'ed (e.g. missing), so
    that validation, not this question, reports the file."""
    try:
      directory = self.path(row)
    except OSError:
      return False
    return os.path.isfile(os.path.join(directory, "meta.json"))

  def load(self, row: Row, mmap: bool = True) -> CachedVolume:
    directory = self.path(row)
    try:
      meta = self.read_meta(directory)
    except FileNotFoundError:
      raise DataError(f"{row.img}: not in the preprocessing cache ({directory}); run the prepare "
                      "stage first") from None
    arrays = {name: load_array(directory, name, mmap)
              for name in ("image", "mask") + (("seg",) if meta["has_seg"] else ())}
    return CachedVolume(arrays["image"], arrays["mask"], arrays.get("seg"),
                        np.asarray(meta["affine"], dtype=np.float64), meta)

  def compute(self, row: Row) -> dict:
    """Preprocesses one row and stores it; returns its meta. A no-op when already cached."""
    directory = self.path(row)
    if os.path.isfile(os.path.join(directory, "meta.json")):
      return self.read_meta(directory)
    if os.path.isdir(directory) and os.listdir(directory):  # entries are renamed into place whole
      raise DataError(f"{directory}: incomplete preprocessing cache entry (no meta.json); delete "
                      "it and run again to recompute it")
    img = nifti.load_volume(row.img)
    mask = nifti.load_volume(row.mask)
    seg = nifti.load_volume(row.seg) if row.seg else None
    out = preprocess_volume(img.data, mask.data, None if seg is None else seg.data, img.affine,
                            self.cfg, source=row.img)
    slice_major = lambda a: np.ascontiguousarray(np.transpose(a, (2, 0, 1)))
    meta = {
        "name": row.name, "dataset": row.dataset, "split": row.split, "label": row.label,
        "age": None if np.isnan(row.age) else row.age, "img": row.img, "mask_path": row.mask,
        "seg_path": row.seg, "has_seg": out.seg is not None,
        "affine": np.asarray(out.affine).tolist(), "shape": list(out.image.shape),
        "source_spacing": list(out.source_spacing), "resampled_to_1mm": bool(out.resampled_to_1mm),
        "slice_brain_voxels": out.mask.sum(axis=(0, 1)).astype(int).tolist(),
        "slice_lesion_voxels": (out.seg.sum(axis=(0, 1)).astype(int).tolist()
                                if out.seg is not None else None),
        "lesion_voxels": int(out.seg.sum()) if out.seg is not None else 0,
        "preprocess": dataclasses.asdict(self.cfg),
    }
    os.makedirs(self.root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=self.root)
    try:
      io.save_npy(os.path.join(tmp, "image.npy"), slice_major(out.image.astype(np.float32)))
      io.save_npy(os.path.join(tmp, "mask.npy"), slice_major(out.mask.astype(np.uint8)))
      if out.seg is not None:
        io.save_npy(os.path.join(tmp, "seg.npy"), slice_major(out.seg.astype(np.uint8)))
      io.write_json(os.path.join(tmp, "meta.json"), meta)
      try:
        os.rename(tmp, directory)
      except OSError:
        if not os.path.isfile(os.path.join(directory, "meta.json")):
          raise  # a genuine failure, not a concurrent writer that finished first
    finally:
      with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(tmp)
    return meta

  @staticmethod
  def read_meta(directory: str) -> dict:
    """The meta.json of the cache entry in `directory`; DataError naming a damaged one."""
    path = os.path.join(directory, "meta.json")
    with open(path, encoding="utf-8") as f:
      try:
        return json.load(f)
      except ValueError as e:
        raise DataError(f"{path}: damaged preprocessing cache entry ({e}); delete {directory} "
                        "and run again to recompute it") from None


def _compute_one(args) -> tuple[int, dict | None, str | None]:
  i, cache_dir, cfg, row = args
  try:
    return i, VolumeCache(cache_dir, cfg).compute(row), None
  except DataError as e:  # listed under the image's path: not named twice
    return i, None, str(e).removeprefix(f"{row.img}: ")


def ensure_cached(rows: Sequence[Row], cache_dir: str, cfg: PreprocessConfig, num_workers: int = 0,
                  progress: Callable[[int, int], None] | None = None,
                  warn_mixed: bool = True) -> list[dict]:
  """Preprocesses every row not yet cached (in `num_workers` spawned processes); returns metas.

  Raises DataError listing every row that failed. Logs `mixed_orientations`' warning unless
  `warn_mixed` is False (a caller that reports it itself: prepare's summary).
  """
  cache = VolumeCache(cache_dir, cfg)
  todo = [(i, cache_dir, cfg, r) for i, r in enumerate(rows) if not cache.contains(r)]
  if todo:  # a read-only or misplaced cache: one error, not one traceback per volume
    try:
      io.probe_writable(cache.root)
    except OSError as e:
      raise DataError(f"{cache.root}: cannot write the preprocessing cache ({e.strerror or e}) for "
                      f"{len(todo)} volume(s) not yet in it; set --config.data.cache_dir to a "
                      "writable directory") from None
    # entries a killed writer left in the making (only old ones: others may be at work)
    if abandoned := io.remove_abandoned(cache.root, recursive=False):
      logging.info("removed %d abandoned temporary entries from %s", abandoned, cache.root)
  logging.info("preprocessing cache %s: %d of %d volumes to compute", cache.root, len(todo),
               len(rows))
  failures = []
  if todo and num_workers > 1:
    results = workers.map_in_processes(_compute_one, todo, num_workers)
    for done, (i, _, err) in enumerate(results, start=1):
      if err:
        failures.append((rows[i].img, err))
      if progress:
        progress(done, len(todo))
  else:
    for done, item in enumerate(todo, start=1):
      i, _, err = _compute_one(item)
      if err:
        failures.append((rows[i].img, err))
      if progress:
        progress(done, len(todo))
  nifti.raise_problems(failures, "preprocessing failed")
  metas = [cache.read_meta(cache.path(r)) for r in rows]
  mixed = mixed_orientations(metas) if warn_mixed else ""
  if mixed:
    logging.warning("%s", mixed)
  return metas


def _axis_codes(metas: Sequence[dict]) -> list[str]:
  return [orientation.axis_codes(np.asarray(m["affine"], np.float64)) for m in metas]


def orientation_counts(metas: Sequence[dict]) -> dict[str, int]:
  """{axis codes (e.g. 'RAS'): number of volumes} of cache entries' working-grid affines."""
  return dict(collections.Counter(_axis_codes(metas)))


def mixed_orientations(metas: Sequence[dict]) -> str:
  """A warning when the volumes are stored in more than one orientation ('' otherwise).

  Preprocessing keeps each file's voxel order (as the reference does): axial slices are the last
  voxel axis and the networks see the arrays as stored, so volumes whose axes point in different
  directions are silently mixed (flipped, or slices of another plane).
  """
  codes = _axis_codes(metas)
  counts = collections.Counter(codes)
  if len(counts) < 2:
    return ""
  where = {}
  for c, m in zip(codes, metas):
    where.setdefault(c, m["img"])
  listed = ", ".join(f"{c}: {n} (e.g. {where[c]})" for c, n in counts.items())
  return (f"volumes are stored in {len(counts)} different orientations ({listed}); their voxel "
          "arrays are used as stored (slices along the last axis), so the networks see them "
          "flipped or permuted against each other: reorient the files to one orientation "
          "(e.g. nibabel.as_closest_canonical for RAS)")
