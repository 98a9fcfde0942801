"""Lesions drawn into a deformed subject: tumours with edema and mass effect, chronic strokes, white-matter lesions."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from sadm_jax.data.synthetic import calibration as cal
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

  def level(self, f: float | np.ndarray) -> float | np.ndarray:
    """The intensity a fraction `f` of the way from this subject's white matter (0) to CSF (1)."""
    wm, csf = self.levels["wm"], self.levels["csf"]
    return wm - np.float32(f) * np.float32(wm - csf)

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


def drop_specks(seg: np.ndarray, min_voxels: int = 8) -> None:
  """Unlabels (in place) lesion components of fewer than `min_voxels` voxels — isolated boundary
  voxels where a soft lesion edge crossed 0.5 — keeping the largest component in any case."""
  labels, n = ndimage.label(seg > 0)
  if n <= 1:
    return
  sizes = ndimage.sum_labels(np.ones(seg.shape, np.int32), labels, np.arange(1, n + 1))
  small = np.flatnonzero(sizes < min_voxels)
  small = small[small != int(np.argmax(sizes))]
  if small.size:
    seg[np.isin(labels, small + 1)] = 0


# ----------------------------------------------------------------------------- tumours


def _radius(volume_mm3: float) -> float:
  """Radius (mm) of a ball of `volume_mm3`."""
  return float((3.0 * volume_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0))


@dataclasses.dataclass(frozen=True)
class TumourPlan:
  """Where and how large a glioma is drawn: core radius and the edema's reach in white matter."""
  centre: np.ndarray  # [3] voxels
  radius: float  # mean core radius, mm
  reach: float  # edema radius in pure white matter / core radius (>= 1)
  necrosis: float  # necrosis radius / core radius (HGG)
  hgg: bool


def plan_tumour(rng: np.random.Generator, low: LowRes, grade: str) -> TumourPlan:
  """A whole-tumour volume from BraTS (calibration.BRATS_WT_ML), split into core and edema."""
  hgg = grade == "HGG"
  volume = cal.BRATS_WT_ML.sample(rng) * 1000.0
  core = volume * rng.uniform(*cal.BRATS_CORE_FRACTION)
  radius = _radius(core)
  reach = (volume / core) ** (1.0 / 3.0)
  necrosis = rng.uniform(*cal.BRATS_NECROSIS_FRACTION) ** (1.0 / 3.0)
  xn = low.norm[0]  # supratentorial, white-matter centred, off the midline
  cand = low.mask & (low.depth > radius + 6) & (low.wm > 0.4) & (np.abs(xn) > 0.2) & low.z_ok()
  centre = pick(rng, cand, low.mask & low.z_ok())
  return TumourPlan(centre, radius, reach, necrosis, hgg)


def paint_tumour(canvas: Canvas, rng: np.random.Generator, plan: TumourPlan) -> None:
  """Edema (label 2) spreading along white matter, a solid core (HGG: enhancing rim, label 4;
  LGG: non-enhancing core, label 1) and, in HGG, a necrotic centre (label 1)."""
  r = plan.radius
  box, idx = canvas.box(plan.centre, r * plan.reach * 1.3 + 4)
  shape = tuple(len(i) for i in idx)
  v = _offsets(idx, plan.centre)
  radii = r * rng.uniform(0.8, 1.2, 3)
  rho0 = _ellipsoid_radius(v, random_rotation(rng), radii)  # 1 on the mean core surface
  coords = canvas.warp.coords(*idx)
  wm = np.clip(ndimage.gaussian_filter(sample(canvas.tmpl.wm, coords), 2.0) * 1.3, 0.0, 1.0)
  csf = sample(canvas.tmpl.csf, coords)
  tex = smooth_noise(rng, shape, 3.0)
  # Edema: white matter pulled down toward grey-matter level, reaching further along white
  # matter, sparing CSF; grey matter (already darker) hardly changes.
  rho_e = rho0 * (1 + 0.2 * smooth_noise(rng, shape, 8.0)) / (1 + (plan.reach - 1) * wm)
  alpha_e = _soft(rho_e, r) * (1 - np.clip(csf * 1.5, 0, 1))
  edema = canvas.level(rng.uniform(*cal.TUMOUR_EDEMA_F))
  canvas.paint(box, alpha_e, np.minimum(canvas.image[box], edema) * (1 + 0.03 * tex), 2)
  rho = rho0 * (1 + 0.18 * smooth_noise(rng, shape, 6.0))
  alpha_core = _soft(rho, r)
  solid = canvas.level(rng.uniform(*cal.TUMOUR_SOLID_F))
  canvas.paint(box, alpha_core, solid * (1 + 0.06 * tex), 4 if plan.hgg else 1)
  if plan.hgg:  # necrotic centre, approaching CSF, inside the core
    frac = np.float32(plan.necrosis)
    rho_n = rho0 * (1 + 0.25 * smooth_noise(rng, shape, 5.0)) / frac
    necrosis = canvas.level(rng.uniform(*cal.TUMOUR_NECROSIS_F))
    canvas.paint(box, _soft(rho_n, r * plan.necrosis) * alpha_core, necrosis * (1 + 0.05 * tex), 1)


