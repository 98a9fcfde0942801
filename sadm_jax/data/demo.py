"""Offline demo cohort (IXI/BraTS/ATLAS/MSLUB/WMH) from the MNI152 2009 template, authors' layout.

Every subject is the nilearn ICBM152 2009 template (T1, GM and WM maps, 1 mm) under a random
affine + elastic deformation, with per-subject tissue contrast, gamma, bias field and Rician noise,
skull-stripped with the deformed brain mask. Pathological subjects get lesions drawn into the
deformed anatomy:

* `Brats21`: an irregular tumour with a CSF-like necrotic centre (label 1), a GM-like rim (label 4,
  "enhancing" in BraTS terms) and mildly hypointense edema spreading along white matter (label 2);
  a radial displacement field pushes the surrounding tissue (mass effect). LGG cases have a
  non-enhancing core (label 1) and no rim.
* `ATLAS_v2`: chronic strokes, wedges with their base on the cortex of an MCA/ACA/PCA-like territory
  (or a deep lacune), intensity pulled toward CSF.
* `MSLUB` / `WMH`: several small ovoid periventricular and deep white-matter lesions, hypointense.

The cohort is written exactly as the authors' code expects it (`<root>/Data/...`, §2.1 of
docs/method.md). Each subject's randomness is `np.random.default_rng([seed, dataset_index, subject])`,
so the output does not depend on the number of worker processes. All subjects share the
template's folding pattern: good for demos and tests, not a benchmark.
"""

from __future__ import annotations

import csv
import dataclasses
import io as pyio
import json
import math
import multiprocessing
import os
import time
from typing import Any, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from sadm_jax.utils import io

DATASETS = ("IXI", "Brats21", "ATLAS_v2", "MSLUB", "WMH")  # dataset_index = position here
PATHOLOGICAL = DATASETS[1:]
NUM_FOLDS = 5
GENERATOR_VERSION = 1
MARKER_NAME = ".demo_complete.json"

# Dataset-specific metadata columns, between `img_name` and `label` (as in the authors' CSVs).
META_COLUMNS = {"IXI": ("sex", "site"), "Brats21": ("grade",),
                "ATLAS_v2": ("site", "lesion_volume_ml"), "MSLUB": ("scanner",),
                "WMH": ("scanner",)}
_SUBDIR = {"IXI": "Train/ixi", "Brats21": "Test/Brats21", "ATLAS_v2": "Test/ATLAS_v2",
           "MSLUB": "Test/MSLUB", "WMH": "Test/WMH"}

# Field of view: a box of the 1 mm template grid holding the whole brain plus a margin.
_CROP = (slice(18, 178), slice(17, 217), slice(0, 164))  # -> [160, 200, 164]
# Template T1 value (0..1) of pure CSF, GM and WM.
_T_CSF, _T_GM, _T_WM = 0.28, 0.65, 0.87
# Brain mask of a deformed subject: its (pre-lesion) image above this level. The template mask
# is T1 > 0.2 and boundary voxels are GM/CSF mixtures (~0.3), so this is about the warped mask.
_MASK_LEVEL = 0.15
# Lesion centres stay within these axial slices (the data layer keeps the central 100 of 164).
_Z_RANGE = (50, 116)
# Std of a cubic B-spline field whose knots are i.i.d. N(0, 1) (3-D).
_SPLINE_STD = 0.35

# Scanner profiles: WM intensity in scanner units, Rician noise as a fraction of WM.
_IXI_SITES = {"Guys": (720.0, 0.025), "HH": (1150.0, 0.018), "IOP": (480.0, 0.03)}
_WMH_SCANNERS = {"Utrecht Philips Achieva 3T": (900.0, 0.02),
                 "Singapore Siemens TrioTim 3T": (640.0, 0.022),
                 "Amsterdam GE Signa HDxt 3T": (1050.0, 0.025)}
_MSLUB_SCANNERS = {"Ljubljana Siemens Magnetom Trio 3T": (820.0, 0.02)}


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """Size and seed of a demo cohort. The defaults are the default demo (~1–2 min on 2 cores).

  Attributes:
    seed: master seed; subject s of data set d uses `default_rng([seed, d, s])`.
    n_ixi_trainval: healthy IXI pool split by a 5-fold K-fold into `IXI_{train,val}_fold{k}`.
    n_ixi_test: further healthy subjects for `IXI_test` (disjoint from the pool).
    n_<dataset>_val / n_<dataset>_test: rows of `<Dataset>_val.csv` / `<Dataset>_test.csv`.
    num_workers: processes (spawn); results do not depend on it. <= 1 runs in this process.
  """
  seed: int = 0
  n_ixi_trainval: int = 20
  n_ixi_test: int = 5
  n_brats21_val: int = 5
  n_brats21_test: int = 6
  n_atlas_v2_val: int = 5
  n_atlas_v2_test: int = 6
  n_mslub_val: int = 4
  n_mslub_test: int = 5
  n_wmh_val: int = 4
  n_wmh_test: int = 5
  num_workers: int = 2

  def __post_init__(self):
    if self.n_ixi_trainval < NUM_FOLDS:
      raise ValueError(f"n_ixi_trainval={self.n_ixi_trainval}: need >= {NUM_FOLDS} for "
                       f"{NUM_FOLDS} folds")
    counts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
              if f.name.startswith("n_")}
    bad = {k: v for k, v in counts.items() if v < 1}
    if bad:
      raise ValueError(f"every split needs >= 1 subject, got {bad}")

  @classmethod
  def default(cls, **overrides: Any) -> DemoConfig:
    """The default demo cohort (20+5 IXI, 9–11 volumes per pathological data set)."""
    return cls(**overrides)

  @classmethod
  def tiny(cls, **overrides: Any) -> DemoConfig:
    """A handful of volumes for tests: 5+1 IXI and one val + one test volume per pathology."""
    sizes = dict(n_ixi_trainval=5, n_ixi_test=1)
    sizes.update({f"n_{d.lower()}_{s}": 1 for d in PATHOLOGICAL for s in ("val", "test")})
    sizes.update(overrides)
    return cls(**sizes)

  def split_sizes(self, dataset: str) -> tuple[int, int]:
    """(pool or val size, test size) of `dataset`; subjects 0.. are the pool/val, then test."""
    if dataset == "IXI":
      return self.n_ixi_trainval, self.n_ixi_test
    key = dataset.lower()
    return getattr(self, f"n_{key}_val"), getattr(self, f"n_{key}_test")

  def identity(self) -> dict[str, int]:
    """The fields that determine the output (everything but `num_workers`)."""
    return {k: v for k, v in dataclasses.asdict(self).items() if k != "num_workers"}


