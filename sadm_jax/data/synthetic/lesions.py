"""Lesions drawn into a deformed subject: tumours with edema and mass effect, chronic strokes, white-matter lesions."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from sadm_jax.data.synthetic.anatomy import (LowRes, Template, Warp, pick, random_rotation, sample,
                                             smooth_noise)


@dataclasses.dataclass
class Canvas:
  """The deformed subject being drawn on. image: [X, Y, Z] float32 in template units (WM ~0.87)."""
  image: np.ndarray
  mask: np.ndarray  # bool
  seg: np.ndarray  # uint8
  levels: dict[str, float]  # subject's pure-tissue levels 'csf', 'gm', 'wm' (template units)
  tmpl: Template
  warp: Warp

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
    return sample(getattr(self.tmpl, name), self.warp.coords(*idx))

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
class TumourPlan:
  centre: np.ndarray  # [3] voxels
  radius: float  # core radius, mm
  edema: float  # extra edema reach in WM, relative to the radius
  hgg: bool


def plan_tumour(rng: np.random.Generator, low: LowRes, grade: str) -> TumourPlan:
  hgg = grade == "HGG"
  radius = rng.uniform(10.0, 17.0) if hgg else rng.uniform(8.0, 13.0)
  edema = rng.uniform(0.6, 1.1) if hgg else rng.uniform(0.3, 0.6)
  xn = low.norm[0]
  cand = low.mask & (low.depth > radius + 6) & (low.wm > 0.4) & (np.abs(xn) > 0.2) & low.z_ok()
  centre = pick(rng, cand, low.mask & low.z_ok())
  return TumourPlan(centre, radius, edema, hgg)


def paint_tumour(canvas: Canvas, rng: np.random.Generator, plan: TumourPlan) -> None:
  r = plan.radius
  box, idx = canvas.box(plan.centre, r * (1 + plan.edema) * 1.3 + 4)
  shape = tuple(len(i) for i in idx)
  v = _offsets(idx, plan.centre)
  radii = r * rng.uniform(0.8, 1.2, 3)
  rho0 = _ellipsoid_radius(v, random_rotation(rng), radii)  # 1 on the mean core surface
  coords = canvas.warp.coords(*idx)
  wm = np.clip(ndimage.gaussian_filter(sample(canvas.tmpl.wm, coords), 2.0) * 1.3, 0.0, 1.0)
  csf = sample(canvas.tmpl.csf, coords)
  lv = canvas.levels
  tex = smooth_noise(rng, shape, 3.0)
  # Edema: mildly hypointense, reaching further along white matter, sparing CSF.
  rho_e = rho0 * (1 + 0.2 * smooth_noise(rng, shape, 8.0)) / (1 + plan.edema * wm)
  alpha_e = _soft(rho_e, r) * (1 - np.clip(csf * 1.5, 0, 1))
  factor = rng.uniform(0.84, 0.9)
  canvas.paint(box, alpha_e, canvas.image[box] * np.float32(factor) * (1 + 0.03 * tex), 2)
  # Core: irregular; GM-like rim (HGG, label 4) or non-enhancing core (LGG, label 1).
  rho = rho0 * (1 + 0.18 * smooth_noise(rng, shape, 6.0))
  alpha_core = _soft(rho, r)
  rim_level = lv["wm"] * rng.uniform(0.72, 0.8)
  canvas.paint(box, alpha_core, rim_level * (1 + 0.06 * tex), 4 if plan.hgg else 1)
  if plan.hgg:  # necrotic centre: CSF-like, inside the core
    frac = rng.uniform(0.45, 0.7)
    rho_n = rho0 * (1 + 0.25 * smooth_noise(rng, shape, 5.0)) / np.float32(frac)
    necro = lv["csf"] * rng.uniform(1.15, 1.5)
    canvas.paint(box, _soft(rho_n, r * frac) * alpha_core, necro * (1 + 0.05 * tex), 1)


_TERRITORIES = ("MCA", "MCA", "MCA", "ACA", "PCA", "lacune")


def paint_stroke(canvas: Canvas, rng: np.random.Generator, low: LowRes) -> None:
  """One chronic stroke: a cortical wedge in a vascular territory, or a deep lacune."""
  territory = _TERRITORIES[rng.integers(len(_TERRITORIES))]
  side = 1.0 if rng.random() < 0.5 else -1.0
  xn, yn, zn = low.norm
  sx = side * xn
  zok = low.z_ok()
  if territory == "lacune":
    cand = (low.gm > 0.45) & (sx > 0.08) & (sx < 0.4) & (np.abs(yn) < 0.35) & (low.depth > 16) & zok
    centre = pick(rng, cand, low.mask & (low.depth > 16) & zok)
    rad = rng.uniform(3.0, 7.0)
    box, idx = canvas.box(centre, 1.6 * rad + 3)
    radii = rad * rng.uniform(0.7, 1.3, 3)
    rho = _ellipsoid_radius(_offsets(idx, centre), random_rotation(rng), radii)
    rho *= 1 + 0.12 * smooth_noise(rng, rho.shape, 3.0)
    _paint_infarct(canvas, rng, box, idx, _soft(rho, rad, 1.0))
    return
  surface = low.mask & (low.depth <= 4) & zok
  region = {"MCA": (sx > 0.55) & (np.abs(yn) < 0.55) & (zn > -0.35) & (zn < 0.6),
            "ACA": (sx > 0.02) & (sx < 0.3) & (yn > -0.45) & (yn < 0.65) & (zn > 0.35),
            "PCA": (yn < -0.6) & (sx > 0.05) & (zn > -0.45) & (zn < 0.35)}[territory]
  base = pick(rng, surface & region, surface & (sx > 0.3))
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
  q /= 1 + 0.25 * smooth_noise(rng, q.shape, 8.0)
  alpha = np.clip(0.5 + (1 - q) * along * np.float32(tans.mean() / 1.5), 0, 1)
  alpha *= np.clip(0.5 + proj[0] / 1.5, 0, 1) * np.clip(0.5 + (length + 8 - proj[0]) / 1.5, 0, 1)
  _paint_infarct(canvas, rng, box, idx, alpha)


def _paint_infarct(canvas: Canvas, rng: np.random.Generator, box, idx, alpha: np.ndarray) -> None:
  """Pulls the tissue under `alpha` toward CSF (label 1), sparing the ventricles."""
  alpha = alpha * (canvas.tissue(idx, "csf") < 0.6)
  strength = rng.uniform(0.7, 0.95)
  csf = canvas.levels["csf"] * rng.uniform(1.0, 1.35)
  tex = smooth_noise(rng, alpha.shape, 3.0)
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


def paint_wm_lesions(canvas: Canvas, rng: np.random.Generator, low: LowRes, kind: str) -> None:
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
    centre = pick(rng, peri if periventricular else deep, fallback)
    lo = tuple((centre / 2).astype(int))
    normal = low.vent_grad[(slice(None),) + lo].astype(np.float64)
    radii = _wm_lesion_radii(rng, ms, periventricular)
    box, idx = canvas.box(centre, max(radii) * 1.4 + 3)
    rho = _ellipsoid_radius(_offsets(idx, centre), _basis(normal, rng), radii)
    rho *= 1 + 0.15 * smooth_noise(rng, rho.shape, 3.0)
    alpha = _soft(rho, min(radii), 1.0) * (1 - np.clip(canvas.tissue(idx, "csf") * 1.5, 0, 1))
    level = canvas.levels["wm"] * (rng.uniform(0.55, 0.75) if ms else rng.uniform(0.66, 0.8))
    canvas.paint(box, alpha, level * (1 + 0.04 * smooth_noise(rng, rho.shape, 3.0)), 1)