# ----------------------------------------------------------------------------- strokes


def paint_strokes(canvas: Canvas, rng: np.random.Generator, low: LowRes) -> None:
  """Chronic strokes with ATLAS's volume and count distributions: the total volume is split over
  1–4 lesions; the largest is a cortical territorial infarct when the total is large, every
  other lesion a subcortical (deep) infarct."""
  total = cal.ATLAS_VOLUME_ML.sample(rng) * 1000.0
  count = cal.choice(rng, cal.ATLAS_LESION_COUNT)
  shares = np.sort(rng.dirichlet(np.ones(count)))[::-1]
  side = -1.0 if rng.random() < cal.LEFT else 1.0  # voxel x increases to the right (RAS)
  for i, share in enumerate(shares):
    s = side if i == 0 or rng.random() < 0.7 else -side
    if i == 0 and total >= cal.CORTICAL_FROM_ML * 1000.0:
      _paint_territorial(canvas, rng, low, total * share, s)
    else:
      _paint_deep(canvas, rng, low, total * share, s)


def _paint_deep(canvas: Canvas, rng: np.random.Generator, low: LowRes, volume: float,
                side: float) -> None:
  """A subcortical infarct of about `volume` mm^3: striatocapsular / thalamic (lacunar) or in the
  corona radiata (elongated along the fibres, superior-inferior)."""
  xn, yn, zn = low.norm
  sx = side * xn
  zok = low.z_ok()
  site = cal.choice(rng, cal.DEEP_SITES)
  if site == "basal_ganglia":
    cand = (low.gm > 0.45) & (sx > 0.08) & (sx < 0.4) & (np.abs(yn) < 0.35) & (low.depth > 16) & zok
    stretch = np.array([1.0, 1.0, 1.0])
  else:
    cand = ((low.wm > 0.7) & (sx > 0.1) & (sx < 0.6) & (low.vent_dist >= 4) & (low.vent_dist <= 20)
            & (zn > 0.0) & zok)
    stretch = np.array([0.8, 0.8, 1.55])
  centre = pick(rng, cand, low.mask & (low.depth > 16) & zok)
  rad = _radius(volume)
  radii = rad * stretch * rng.uniform(0.8, 1.2, 3)
  box, idx = canvas.box(centre, 1.5 * radii.max() + 3)
  rot = random_rotation(rng, math.radians(20.0))
  rho = _ellipsoid_radius(_offsets(idx, centre), rot, radii)
  rho *= 1 + 0.12 * smooth_noise(rng, rho.shape, 3.0)
  _paint_infarct(canvas, rng, box, idx, _soft(rho, rad, 1.0))


def _paint_territorial(canvas: Canvas, rng: np.random.Generator, low: LowRes, volume: float,
                       side: float) -> None:
  """A cortical wedge of about `volume` mm^3 in a vascular territory, its apex toward the deep
  nuclei and its base on the cortex."""
  territory = cal.choice(rng, cal.TERRITORIES)
  xn, yn, zn = low.norm
  sx = side * xn
  surface = low.mask & (low.depth <= 4) & low.z_ok()
  region = {"MCA": (sx > 0.55) & (np.abs(yn) < 0.55) & (zn > -0.35) & (zn < 0.6),
            "ACA": (sx > 0.02) & (sx < 0.3) & (yn > -0.45) & (yn < 0.65) & (zn > 0.35),
            "PCA": (yn < -0.6) & (sx > 0.05) & (zn > -0.45) & (zn < 0.35)}[territory]
  base = pick(rng, surface & region, surface & (sx > 0.3))
  hub = low.centre + np.array([side * 12.0, 0.0, 0.0])  # toward the ipsilateral deep nuclei
  # Elliptic cone from the apex to the cortex (half-angles differ across the two cross axes),
  # its length set by the volume: V = pi/3 tan(a) tan(b) L^3.
  tans = np.tan(rng.uniform(0.4, 0.75, 2))
  length = (3.0 * volume / (math.pi * tans[0] * tans[1])) ** (1.0 / 3.0)
  length = float(np.clip(length, 15.0, 80.0))
  axis = (base - hub) / max(np.linalg.norm(base - hub), 1e-6)
  apex = base - length * axis
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
  """Label 1 under `alpha` (sparing the ventricles): a cavitated core approaching CSF inside a
  gliotic rim 1–3 mm wide of intermediate intensity (calibration.STROKE_*)."""
  alpha = alpha * (canvas.tissue(idx, "csf") < 0.6)
  inside = ndimage.distance_transform_edt(alpha > 0.5).astype(np.float32)  # mm (1 mm voxels)
  depth = np.clip(inside / np.float32(rng.uniform(*cal.STROKE_RIM_MM)), 0.0, 1.0)
  f_rim, f_core = rng.uniform(*cal.STROKE_RIM_F), rng.uniform(*cal.STROKE_CORE_F)
  tex = smooth_noise(rng, alpha.shape, 3.0)
  target = canvas.level(f_rim + (f_core - f_rim) * depth) * (1 + 0.06 * tex)
  canvas.paint(box, alpha, target, 1)