@dataclasses.dataclass(frozen=True)
class DemoSubject:
  """One synthetic subject.

  Attributes:
    name: `img_name` (e.g. `BraTS2021_00003`).
    dataset: one of DATASETS.
    meta: dataset-specific CSV columns (META_COLUMNS) plus `age`.
    t1: [X, Y, Z] float32 skull-stripped T1 (integer-valued scanner units, 0 outside the brain).
    mask: [X, Y, Z] uint8 brain mask {0, 1}.
    seg: [X, Y, Z] uint8 lesion labels ({0,1,2,4} for Brats21, {0,1} otherwise; zeros for IXI).
    affine: [4, 4] voxel -> MNI mm (1 mm isotropic).
  """
  name: str
  dataset: str
  meta: dict[str, Any]
  t1: np.ndarray
  mask: np.ndarray
  seg: np.ndarray
  affine: np.ndarray


# ----------------------------------------------------------------------------- template


@dataclasses.dataclass(frozen=True)
class _Template:
  """The cropped ICBM152 2009 maps, all [X, Y, Z] float32, and the crop's affine [4, 4]."""
  t1: np.ndarray
  gm: np.ndarray
  wm: np.ndarray
  csf: np.ndarray
  mask: np.ndarray
  affine: np.ndarray
  centre: np.ndarray  # [3] centre of the brain's bounding box (voxels)


_TEMPLATE_CACHE: list[_Template] = []  # this process's template (loaded, or sent by the parent)


def _template() -> _Template:
  """The template, loaded once per process (pool workers receive the parent's copy)."""
  if not _TEMPLATE_CACHE:
    _TEMPLATE_CACHE.append(_load_template())
  return _TEMPLATE_CACHE[0]


def _load_template() -> _Template:
  """Loads and crops the nilearn-bundled ICBM152 2009 maps; never touches the network."""
  from nilearn import datasets  # local import: slow, and only the generator needs it

  def load(fn):
    img = fn(resolution=1)
    return np.asarray(img.get_fdata(dtype=np.float32)[_CROP]), img.affine

  t1, affine = load(datasets.load_mni152_template)
  mask = load(datasets.load_mni152_brain_mask)[0]
  mask = (mask > 0.5).astype(np.float32)
  gm = load(datasets.load_mni152_gm_template)[0] * mask
  wm = load(datasets.load_mni152_wm_template)[0] * mask
  csf = np.clip(mask - gm - wm, 0.0, 1.0)
  crop_affine = affine.copy()
  crop_affine[:3, 3] = affine[:3, :3] @ np.array([s.start for s in _CROP]) + affine[:3, 3]
  idx = np.argwhere(mask > 0)
  centre = (idx.min(0) + idx.max(0)).astype(np.float32) / 2
  return _Template(t1 * mask, gm, wm, csf, mask, crop_affine, centre)


# ----------------------------------------------------------------------------- smooth fields


def _spline_weights(pos: np.ndarray, spacing: float, n_knots: int) -> np.ndarray:
  """[n, n_knots] cubic B-spline weights of voxel positions `pos` [n]; knot k at (k-1)*spacing."""
  d = np.abs(pos.astype(np.float64)[:, None] / spacing + 1.0 - np.arange(n_knots)[None, :])
  w = np.where(d < 1, 2 / 3 - d ** 2 + 0.5 * d ** 3, np.where(d < 2, (2 - d) ** 3 / 6, 0.0))
  return w.astype(np.float32)


def _n_knots(n: int, spacing: float) -> int:
  return int(math.ceil(max(n - 1, 1) / spacing)) + 3


def _spline_field(knots: np.ndarray, weights: Sequence[np.ndarray]) -> np.ndarray:
  """Separable B-spline: knots [a, b, c] and weights ([nx, a], [ny, b], [nz, c]) -> [nx, ny, nz]."""
  wx, wy, wz = weights
  t = np.tensordot(wx, knots, axes=(1, 0))  # [nx, b, c]
  t = np.einsum("jb,ibc->ijc", wy, t)  # [nx, ny, c]
  return np.ascontiguousarray(t @ wz.T)  # [nx, ny, nz]


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], spacing: float) -> np.ndarray:
  """A smooth random field over a box [*shape]: about unit std, clipped to [-2, 2], correlation
  length ~spacing (voxels)."""
  n_knots = [_n_knots(n, spacing) for n in shape]
  knots = rng.standard_normal(n_knots).astype(np.float32)
  weights = [_spline_weights(np.arange(n), spacing, k) for n, k in zip(shape, n_knots)]
  return np.clip(_spline_field(knots, weights) / np.float32(_SPLINE_STD), -2.0, 2.0)


