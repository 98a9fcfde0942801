"""Tiny synthetic DATA_DIRs in the authors' layout for data-layer tests (independent of the demo)."""

from __future__ import annotations

import csv
import os

import nibabel as nib
import numpy as np

SHAPE = (40, 44, 30)
HEADER = ["", "img_name", "sex", "label", "age", "img_path", "mask_path", "seg_path"]


def rotation_affine() -> np.ndarray:
  """A 1-mm affine with a rotation about k and a translation (voxel → world)."""
  c, s = np.cos(0.3), np.sin(0.3)
  return np.array([[c, -s, 0.0, -20.0], [s, c, 0.0, 7.5], [0.0, 0.0, 1.0, 3.0], [0, 0, 0, 1.0]])


def make_subject(rng: np.random.Generator, shape=SHAPE, lesion: bool = False, brats: bool = False):
  """(image float32, mask uint8, seg uint8 | None): an ellipsoid 'brain' with an optional blob."""
  grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
  mask = ((grid ** 2).sum(0) < 0.7).astype(np.uint8)
  image = (400 + 200 * grid[0] + rng.normal(0, 20, shape)).astype(np.float32) * mask
  seg = None
  if lesion:
    c = rng.uniform(-0.25, 0.25, 3)[:, None, None, None]
    blob = ((grid - c) ** 2).sum(0) < 0.06
    image[blob] *= 0.3
    seg = blob.astype(np.uint8)
    if brats:
      core = ((grid - c) ** 2).sum(0) < 0.02
      seg = np.where(core, 1, np.where(blob, 2, 0)).astype(np.uint8)
  return image, mask, seg


def save(path: str, data: np.ndarray, affine=None) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)


def write_data_dir(root: str, data_level: bool = True, n_ixi: int = 8, n_patho: int = 3,
                   seed: int = 0, affine=None) -> str:
  """Writes IXI (5 folds + test) and Brats21/ATLAS_v2 val/test splits; returns the base dir."""
  rng = np.random.default_rng(seed)
  base = os.path.join(root, "Data") if data_level else root
  ixi = []
  for i in range(n_ixi):
    name = f"IXI{i:03d}-Fake-{i:04d}"
    img, mask, _ = make_subject(rng)
    save(f"{base}/Train/ixi/t1/{name}_t1.nii.gz", img, affine)
    save(f"{base}/Train/ixi/mask/{name}_mask.nii.gz", mask, affine)
    ixi.append([name, "F", 0, 40 + i, f"/Train/ixi/t1/{name}_t1.nii.gz",
                f"/Train/ixi/mask/{name}_mask.nii.gz", ""])
  test = ixi[-2:]
  pool = ixi[:-2]
  for k in range(5):
    val = [pool[k % len(pool)]]
    train = [r for r in pool if r not in val]
    write_csv(f"{base}/splits/IXI_train_fold{k}.csv", train)
    write_csv(f"{base}/splits/IXI_val_fold{k}.csv", val)
  write_csv(f"{base}/splits/IXI_test.csv", test)
  for ds in ("Brats21", "ATLAS_v2"):
    for split in ("val", "test"):
      rows = []
      for i in range(n_patho):
        name = f"{ds}_{split}_{i:03d}"
        img, mask, seg = make_subject(rng, lesion=True, brats=ds == "Brats21")
        save(f"{base}/Test/{ds}/t1/{name}_t1.nii.gz", img, affine)
        save(f"{base}/Test/{ds}/mask/{name}_mask.nii.gz", mask, affine)
        save(f"{base}/Test/{ds}/seg/{name}_seg.nii.gz", seg, affine)
        rows.append([name, "M", 1, 50 + i, f"/Test/{ds}/t1/{name}_t1.nii.gz",
                     f"/Test/{ds}/mask/{name}_mask.nii.gz", f"/Test/{ds}/seg/{name}_seg.nii.gz"])
      write_csv(f"{base}/splits/{ds}_{split}.csv", rows)
  return base


def write_csv(path: str, rows, header=HEADER) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    for i, r in enumerate(rows):
      w.writerow([i] + list(r))


def read_csv(path: str):
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  return rows[0], rows[1:]