# ----------------------------------------------------------------------------- white matter


def _wm_lesion_radii(rng: np.random.Generator, volume: float, ms: bool, periventricular: bool
                     ) -> np.ndarray:
  """Semi-axes (mm) of one lesion of about `volume` mm^3; the first is along the normal to the
  ventricle wall."""
  r = _radius(volume)
  if ms:  # ovoid, long axis perpendicular to the ventricles (Dawson's fingers)
    shape = np.array([1.6, 0.8, 0.8])
  elif periventricular:  # flat cap along the ventricle wall; large loads become confluent
    shape = np.array([0.6, 1.4, 1.2])
  else:  # punctate deep lesion
    shape = np.ones(3)
  return r * shape / np.prod(shape) ** (1 / 3) * rng.uniform(0.85, 1.15, 3)


def paint_wm_lesions(canvas: Canvas, rng: np.random.Generator, low: LowRes, kind: str) -> None:
  """White-matter lesions (MS or small-vessel WMH) until the subject's lesion load (drawn from
  calibration.MS_VOLUME_ML / WMH_VOLUME_ML) is reached: periventricular and deep, each mildly or
  (a subset) clearly hypointense."""
  ms = kind == "MSLUB"
  load = (cal.MS_VOLUME_ML if ms else cal.WMH_VOLUME_ML).sample(rng) * 1000.0
  # Above the temporal lobes and the cerebellum, off the midline (septum, fornix).
  zok = low.z_ok() & (low.norm[2] > -0.15) & (np.abs(low.norm[0]) > 0.08)
  peri = low.mask & (low.wm > 0.5) & (low.vent_dist >= 2) & (low.vent_dist <= 9) & zok
  deep = low.mask & (low.wm > 0.75) & (low.depth > 6) & (low.vent_dist > 9) & zok
  fallback = low.mask & (low.wm > 0.5) & low.z_ok()
  drawn = 0.0
  while drawn < load:
    periventricular = rng.random() < (0.6 if ms else 0.65)
    if ms:
      volume = cal.MS_LESION_ML.sample(rng) * 1000.0
    else:  # caps grow with the load; deep lesions stay punctate
      volume = rng.uniform(0.05, 0.25) * load if periventricular else rng.uniform(20.0, 150.0)
    volume = min(volume, load - drawn + 20.0)
    drawn += volume
    centre = pick(rng, peri if periventricular else deep, fallback)
    lo = tuple((centre / 2).astype(int))
    normal = low.vent_grad[(slice(None),) + lo].astype(np.float64)
    radii = _wm_lesion_radii(rng, volume, ms, periventricular)
    box, idx = canvas.box(centre, radii.max() * 1.4 + 3)
    rho = _ellipsoid_radius(_offsets(idx, centre), _basis(normal, rng), radii)
    rho *= 1 + 0.15 * smooth_noise(rng, rho.shape, 3.0)
    alpha = _soft(rho, radii.min(), 1.0) * (1 - np.clip(canvas.tissue(idx, "csf") * 1.5, 0, 1))
    if ms:
      dark = rng.random() < cal.MS_BLACK_HOLE_FRACTION
      f = rng.uniform(*(cal.MS_BLACK_HOLE_F if dark else cal.MS_F))
    else:
      dark = rng.random() < cal.WMH_DARK_FRACTION
      f = rng.uniform(*(cal.WMH_DARK_F if dark else cal.WMH_F))
    target = np.minimum(canvas.image[box], canvas.level(f))
    canvas.paint(box, alpha, target * (1 + 0.04 * smooth_noise(rng, rho.shape, 3.0)), 1)