def _random_rotation(rng: np.random.Generator, max_angle: float | None = None) -> np.ndarray:
  """[3, 3] rotation: uniform if `max_angle` is None, else by <= max_angle rad about some axis."""
  if max_angle is None:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
  else:
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    half = 0.5 * rng.uniform(-max_angle, max_angle)
    q = np.concatenate([[math.cos(half)], math.sin(half) * axis])
  w, x, y, z = q
  return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                   [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                   [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


# ----------------------------------------------------------------------------- deformation


@dataclasses.dataclass(frozen=True)
class _Warp:
  """Maps output voxels p to template voxels q = A (p + e(p) - m(p) - c) + c + t.

  e is a B-spline elastic displacement, m an optional radial mass effect around a tumour centre
  (tissue at radius r comes from radius r (1 - a exp(-r^2 / 2 sigma^2)): pushed outward).
  """
  matrix: np.ndarray  # [3, 3]
  shift: np.ndarray  # [3]
  centre: np.ndarray  # [3]
  knots: np.ndarray  # [3, ka, kb, kc] elastic displacement (voxels) at the knots
  spacing: float
  mass: tuple[tuple[float, float, float], float, float] | None = None  # (centre, a, sigma)

  def coords(self, ix: np.ndarray, iy: np.ndarray, iz: np.ndarray) -> np.ndarray:
    """Template coordinates [3, nx, ny, nz] (float32) of the grid ix x iy x iz (each ascending)."""
    axes = [np.asarray(a, np.float32) for a in (ix, iy, iz)]
    weights = [_spline_weights(a, self.spacing, k) for a, k in zip(axes, self.knots.shape[1:])]
    m = self.matrix.astype(np.float32)
    # A is linear: A e(p) is the spline of the knots mapped by A, A (p - c) is separable.
    knots = np.tensordot(m, self.knots, axes=(1, 0))
    out = np.empty((3,) + tuple(len(a) for a in axes), np.float32)
    for i in range(3):
      out[i] = _spline_field(knots[i], weights)
      for j, shape in enumerate(((-1, 1, 1), (1, -1, 1), (1, 1, -1))):
        out[i] += (m[i, j] * (axes[j] - np.float32(self.centre[j]))).reshape(shape)
      out[i] += np.float32(self.centre[i] + self.shift[i])
    if self.mass is not None:
      self._add_mass_effect(out, axes, m)
    return out

  def _add_mass_effect(self, out: np.ndarray, axes: list[np.ndarray], m: np.ndarray) -> None:
    """Subtracts A f(r) (p - c) within 4 sigma of the tumour centre (negligible beyond)."""
    c, amp, sigma = self.mass
    box = tuple(slice(int(np.searchsorted(a, c[i] - 4 * sigma)),
                      int(np.searchsorted(a, c[i] + 4 * sigma, side="right")))
                for i, a in enumerate(axes))
    v = [(axes[i][box[i]] - np.float32(c[i])).reshape([-1 if j == i else 1 for j in range(3)])
         for i in range(3)]
    r2 = v[0] ** 2 + v[1] ** 2 + v[2] ** 2
    f = np.float32(amp) * np.exp(r2 * np.float32(-0.5 / sigma ** 2))
    for i in range(3):
      out[(i,) + box] -= f * (m[i, 0] * v[0] + m[i, 1] * v[1] + m[i, 2] * v[2])


def _random_warp(rng: np.random.Generator, tmpl: _Template) -> _Warp:
  """Random rotation (<= 3 deg), scale (0.95–1.05 per axis), shift (<= 2 mm), elastic (~2 mm)."""
  rot = _random_rotation(rng, math.radians(3.0))
  scale = rng.uniform(0.95, 1.05, 3)
  matrix = rot @ np.diag(1.0 / scale)  # sampling map: output is scaled by `scale`
  shift = rng.uniform(-2.0, 2.0, 3)
  spacing = 20.0
  shape = tmpl.t1.shape
  knots = rng.normal(0.0, rng.uniform(4.0, 7.0), (3,) + tuple(_n_knots(n, spacing) for n in shape))
  return _Warp(matrix, shift, tmpl.centre, knots.astype(np.float32), spacing)


def _sample(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
  """Trilinear interpolation of `volume` at `coords` [3, ...] (0 outside)."""
  return ndimage.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0,
                                 prefilter=False).astype(np.float32)


# ----------------------------------------------------------------------------- anatomy


@dataclasses.dataclass(frozen=True)
class _LowRes:
  """Deformed tissue maps on every 2nd voxel, for lesion placement. Arrays [X/2, Y/2, Z/2]."""
  gm: np.ndarray
  wm: np.ndarray
  csf: np.ndarray
  mask: np.ndarray  # bool
  depth: np.ndarray  # mm from the brain surface (0 outside)
  vent_dist: np.ndarray  # mm from the ventricles
  vent_grad: np.ndarray  # [3, ...] unit vectors pointing away from the ventricles
  norm: tuple[np.ndarray, np.ndarray, np.ndarray]  # brain-bbox coordinates in [-1, 1] (x, y, z)
  centre: np.ndarray  # [3] brain centre (full-resolution voxels)

  def z_ok(self) -> np.ndarray:
    z = np.arange(self.mask.shape[2]) * 2
    return ((z >= _Z_RANGE[0]) & (z <= _Z_RANGE[1]))[None, None, :]


def _low_res(tmpl: _Template, warp: _Warp) -> _LowRes:
  idx = [np.arange(0, n, 2) for n in tmpl.t1.shape]
  coords = warp.coords(*idx)
  gm, wm, brain = (_sample(v, coords) for v in (tmpl.gm, tmpl.wm, tmpl.mask))
  csf = np.clip(brain - gm - wm, 0.0, 1.0)
  mask = brain > 0.5
  depth = ndimage.distance_transform_edt(mask).astype(np.float32) * 2
  vent = (csf > 0.5) & (depth > 12)
  vent_dist = ndimage.distance_transform_edt(~vent).astype(np.float32) * 2
  grad = np.stack(np.gradient(ndimage.gaussian_filter(vent_dist, 1.0)))
  grad /= np.maximum(np.linalg.norm(grad, axis=0), 1e-6)
  pos = np.argwhere(mask)
  lo, hi = pos.min(0), pos.max(0)
  half = np.maximum((hi - lo) / 2, 1)
  norm = tuple(((np.arange(n) - (lo[i] + hi[i]) / 2) / half[i]).reshape(
      [-1 if j == i else 1 for j in range(3)]) for i, n in enumerate(mask.shape))
  return _LowRes(gm, wm, csf, mask, depth, vent_dist, grad.astype(np.float32), norm,
                 (lo + hi).astype(np.float64))


def _pick(rng: np.random.Generator, candidates: np.ndarray, fallback: np.ndarray) -> np.ndarray:
  """A random full-resolution voxel [3] among low-res `candidates` (or `fallback` when empty)."""
  pos = np.argwhere(candidates)
  if len(pos) == 0:
    pos = np.argwhere(fallback)
  return (pos[rng.integers(len(pos))] * 2).astype(np.float64)


@dataclasses.dataclass
class _Canvas:
  """The deformed subject being drawn on. image: [X, Y, Z] float32 in template units (WM ~0.87)."""
  image: np.ndarray
  mask: np.ndarray  # bool
  seg: np.ndarray  # uint8
  levels: dict[str, float]  # subject's pure-tissue levels 'csf', 'gm', 'wm' (template units)
  tmpl: _Template
  warp: _Warp

  def box(self, centre: np.ndarray, half: float) -> tuple[tuple[slice, ...], list[np.ndarray]]:
    """Slices and index vectors of a cube of half-size `half` (voxels) around `centre`, clipped."""
    sl = []
    for c, n in zip(centre, self.image.shape):
      lo = int(np.clip(math.floor(c - half), 0, n - 1))
      hi = int(np.clip(math.ceil(c + half) + 1, lo + 1, n))
      sl.append(slice(lo, hi))
    return tuple(sl), [np.arange(s.start, s.stop) for s in sl]

  def tissue(self, idx: Sequence[np.ndarray], name: str) -> np.ndarray:
    """Deformed probability map `name` ('gm' | 'wm' | 'csf') over a box given by index vectors."""
    return _sample(getattr(self.tmpl, name), self.warp.coords(*idx))

  def paint(self, box: tuple[slice, ...], alpha: np.ndarray, target: np.ndarray | float,
            label: int) -> None:
    """Blends `target` into the image with weight alpha (brain only); seg = label where > 0.5."""
    a = np.clip(alpha, 0.0, 1.0) * self.mask[box]
    view = self.image[box]
    view += a * (target - view)
    self.seg[box][a > 0.5] = label


def _offsets(idx: Sequence[np.ndarray], centre: np.ndarray) -> list[np.ndarray]:
  """Broadcastable offsets (mm) of a box's voxels from `centre` [3]."""
  return [(idx[i].astype(np.float32) - np.float32(centre[i])).reshape(
      [-1 if j == i else 1 for j in range(3)]) for i in range(3)]


def _ellipsoid_radius(v: Sequence[np.ndarray], rot: np.ndarray, radii: Sequence[float]
                      ) -> np.ndarray:
  """Normalised ellipsoid radius (1 on the surface) for offsets v; rot rows are the axes."""
  total = 0.0
  for k in range(3):
    proj = rot[k, 0] * v[0] + rot[k, 1] * v[1] + rot[k, 2] * v[2]
    total = total + (proj / np.float32(radii[k])) ** 2
  return np.sqrt(total)


def _soft(rho: np.ndarray, scale_mm: float, width_mm: float = 1.5) -> np.ndarray:
  """Soft inside-ness of a normalised radius (1 = boundary) with an edge `width_mm` wide."""
  return np.clip(0.5 + (1.0 - rho) * np.float32(scale_mm / width_mm), 0.0, 1.0)


def _basis(direction: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """[3, 3] orthonormal rows, the first along `direction`."""
  u = direction / max(np.linalg.norm(direction), 1e-6)
  other = rng.standard_normal(3)
  other -= other.dot(u) * u
  other /= max(np.linalg.norm(other), 1e-6)
  return np.stack([u, other, np.cross(u, other)])


# ----------------------------------------------------------------------------- lesions


@dataclasses.dataclass(frozen=True)
class _TumourPlan:
  centre: np.ndarray  # [3] voxels
  radius: float  # core radius, mm
  edema: float  # extra edema reach in WM, relative to the radius
  hgg: bool


def _plan_tumour(rng: np.random.Generator, low: _LowRes, grade: str) -> _TumourPlan:
  hgg = grade == "HGG"
  radius = rng.uniform(10.0, 17.0) if hgg else rng.uniform(8.0, 13.0)
  edema = rng.uniform(0.6, 1.1) if hgg else rng.uniform(0.3, 0.6)
  xn = low.norm[0]
  cand = low.mask & (low.depth > radius + 6) & (low.wm > 0.4) & (np.abs(xn) > 0.2) & low.z_ok()
  centre = _pick(rng, cand, low.mask & low.z_ok())
  return _TumourPlan(centre, radius, edema, hgg)


def _paint_tumour(canvas: _Canvas, rng: np.random.Generator, plan: _TumourPlan) -> None:
  r = plan.radius
  box, idx = canvas.box(plan.centre, r * (1 + plan.edema) * 1.3 + 4)
  shape = tuple(len(i) for i in idx)
  v = _offsets(idx, plan.centre)
  radii = r * rng.uniform(0.8, 1.2, 3)
  rho0 = _ellipsoid_radius(v, _random_rotation(rng), radii)  # 1 on the mean core surface
  coords = canvas.warp.coords(*idx)
  wm = np.clip(ndimage.gaussian_filter(_sample(canvas.tmpl.wm, coords), 2.0) * 1.3, 0.0, 1.0)
  csf = _sample(canvas.tmpl.csf, coords)
  lv = canvas.levels
  tex = _smooth_noise(rng, shape, 3.0)
  # Edema: mildly hypointense, reaching further along white matter, sparing CSF.
  rho_e = rho0 * (1 + 0.2 * _smooth_noise(rng, shape, 8.0)) / (1 + plan.edema * wm)
  alpha_e = _soft(rho_e, r) * (1 - np.clip(csf * 1.5, 0, 1))
  factor = rng.uniform(0.84, 0.9)
  canvas.paint(box, alpha_e, canvas.image[box] * np.float32(factor) * (1 + 0.03 * tex), 2)
  # Core: irregular; GM-like rim (HGG, label 4) or non-enhancing core (LGG, label 1).
  rho = rho0 * (1 + 0.18 * _smooth_noise(rng, shape, 6.0))
  alpha_core = _soft(rho, r)
  rim_level = lv["wm"] * rng.uniform(0.72, 0.8)
  canvas.paint(box, alpha_core, rim_level * (1 + 0.06 * tex), 4 if plan.hgg else 1)
  if plan.hgg:  # necrotic centre: CSF-like, inside the core
    frac = rng.uniform(0.45, 0.7)
    rho_n = rho0 * (1 + 0.25 * _smooth_noise(rng, shape, 5.0)) / np.float32(frac)
    necro = lv["csf"] * rng.uniform(1.15, 1.5)
    canvas.paint(box, _soft(rho_n, r * frac) * alpha_core, necro * (1 + 0.05 * tex), 1)


_TERRITORIES = ("MCA", "MCA", "MCA", "ACA", "PCA", "lacune")


def _paint_stroke(canvas: _Canvas, rng: np.random.Generator, low: _LowRes) -> None:
  """One chronic stroke: a cortical wedge in a vascular territory, or a deep lacune."""
  territory = _TERRITORIES[rng.integers(len(_TERRITORIES))]
  side = 1.0 if rng.random() < 0.5 else -1.0
  xn, yn, zn = low.norm
  sx = side * xn
  zok = low.z_ok()
  if territory == "lacune":
    cand = (low.gm > 0.45) & (sx > 0.08) & (sx < 0.4) & (np.abs(yn) < 0.35) & (low.depth > 16) & zok
    centre = _pick(rng, cand, low.mask & (low.depth > 16) & zok)
    rad = rng.uniform(3.0, 7.0)
    box, idx = canvas.box(centre, 1.6 * rad + 3)
    radii = rad * rng.uniform(0.7, 1.3, 3)
    rho = _ellipsoid_radius(_offsets(idx, centre), _random_rotation(rng), radii)
    rho *= 1 + 0.12 * _smooth_noise(rng, rho.shape, 3.0)
    _paint_infarct(canvas, rng, box, idx, _soft(rho, rad, 1.0))
    return
  surface = low.mask & (low.depth <= 4) & zok
  region = {"MCA": (sx > 0.55) & (np.abs(yn) < 0.55) & (zn > -0.35) & (zn < 0.6),
            "ACA": (sx > 0.02) & (sx < 0.3) & (yn > -0.45) & (yn < 0.65) & (zn > 0.35),
            "PCA": (yn < -0.6) & (sx > 0.05) & (zn > -0.45) & (zn < 0.35)}[territory]
  base = _pick(rng, surface & region, surface & (sx > 0.3))
  hub = low.centre + np.array([side * 12.0, 0.0, 0.0])  # toward the ipsilateral deep nuclei
  length = rng.uniform(20.0, 35.0) if territory != "MCA" else rng.uniform(25.0, 45.0)
  axis = (base - hub) / max(np.linalg.norm(base - hub), 1e-6)
  apex = base - length * axis
  # Elliptic cone from the apex to the cortex: half-angles differ across the two cross axes.
  tans = np.tan(rng.uniform(0.4, 0.75, 2))
  box, idx = canvas.box((apex + base) / 2, length / 2 + (length + 8) * tans.max() * 1.3 + 4)
  v = _offsets(idx, apex)
  rows = _basis(axis, rng)
  proj = [rows[k, 0] * v[0] + rows[k, 1] * v[1] + rows[k, 2] * v[2] for k in range(3)]
  along = np.maximum(proj[0], 0.5)
  q = np.sqrt((proj[1] / (along * tans[0])) ** 2 + (proj[2] / (along * tans[1])) ** 2)
  q /= 1 + 0.25 * _smooth_noise(rng, q.shape, 8.0)
  alpha = np.clip(0.5 + (1 - q) * along * np.float32(tans.mean() / 1.5), 0, 1)
  alpha *= np.clip(0.5 + proj[0] / 1.5, 0, 1) * np.clip(0.5 + (length + 8 - proj[0]) / 1.5, 0, 1)
  _paint_infarct(canvas, rng, box, idx, alpha)


def _paint_infarct(canvas: _Canvas, rng: np.random.Generator, box, idx, alpha: np.ndarray) -> None:
  """Pulls the tissue under `alpha` toward CSF (label 1), sparing the ventricles."""
  alpha = alpha * (canvas.tissue(idx, "csf") < 0.6)
  strength = rng.uniform(0.7, 0.95)
  csf = canvas.levels["csf"] * rng.uniform(1.0, 1.35)
  tex = _smooth_noise(rng, alpha.shape, 3.0)
  target = (canvas.image[box] * np.float32(1 - strength)
            + np.float32(csf * strength) * (1 + 0.06 * tex))
  canvas.paint(box, alpha, target, 1)


def _wm_lesion_radii(rng: np.random.Generator, ms: bool, periventricular: bool) -> tuple:
  """Semi-axes (mm) of one lesion; the first is along the normal to the ventricle wall."""
  if ms:  # ovoid, long axis perpendicular to the ventricles (Dawson's fingers); some large
    long, short = (rng.uniform(6.0, 10.0), rng.uniform(3.0, 4.5)) if rng.random() < 0.3 else (
        rng.uniform(3.5, 6.5), rng.uniform(2.0, 3.2))
    return long, short * rng.uniform(0.8, 1.2), short
  if periventricular:  # flat cap along the ventricle wall, sometimes confluent
    scale = rng.uniform(1.4, 2.0) if rng.random() < 0.35 else 1.0
    return rng.uniform(2.5, 4.0), rng.uniform(4.0, 7.0) * scale, rng.uniform(3.0, 5.0) * scale
  return tuple(rng.uniform(2.0, 4.0, 3))  # punctate deep lesion


def _paint_wm_lesions(canvas: _Canvas, rng: np.random.Generator, low: _LowRes, kind: str) -> None:
  """Several hypointense ovoid periventricular / deep white-matter lesions (MS or small-vessel)."""
  ms = kind == "MSLUB"
  n = int(rng.integers(8, 19) if ms else rng.integers(6, 15))
  # Above the temporal lobes and the cerebellum, off the midline (septum, fornix).
  zok = low.z_ok() & (low.norm[2] > -0.15) & (np.abs(low.norm[0]) > 0.08)
  peri = low.mask & (low.wm > 0.5) & (low.vent_dist >= 2) & (low.vent_dist <= 9) & zok
  deep = low.mask & (low.wm > 0.75) & (low.depth > 6) & (low.vent_dist > 9) & zok
  fallback = low.mask & (low.wm > 0.5) & low.z_ok()
  for _ in range(n):
    periventricular = rng.random() < (0.6 if ms else 0.65)
    centre = _pick(rng, peri if periventricular else deep, fallback)
    lo = tuple((centre / 2).astype(int))
    normal = low.vent_grad[(slice(None),) + lo].astype(np.float64)
    radii = _wm_lesion_radii(rng, ms, periventricular)
    box, idx = canvas.box(centre, max(radii) * 1.4 + 3)
    rho = _ellipsoid_radius(_offsets(idx, centre), _basis(normal, rng), radii)
    rho *= 1 + 0.15 * _smooth_noise(rng, rho.shape, 3.0)
    alpha = _soft(rho, min(radii), 1.0) * (1 - np.clip(canvas.tissue(idx, "csf") * 1.5, 0, 1))
    level = canvas.levels["wm"] * (rng.uniform(0.55, 0.75) if ms else rng.uniform(0.66, 0.8))
    canvas.paint(box, alpha, level * (1 + 0.04 * _smooth_noise(rng, rho.shape, 3.0)), 1)


# ----------------------------------------------------------------------------- subjects


@dataclasses.dataclass(frozen=True)
class _Profile:
  """Per-subject contrast: tissue multipliers of the template levels, gamma, bias, noise, scale."""
  ratios: dict[str, float]  # 'csf', 'gm', 'wm'
  gamma: float
  bias_std: float
  noise: float  # Rician sigma / WM intensity
  scale: float  # WM intensity in scanner units


def _metadata(rng: np.random.Generator, dataset: str, subject: int) -> tuple[str, dict, tuple]:
  """(img_name, metadata incl. age, (scale, noise) of the scanner)."""
  n = subject + 1
  if dataset == "IXI":
    site = str(rng.choice(sorted(_IXI_SITES)))
    meta = {"sex": str(rng.choice(["F", "M"])), "site": site, "age": rng.uniform(20, 86)}
    return f"IXI{n:03d}-Demo-{n:04d}", meta, _IXI_SITES[site]
  if dataset == "Brats21":
    meta = {"grade": "HGG" if rng.random() < 0.8 else "LGG", "age": rng.uniform(25, 80)}
    return f"BraTS2021_{n:05d}", meta, (rng.uniform(350, 1300), rng.uniform(0.015, 0.035))
  if dataset == "ATLAS_v2":
    site = int(rng.integers(1, 10))
    meta = {"site": f"r{site:03d}", "lesion_volume_ml": 0.0, "age": rng.uniform(40, 88)}
    return f"sub-r{site:03d}s{n:03d}", meta, (300 + 110 * site, 0.015 + 0.002 * site)
  scanners = _MSLUB_SCANNERS if dataset == "MSLUB" else _WMH_SCANNERS
  scanner = str(rng.choice(sorted(scanners)))
  age = rng.uniform(20, 60) if dataset == "MSLUB" else rng.uniform(55, 90)
  name = f"MSLUB_patient{n:03d}" if dataset == "MSLUB" else f"WMH_{n:03d}"
  return name, {"scanner": scanner, "age": age}, scanners[scanner]


def _profile(rng: np.random.Generator, scanner: tuple[float, float]) -> _Profile:
  scale, noise = scanner
  ratios = {k: float(np.clip(rng.normal(1.0, s), 1 - 2.5 * s, 1 + 2.5 * s))
            for k, s in (("csf", 0.08), ("gm", 0.04), ("wm", 0.03))}
  return _Profile(ratios, float(np.exp(rng.uniform(-0.15, 0.15))), rng.uniform(0.05, 0.12),
                  noise * rng.uniform(0.8, 1.2), scale * rng.uniform(0.9, 1.1))


def _render(rng: np.random.Generator, dataset: str, meta: dict, profile: _Profile
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Deforms the template and draws the pathology. Returns (image, mask, seg), each [X, Y, Z]."""
  tmpl = _template()
  warp = _random_warp(rng, tmpl)
  low = _low_res(tmpl, warp)
  tumour = _plan_tumour(rng, low, meta["grade"]) if dataset == "Brats21" else None
  if tumour is not None:
    sigma = tumour.radius * rng.uniform(1.2, 1.5)
    amp = rng.uniform(0.4, 0.6) if tumour.hgg else rng.uniform(0.25, 0.4)
    warp = dataclasses.replace(warp, mass=(tuple(tumour.centre), amp, sigma))
  r = profile.ratios
  contrast = tmpl.t1 * (1 + (r["gm"] - 1) * tmpl.gm + (r["wm"] - 1) * tmpl.wm
                        + (r["csf"] - 1) * tmpl.csf)
  # Only voxels near the (low-resolution) deformed brain are interpolated; the rest is background.
  shape = tmpl.t1.shape
  roi = ndimage.binary_dilation(low.mask, iterations=2)
  roi = roi.repeat(2, 0).repeat(2, 1).repeat(2, 2)[:shape[0], :shape[1], :shape[2]]
  points = warp.coords(*[np.arange(n) for n in shape])[:, roi]  # [3, N]
  image = np.zeros(shape, np.float32)
  image[roi] = _sample(contrast, points)
  del points
  # The template's brain mask is T1 > 0.2 (all tissue); the same cut on the deformed image.
  mask = image > np.float32(_MASK_LEVEL)
  levels = {"csf": _T_CSF * r["csf"], "gm": _T_GM * r["gm"], "wm": _T_WM * r["wm"]}
  canvas = _Canvas(image, mask, np.zeros(mask.shape, np.uint8), levels, tmpl, warp)
  for _ in range(5):  # retried only in the (unlikely) case a lesion fell outside the mask
    if dataset == "Brats21":
      _paint_tumour(canvas, rng, tumour)
    elif dataset == "ATLAS_v2":
      for _ in range(1 if rng.random() < 0.75 else 2):
        _paint_stroke(canvas, rng, low)
    elif dataset in ("MSLUB", "WMH"):
      _paint_wm_lesions(canvas, rng, low, dataset)
    if dataset == "IXI" or canvas.seg.any():
      break
  return canvas.image, mask, canvas.seg


def _acquire(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, profile: _Profile
             ) -> np.ndarray:
  """Gamma, bias field, scanner scale, Rician noise, skull stripping -> float32 T1 (integers)."""
  bias = _smooth_noise(rng, image.shape, 60.0)[mask] * np.float32(profile.bias_std)
  x = np.maximum(image[mask] / np.float32(_T_WM), 0.0) ** np.float32(profile.gamma)
  x *= np.float32(profile.scale) * np.exp(bias)
  sigma = np.float32(profile.noise * profile.scale)
  n1 = rng.standard_normal(x.shape, dtype=np.float32) * sigma
  n2 = rng.standard_normal(x.shape, dtype=np.float32) * sigma
  out = np.zeros(image.shape, np.float32)
  out[mask] = np.rint(np.sqrt((x + n1) ** 2 + n2 ** 2))
  return out


def make_subject(seed: int, dataset: str, subject: int) -> DemoSubject:
  """Synthesises subject `subject` of `dataset` (deterministic in (seed, dataset, subject))."""
  if dataset not in DATASETS:
    raise ValueError(f"unknown data set {dataset!r}; expected one of {DATASETS}")
  rng = np.random.default_rng([seed, DATASETS.index(dataset), subject])
  name, meta, scanner = _metadata(rng, dataset, subject)
  profile = _profile(rng, scanner)
  image, mask, seg = _render(rng, dataset, meta, profile)
  t1 = _acquire(rng, image, mask, profile)
  meta = dict(meta, age=round(float(meta["age"]), 1))
  if dataset == "ATLAS_v2":
    meta["lesion_volume_ml"] = round(float(np.count_nonzero(seg)) / 1000.0, 3)
  return DemoSubject(name, dataset, meta, t1, mask.astype(np.uint8), seg, _template().affine)


# ----------------------------------------------------------------------------- writing


def _rel_paths(dataset: str, name: str) -> dict[str, str]:
  """CSV paths (leading `/`, relative to `<root>/Data`) of a subject's files."""
  sub = _SUBDIR[dataset]
  kinds = ("t1", "mask") if dataset == "IXI" else ("t1", "mask", "seg")
  return {k: f"/{sub}/{k}/{name}_{k}.nii.gz" for k in kinds}


def _save_nifti(path: str, data: np.ndarray, affine: np.ndarray) -> None:
  img = nib.Nifti1Image(data, affine)
  img.set_sform(affine, code=2)
  img.set_qform(affine, code=2)
  img.header.set_xyzt_units("mm")
  with io.atomic_path(path, suffix=".nii.gz") as tmp:
    nib.save(img, tmp)


def subject_row(subject: DemoSubject) -> dict[str, Any]:
  """The subject's split-CSV row (without the leading index), keyed by column name."""
  paths = _rel_paths(subject.dataset, subject.name)
  return {"img_name": subject.name, **{c: subject.meta[c] for c in META_COLUMNS[subject.dataset]},
          "label": 0 if subject.dataset == "IXI" else 1, "age": subject.meta["age"],
          "img_path": paths["t1"], "mask_path": paths["mask"], "seg_path": paths.get("seg", "")}


def _generate_subject(task: tuple[str, int, str, int]) -> dict[str, Any]:
  """Worker: synthesises and writes one subject; returns its CSV row and lesion size."""
  data_dir, seed, dataset, subject = task
  s = make_subject(seed, dataset, subject)
  arrays = {"t1": s.t1, "mask": s.mask, "seg": s.seg}
  for kind, rel in _rel_paths(dataset, s.name).items():
    _save_nifti(data_dir + rel, arrays[kind], s.affine)
  return {"dataset": dataset, "subject": subject, "row": subject_row(s),
          "lesion_voxels": int(np.count_nonzero(s.seg))}


def _init_worker(template: _Template) -> None:
  """Pool initializer: installs the parent's template (workers skip importing nilearn)."""
  _TEMPLATE_CACHE[:] = [template]


def _run(tasks: list[tuple], num_workers: int) -> list[dict[str, Any]]:
  if num_workers <= 1 or len(tasks) <= 1:
    return [_generate_subject(t) for t in tasks]
  ctx = multiprocessing.get_context("spawn")  # safe with threads (JAX, grain) in the parent
  with ctx.Pool(min(num_workers, len(tasks)), initializer=_init_worker,
                initargs=(_template(),)) as pool:
    return list(pool.imap_unordered(_generate_subject, tasks, chunksize=1))


def split_indices(cfg: DemoConfig) -> dict[str, tuple[str, list[int]]]:
  """{split name: (dataset, subject indices)}; IXI folds are a K-fold over the train/val pool."""
  n_pool, n_test = cfg.split_sizes("IXI")
  perm = np.random.default_rng([cfg.seed, len(DATASETS), 0]).permutation(n_pool)
  folds = [sorted(int(i) for i in f) for f in np.array_split(perm, NUM_FOLDS)]
  out: dict[str, tuple[str, list[int]]] = {}
  for k in range(NUM_FOLDS):
    out[f"IXI_train_fold{k}"] = ("IXI", sorted(i for j, f in enumerate(folds) if j != k for i in f))
    out[f"IXI_val_fold{k}"] = ("IXI", folds[k])
  out["IXI_test"] = ("IXI", list(range(n_pool, n_pool + n_test)))
  for dataset in PATHOLOGICAL:
    n_val, n_test = cfg.split_sizes(dataset)
    out[f"{dataset}_val"] = (dataset, list(range(n_val)))
    out[f"{dataset}_test"] = (dataset, list(range(n_val, n_val + n_test)))
  return out


def csv_header(dataset: str) -> list[str]:
  """The split CSV header of `dataset`: empty index name, img_name, metadata, label, age, paths."""
  return ["", "img_name", *META_COLUMNS[dataset], "label", "age", "img_path", "mask_path",
          "seg_path"]


def _write_csv(path: str, dataset: str, rows: Sequence[dict[str, Any]]) -> None:
  buf = pyio.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  header = csv_header(dataset)
  writer.writerow(header)
  for i, row in enumerate(rows):
    writer.writerow([i] + [row[c] for c in header[1:]])
  io.write_text(path, buf.getvalue())


def _summary(cfg: DemoConfig, splits: dict, results: list[dict], seconds: float) -> dict:
  lesions = {}
  for dataset in PATHOLOGICAL:
    vox = [r["lesion_voxels"] for r in results if r["dataset"] == dataset]
    lesions[dataset] = {"total": int(sum(vox)), "min": int(min(vox)), "max": int(max(vox))}
  return {"subjects": {d: sum(r["dataset"] == d for r in results) for d in DATASETS},
          "splits": {name: len(idx) for name, (_, idx) in splits.items()},
          "lesion_voxels": lesions, "seconds": round(seconds, 1), "config": cfg.identity()}


def generate_demo_cohort(root: str | os.PathLike, cfg: DemoConfig | None = None) -> dict[str, Any]:
  """Writes the demo cohort under `<root>/Data` in the authors' layout; returns a summary.

  Layout: `Data/Train/ixi/{t1,mask}/<id>_{t1,mask}.nii.gz`,
  `Data/Test/<Dataset>/{t1,mask,seg}/<id>_{t1,mask,seg}.nii.gz`, `Data/splits/<split>.csv`.
  Every file is written atomically and `Data/.demo_complete.json` last; when that marker exists
  with the same config the cohort is not regenerated (summary['skipped'] is True).

  Returns:
    {'subjects': {dataset: n}, 'splits': {split: rows}, 'lesion_voxels': {dataset: {total,min,max}},
     'seconds', 'config', 'skipped', 'data_dir'}.
  """
  cfg = cfg or DemoConfig.default()
  data_dir = os.path.join(os.fspath(root), "Data")
  marker = os.path.join(data_dir, MARKER_NAME)
  identity = {"generator_version": GENERATOR_VERSION, "config": cfg.identity()}
  if os.path.isfile(marker):
    with open(marker, encoding="utf-8") as f:
      done = json.load(f)
    if {k: done.get(k) for k in identity} == identity:
      return dict(done["summary"], skipped=True, data_dir=data_dir)
    os.remove(marker)
  start = time.perf_counter()
  splits = split_indices(cfg)
  tasks = []
  for dataset in DATASETS:
    n = sum(cfg.split_sizes(dataset))
    tasks += [(data_dir, cfg.seed, dataset, s) for s in range(n)]
  results = _run(tasks, cfg.num_workers)
  by_key = {(r["dataset"], r["subject"]): r for r in results}
  for name, (dataset, indices) in splits.items():
    _write_csv(os.path.join(data_dir, "splits", f"{name}.csv"), dataset,
               [by_key[(dataset, i)]["row"] for i in indices])
  summary = _summary(cfg, splits, results, time.perf_counter() - start)
  io.write_json(marker, dict(identity, summary=summary))
  return dict(summary, skipped=False, data_dir=data_dir)


# ----------------------------------------------------------------------------- montage


def _montage_subject(data_dir: str, dataset: str, candidates: int = 4
                     ) -> tuple[dict[str, str], np.ndarray, np.ndarray, np.ndarray]:
  """(CSV row, t1, mask, seg) of the subject shown for `dataset`: of the first `candidates` rows
  of its test split (IXI: IXI_test), the one with the most lesion voxels."""
  name = "IXI_test" if dataset == "IXI" else f"{dataset}_test"
  path = os.path.join(data_dir, "splits", f"{name}.csv")
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))[:candidates if dataset != "IXI" else 1]
  if not rows:
    raise FileNotFoundError(f"{path}: no rows")

  def load(rel: str, dtype) -> np.ndarray:
    return np.asarray(nib.load(data_dir + rel).dataobj, dtype=dtype)

  segs = [load(r["seg_path"], np.uint8) if r["seg_path"] else None for r in rows]
  best = int(np.argmax([0 if s is None else np.count_nonzero(s) for s in segs]))
  t1 = load(rows[best]["img_path"], np.float32)
  seg = segs[best] if segs[best] is not None else np.zeros(t1.shape, np.uint8)
  return rows[best], t1, load(rows[best]["mask_path"], np.uint8), seg


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
  """One slice [H, W] (first axis = left-right) -> RGB [W, H, 3] upright with lesion contours."""
  grey = (np.clip(t1 / vmax, 0, 1) * 255).astype(np.uint8)
  rgb = np.repeat(grey[..., None], 3, axis=-1)
  contours = [(seg > 0, (255, 40, 40))]
  if brats:
    contours += [((seg == 1) | (seg == 4), (255, 230, 0)), (seg == 1, (0, 220, 255))]
  for region, colour in contours:
    edge = region & ~ndimage.binary_erosion(region)
    rgb[edge] = colour
  return np.ascontiguousarray(np.flipud(rgb.transpose(1, 0, 2)))


def _montage_row(t1: np.ndarray, mask: np.ndarray, seg: np.ndarray, title: str, brats: bool,
                 height: int) -> np.ndarray:
  from PIL import Image, ImageDraw  # local import: only the montage needs Pillow

  x, y, z = _lesion_centre(seg, mask)
  vmax = float(np.percentile(t1[mask > 0], 99.5)) if mask.any() else 1.0
  panels = [_panel(t1[:, :, z], seg[:, :, z], vmax, brats),  # axial: anterior up
            _panel(t1[:, y, :], seg[:, y, :], vmax, brats),  # coronal: superior up
            _panel(t1[x, :, :], seg[x, :, :], vmax, brats)]  # sagittal: superior up, anterior right
  gap = np.zeros((height, 4, 3), np.uint8)
  padded = []
  for p in panels:
    out = np.zeros((height, p.shape[1], 3), np.uint8)
    top = (height - p.shape[0]) // 2
    out[top:top + p.shape[0]] = p[:height]
    padded += [out, gap]
  row = Image.fromarray(np.concatenate(padded[:-1], axis=1))
  ImageDraw.Draw(row).text((4, 2), title, fill=(255, 255, 0))
  return np.asarray(row)


def write_montage(root: str | os.PathLike, out_png: str | os.PathLike) -> str:
  """Writes a PNG montage: one row per data set (a test subject), axial/coronal/sagittal
  slices through its largest lesion with the ground-truth contour (red = lesion; BraTS: yellow =
  tumour core, cyan = necrosis). Returns the PNG path."""
  data_dir = os.path.join(os.fspath(root), "Data")
  rows = []
  height = max(_CROP[1].stop - _CROP[1].start, _CROP[2].stop - _CROP[2].start)
  for dataset in DATASETS:
    row, t1, mask, seg = _montage_subject(data_dir, dataset)
    rows.append(_montage_row(t1, mask, seg, f"{dataset}  {row['img_name']}", dataset == "Brats21",
                             height))
    rows.append(np.zeros((4, rows[-1].shape[1], 3), np.uint8))
  width = max(r.shape[1] for r in rows)
  rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows[:-1]]
  io.write_png(out_png, np.concatenate(rows, axis=0))
  return os.fspath(out_png)
