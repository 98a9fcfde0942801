"""The cohort's overview PNG: one titled row per data set, axial/coronal/sagittal slices through the largest lesion of a typical test subject, with its ground-truth contours."""

from __future__ import annotations

import os

import numpy as np
from scipy import ndimage

from sadm_jax.data import layout, nifti, splits
from sadm_jax.utils import io
from sadm_jax.utils import montage as montage_lib

# Contour colours: any lesion; BraTS tumour core (labels 1 and 4) and necrosis / non-enhancing core.
LESION, CORE, NECROSIS = (255, 40, 40), (255, 230, 0), (0, 220, 255)


def _shown_subject(root: layout.DataRoot, dataset: str
                   ) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
  """(img_name, t1, mask, seg) [X, Y, Z] of the subject shown for `dataset`: the test subject
  with the median lesion volume of its split (a typical case, not the largest); IXI: the first
  row of IXI_test."""
  split = "IXI_test" if dataset == "IXI" else f"{dataset}_test"
  rows = splits.read_split(root, split)
  if dataset == "IXI":
    rows = rows[:1]
  segs = [None if r.seg is None else nifti.load_volume(r.seg, np.uint8).data for r in rows]
  sizes = np.array([0 if s is None else np.count_nonzero(s) for s in segs])
  shown = int(np.argsort(sizes, kind="stable")[(len(sizes) - 1) // 2])
  t1 = nifti.load_volume(rows[shown].img).data
  seg = segs[shown] if segs[shown] is not None else np.zeros(t1.shape, np.uint8)
  return rows[shown].name, t1, nifti.load_volume(rows[shown].mask, np.uint8).data, seg


def _lesion_centre(seg: np.ndarray, mask: np.ndarray) -> tuple[int, int, int]:
  """A voxel of the largest lesion component nearest its centroid (the brain centre if none)."""
  labels, n = ndimage.label(seg > 0)
  if n == 0:
    pos = np.argwhere(mask > 0)
    return tuple(int(v) for v in (pos.min(0) + pos.max(0)) // 2)
  sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
  pos = np.argwhere(labels == 1 + int(np.argmax(sizes)))
  best = pos[np.argmin(((pos - pos.mean(0)) ** 2).sum(1))]
  return tuple(int(v) for v in best)


def _panel(t1: np.ndarray, seg: np.ndarray, vmax: float, brats: bool) -> np.ndarray:
  """One slice [A, B] (first axis = the image's horizontal) -> uint8 [B, A, 3], upright, with
  lesion contours (BraTS: also tumour core and necrosis)."""
  rgb = montage_lib.grey(t1, 0.0, vmax)
  regions = [(seg > 0, LESION)]
  if brats:
    regions += [((seg == 1) | (seg == 4), CORE), (seg == 1, NECROSIS)]
  for region, colour in regions:
    rgb[montage_lib.contour(region)] = colour
  return np.ascontiguousarray(np.flipud(rgb.transpose(1, 0, 2)))


def write_montage(root: str | os.PathLike, out_png: str | os.PathLike) -> str:
  """Writes the cohort's overview PNG and returns its path.

  One row per data set (titled "<dataset>  <img_name>  (<lesion> ml)"), columns titled axial /
  coronal / sagittal, each slice through the largest lesion of the data set's median-lesion-volume
  test subject, with the ground-truth contour in red (BraTS: yellow = tumour core, cyan =
  necrosis / non-enhancing core).
  """
  data_root = layout.resolve_data_root(os.fspath(root))
  rows, titles = [], []
  for dataset in layout.DATASETS:
    name, t1, mask, seg = _shown_subject(data_root, dataset)
    x, y, z = _lesion_centre(seg, mask)
    vmax = float(np.percentile(t1[mask > 0], 99.5)) if mask.any() else 1.0
    brats = dataset == "Brats21"
    rows.append([_panel(t1[:, :, z], seg[:, :, z], vmax, brats),  # axial: anterior up
                 _panel(t1[:, y, :], seg[:, y, :], vmax, brats),  # coronal: superior up
                 _panel(t1[x, :, :], seg[x, :, :], vmax, brats)])  # sagittal: anterior right
    lesion = f"  ({np.count_nonzero(seg) / 1000:.1f} ml lesion)" if dataset != "IXI" else ""
    titles.append(f"{dataset}  {name}{lesion}")
  image = montage_lib.grid(rows, col_titles=("axial", "coronal", "sagittal"), row_titles=titles)
  io.write_png(out_png, image)
  return os.fspath(out_png)
