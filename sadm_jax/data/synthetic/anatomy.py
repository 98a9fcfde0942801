"""Anatomy of a synthetic subject: the ICBM152 2009 template, smooth random fields, the subject's deformation and its low-resolution tissue maps."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import ndimage

# Field of view: a box of the 1 mm template grid holding the whole brain plus a margin.
CROP = (slice(18, 178), slice(17, 217), slice(0, 164))  # -> [160, 200, 164]
# Template T1 value (0..1) of pure CSF, GM and WM.
T_CSF, T_GM, T_WM = 0.28, 0.65, 0.87
# Brain mask of a deformed subject: its (pre-lesion) image above this level. The template mask
# is T1 > 0.2 and boundary voxels are GM/CSF mixtures (~0.3), so this is about the warped mask.
MASK_LEVEL = 0.15
# Lesion centres stay within these axial slices (the data layer keeps the central 100 of 164).
Z_RANGE = (50, 116)
# Std of a cubic B-spline field whose knots are i.i.d. N(0, 1) (3-D).
_SPLINE_STD = 0.35


@dataclasses.dataclass(frozen=True)
class Template:
  """The cropped ICBM152 2009 maps, all [X, Y, Z] float32, and the crop's affine [4, 4]."""
  t1: np.ndarray
  gm: np.ndarray
  wm: np.ndarray
  csf: np.ndarray
  mask: np.ndarray
  affine: np.ndarray
  centre: np.ndarray  # [3] centre of the brain's bounding box (voxels)


_TEMPLATE_CACHE: list[Template] = []  # this process's template (loaded, or sent by the parent)


def template() -> Template:
  """The template, loaded once per process (pool workers receive the parent's copy)."""
  if not _TEMPLATE_CACHE:
    _TEMPLATE_CACHE.append(_load_template())
  return _TEMPLATE_CACHE[0]


def _load_template() -> Template:
  """Loads and crops the nilearn-bundled ICBM152 2009 maps; never touches the network."""
  from nilearn import datasets  # local import: slow, and only the generator needs it

  def load(fn):
    img = fn(resolution=1)
    return np.asarray(img.get_fdata(dtype=np.float32)[CROP]), img.affine

  t1, affine = load(datasets.load_mni152_template)
  mask = load(datasets.load_mni152_brain_mask)[0]
  mask = (mask > 0.5).astype(np.float32)
  gm = load(datasets.load_mni152_gm_template)[0] * mask
  wm = load(datasets.load_mni152_wm_template)[0] * mask
  csf = np.clip(mask - gm - wm, 0.0, 1.0)
  crop_affine = affine.copy()
  crop_affine[:3, 3] = affine[:3, :3] @ np.array([s.start for s in CROP]) + affine[:3, 3]
  idx = np.argwhere(mask > 0)
  centre = (idx.min(0) + idx.max(0)).astype(np.float32) / 2
  return Template(t1 * mask, gm, wm, csf, mask, crop_affine, centre)


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


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], spacing: float) -> np.ndarray:
  """A smooth random field over a box [*shape]: about unit std, clipped to [-2, 2], correlation
  length ~spacing (voxels)."""
  n_knots = [_n_knots(n, spacing) for n in shape]
  knots = rng.standard_normal(n_knots).astype(np.float32)
  weights = [_spline_weights(np.arange(n), spacing, k) for n, k in zip(shape, n_knots)]
  return np.clip(_spline_field(knots, weights) / np.float32(_SPLINE_STD), -2.0, 2.0)


def random_rotation(rng: np.random.Generator, max_angle: float | None = None) -> np.ndarray:
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
class Warp:
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


def random_warp(rng: np.random.Generator, tmpl: Template) -> Warp:
  """Random rotation (<= 3 deg), scale (0.95–1.05 per axis), shift (<= 2 mm), elastic (~2 mm)."""
  rot = random_rotation(rng, math.radians(3.0))
  scale = rng.uniform(0.95, 1.05, 3)
  matrix = rot @ np.diag(1.0 / scale)  # sampling map: output is scaled by `scale`
  shift = rng.uniform(-2.0, 2.0, 3)
  spacing = 20.0
  shape = tmpl.t1.shape
  knots = rng.normal(0.0, rng.uniform(4.0, 7.0), (3,) + tuple(_n_knots(n, spacing) for n in shape))
  return Warp(matrix, shift, tmpl.centre, knots.astype(np.float32), spacing)


def sample(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
  """Trilinear interpolation of `volume` at `coords` [3, ...] (0 outside)."""
  return ndimage.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0,
                                 prefilter=False).astype(np.float32)


# ----------------------------------------------------------------------------- anatomy


@dataclasses.dataclass(frozen=True)
class LowRes:
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
    return ((z >= Z_RANGE[0]) & (z <= Z_RANGE[1]))[None, None, :]


def low_res(tmpl: Template, warp: Warp) -> LowRes:
  idx = [np.arange(0, n, 2) for n in tmpl.t1.shape]
  coords = warp.coords(*idx)
  gm, wm, brain = (sample(v, coords) for v in (tmpl.gm, tmpl.wm, tmpl.mask))
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
  return LowRes(gm, wm, csf, mask, depth, vent_dist, grad.astype(np.float32), norm,
                 (lo + hi).astype(np.float64))


def pick(rng: np.random.Generator, candidates: np.ndarray, fallback: np.ndarray) -> np.ndarray:
  """A random full-resolution voxel [3] among low-res `candidates` (or `fallback` when empty)."""
  pos = np.argwhere(candidates)
  if len(pos) == 0:
    pos = np.argwhere(fallback)
  return (pos[rng.integers(len(pos))] * 2).astype(np.float64)



def install_template(tmpl: Template) -> None:
  """Makes `tmpl` this process's template (pool workers get the parent's, skipping nilearn)."""
  _TEMPLATE_CACHE[:] = [tmpl]
