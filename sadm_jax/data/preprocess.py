"""Volume preprocessing of METHOD §2.3: curvature flow, crop/pad, percentile rescale, ×2 resampling.

All volumes are numpy arrays in NIfTI voxel order (i, j, k) = (H, W, D); axial slices lie along the
last axis. The chain reproduces the reference reader + torchio transforms
(SimpleITK `CurvatureFlow` → `CropOrPad` → `RescaleIntensity(percentiles)` → `Resample(2)`) with
numpy/scipy only, and fixes quirks Q22 (curvature flow chosen by role, flag honoured) and Q23
(header spacing checked; non-1-mm volumes are resampled to 1 mm instead of being assumed 1 mm).

Grid bookkeeping: every step that changes the voxel grid also says how, so that the final 96×96×50
grid carries a correct affine (`working_affine`): crop/pad shifts the index origin by an integer
offset `o` (output index = input index − o) and the ×f resampling puts output voxel k at continuous
input index f·k + (f − 1)/2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from sadm_jax.data.errors import DataError

# Bump when the numerical behaviour of this module changes: it is part of `PreprocessConfig.key()`,
# so caches built by an older implementation are not reused.
PREPROCESS_VERSION = 1

# ITK's CurvatureFlowFunction returns a zero update where |∇I|² is below this.
_MIN_GRADIENT_SQR = 1e-9
# Voxels per slab in `curvature_flow`: keeps the temporaries small enough to stay in cache.
_SLAB_VOXELS = 1 << 16


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """Parameters of the preprocessing chain (defaults = reference configuration)."""

  curvature_flow: bool = True  # Q22: honoured; applied to the intensity image only
  cf_time_step: float = 0.125
  cf_iterations: int = 3
  crop_size: tuple[int, int, int] = (192, 192, 100)
  percentiles: tuple[float, float] = (1.0, 99.0)
  downsample: int = 2
  spacing_tolerance: float = 1e-3  # mm; |spacing − 1| above this triggers resampling (Q23)

  def __post_init__(self):
    crop = tuple(int(c) for c in self.crop_size)
    pct = tuple(float(p) for p in self.percentiles)
    object.__setattr__(self, "crop_size", crop)
    object.__setattr__(self, "percentiles", pct)
    if len(crop) != 3 or min(crop) < 1:
      raise ValueError(f"crop_size must be 3 positive ints, got {self.crop_size}")
    if len(pct) != 2 or not 0.0 <= pct[0] < pct[1] <= 100.0:
      raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {self.percentiles}")
    if int(self.downsample) != self.downsample or self.downsample < 1:
      raise ValueError(f"downsample must be a positive int, got {self.downsample}")
    if self.cf_iterations < 0 or self.cf_time_step <= 0:
      raise ValueError("cf_iterations must be >= 0 and cf_time_step > 0, got "
                       f"{self.cf_iterations}, {self.cf_time_step}")
    if self.spacing_tolerance < 0:
      raise ValueError(f"spacing_tolerance must be >= 0, got {self.spacing_tolerance}")

  def key(self) -> str:
    """Stable 16-hex-digit cache key: sha256 of the canonical JSON of the fields (+ version)."""
    payload = dataclasses.asdict(self)
    payload["preprocess_version"] = PREPROCESS_VERSION
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclasses.dataclass
class Preprocessed:
  """One preprocessed subject on the working grid (96×96×50 at the default configuration)."""

  image: np.ndarray  # [96, 96, 50] float32, ≈[0, 1] (cubic resampling may overshoot slightly)
  mask: np.ndarray  # [96, 96, 50] uint8 {0, 1}
  seg: np.ndarray | None  # [96, 96, 50] uint8 {0, 1}, None for healthy subjects
  affine: np.ndarray  # [4, 4] float64, voxel → world of the working grid
  source_spacing: tuple[float, float, float]  # header spacing (mm) of the input volume
  resampled_to_1mm: bool  # True when Q23 resampling to 1 mm was applied


# --------------------------------------------------------------------------- curvature flow


def curvature_flow(image: np.ndarray, time_step: float = 0.125, iterations: int = 3,
                   spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
  """Edge-preserving smoothing equal to SimpleITK `CurvatureFlow` (ITK CurvatureFlowImageFilter).

  Explicit level-set update, `iterations` times: I ← I + dt·κ|∇I| with
  κ|∇I| = (Σ_i I_i² Σ_{j≠i} I_jj − 2 Σ_{i<j} I_i I_j I_ij) / |∇I|²
  (mean curvature of the isophotes times the gradient magnitude), central differences scaled by
  1/spacing, zero-flux Neumann boundary (edge replication) and a zero update where |∇I|² < 1e-9.
  Computed in float64 (ITK rounds to float32 between iterations; the difference is ~1e-7 relative).

  Voxels whose 3×3×3 neighbourhood is constant get a zero update, so the flow only runs on the
  bounding box of the non-constant region grown by `iterations` + 1 voxels; this is exact and
  skips most of the zero background of skull-stripped MRI.

  Args:
    image: [H, W, D] (or [H, W]) real array.
    time_step: dt of the explicit scheme.
    iterations: number of updates.
    spacing: voxel size per axis (mm), one value per image axis.

  Returns:
    Smoothed image, same shape, float32.
  """
  x = np.array(image, dtype=np.float64, copy=True)
  if x.ndim not in (2, 3) or len(spacing) != x.ndim:
    raise ValueError(f"need a 2-D/3-D image and one spacing per axis, got {x.shape}, {spacing}")
  scales = [1.0 / float(s) for s in spacing] + [1.0] * (3 - x.ndim)
  volume = x.reshape(x.shape + (1,) * (3 - x.ndim))  # a singleton axis adds nothing to the flow
  region = _active_region(volume, margin=int(iterations) + 1)
  if region is not None:
    sub = volume[region]  # a view: updated in place
    for _ in range(int(iterations)):
      sub += time_step * _curvature_speed(sub, scales)
  return x.astype(np.float32)


def _active_region(volume: np.ndarray, margin: int) -> tuple[slice, ...] | None:
  """Bounding box (grown by `margin`) of the voxels that differ from the first voxel; None if none.

  Outside the box every voxel equals the first one, and each iteration can change only voxels
  within one more voxel of the box; so with margin > iterations the grown box's border and
  everything beyond it keep that value throughout, and edge replication at the border gives the
  true neighbours. Running the flow on the grown box is therefore exact.
  """
  differs = volume != volume.flat[0]
  region = []
  for axis in range(volume.ndim):
    profile = np.flatnonzero(differs.any(axis=tuple(a for a in range(volume.ndim) if a != axis)))
    if profile.size == 0:
      return None
    region.append(slice(max(profile[0] - margin, 0), profile[-1] + margin + 1))
  return tuple(region)


def _curvature_speed(volume: np.ndarray, scales: Sequence[float]) -> np.ndarray:
  """κ|∇I| of a [H, W, D] float64 volume (edge-replicated border), computed slab by slab."""
  padded = np.pad(volume, 1, mode="edge")
  speed = np.empty_like(volume)
  step = max(1, _SLAB_VOXELS // (padded.shape[1] * padded.shape[2]))
  for start in range(0, volume.shape[0], step):
    stop = min(start + step, volume.shape[0])
    speed[start:stop] = _slab_speed(padded[start:stop + 2], scales)
  return speed


def _slab_speed(p: np.ndarray, scales: Sequence[float]) -> np.ndarray:
  """κ|∇I| on the interior of a slab `p` [h + 2, w + 2, d + 2] carrying a one-voxel halo.

  With raw differences u_i = s_i(I₊ − I₋) = 2 I_i, w_i = s_i²(I₊ + I₋ − 2I) = I_ii and
  v_ij = s_i s_j(I₊₊ − I₊₋ − I₋₊ + I₋₋) = 4 I_ij, the ITK update becomes
  κ|∇I| = L − (Σ_i u_i² w_i + ½ Σ_{i<j} u_i u_j v_ij) / Σ_i u_i², L = Σ_i w_i.
  """
  sx, sy, sz = scales
  centre = p[1:-1, 1:-1, 1:-1]
  dx = (p[2:] - p[:-2]) * sx  # [h, w + 2, d + 2], keeps the y/z halo for the cross terms
  dy = (p[1:-1, 2:] - p[1:-1, :-2]) * sy  # [h, w, d + 2]
  ux, uy = dx[:, 1:-1, 1:-1], dy[:, :, 1:-1]
  uz = (p[1:-1, 1:-1, 2:] - p[1:-1, 1:-1, :-2]) * sz
  twice = 2.0 * centre
  wx = (p[2:, 1:-1, 1:-1] + p[:-2, 1:-1, 1:-1] - twice) * (sx * sx)
  wy = (p[1:-1, 2:, 1:-1] + p[1:-1, :-2, 1:-1] - twice) * (sy * sy)
  wz = (p[1:-1, 1:-1, 2:] + p[1:-1, 1:-1, :-2] - twice) * (sz * sz)
  vxy = (dx[:, 2:, 1:-1] - dx[:, :-2, 1:-1]) * sy
  vxz = (dx[:, 1:-1, 2:] - dx[:, 1:-1, :-2]) * sz
  vyz = (dy[..., 2:] - dy[..., :-2]) * sz
  qx, qy, qz = ux * ux, uy * uy, uz * uz
  norm = qx + qy + qz
  quad = qx * wx + qy * wy + qz * wz
  quad += 0.5 * (ux * uy * vxy + ux * uz * vxz + uy * uz * vyz)
  moving = norm >= 4.0 * _MIN_GRADIENT_SQR  # Σ u_i² = 4|∇I|²
  speed = np.zeros_like(norm)
  np.divide(quad, norm, out=speed, where=moving)
  np.subtract(wx + wy + wz, speed, out=speed, where=moving)
  return speed


# --------------------------------------------------------------------------- crop / pad, rescale


def _crop_and_pad(shape: Sequence[int], target: Sequence[int]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(crop_start, pad_start, pad) per axis of `crop_or_pad` from `shape` to `target` (int64 [3])."""
  target = np.asarray(target, dtype=np.int64)
  if target.shape != (len(shape),):
    raise ValueError(f"target {tuple(target)} does not match a volume of shape {tuple(shape)}")
  diff = target - np.asarray(shape, dtype=np.int64)
  pad = np.maximum(diff, 0)
  crop = np.maximum(-diff, 0)
  return (crop + 1) // 2, (pad + 1) // 2, pad


def crop_or_pad(volume: np.ndarray, target: Sequence[int] = (192, 192, 100)
                ) -> tuple[np.ndarray, np.ndarray]:
  """Centred crop or zero pad to `target`, like torchio `CropOrPad`.

  Per axis diff = target − n; the odd voxel goes to the START side (ceil(|diff|/2) at the start,
  floor at the end), for cropping and padding alike.

  Args:
    volume: [H, W, D] array (any dtype).
    target: output shape.

  Returns:
    (out, offset): out [*target] with volume's dtype; offset int64 [3] such that output index =
    input index − offset (crop start for cropped axes, −pad start for padded axes). The affine of
    `out` is `affine @ translation(offset)`.
  """
  volume = np.asarray(volume)
  crop_start, pad_start, pad = _crop_and_pad(volume.shape, target)
  padded = np.pad(volume, [(int(s), int(p - s)) for s, p in zip(pad_start, pad)])
  out = padded[tuple(slice(int(s), int(s + t)) for s, t in zip(crop_start, target))]
  return out, crop_start - pad_start


def crop_box(shape: Sequence[int], target: Sequence[int], margin: int = 0) -> tuple[slice, ...]:
  """The input voxels `crop_or_pad(·, target)` keeps, grown by `margin` and clipped to `shape`.

  A padded axis keeps all of its voxels. E.g. shape (182, 218, 182), target (128, 128, 16),
  margin 4 → (slice(23, 159), slice(41, 177), slice(79, 103)).
  """
  crop_start, _, _ = _crop_and_pad(shape, target)
  return tuple(slice(max(int(s) - margin, 0), min(int(s) + min(int(t), n) + margin, n))
               for s, t, n in zip(crop_start, target, shape))


def translation(offset: Sequence[float]) -> np.ndarray:
  """[4, 4] homogeneous translation by `offset` (voxel units)."""
  t = np.eye(4)
  t[:3, 3] = offset
  return t


def rescale_percentile(image: np.ndarray, mask: np.ndarray,
                       percentiles: Sequence[float] = (1.0, 99.0), source: str = "") -> np.ndarray:
  """torchio `RescaleIntensity(out_min_max=(0, 1), percentiles, masking_method=mask)`.

  p_lo, p_hi = percentiles of image[mask > 0] (numpy linear interpolation); the WHOLE image is
  clipped to [p_lo, p_hi] and mapped linearly to [0, 1] (so background below p_lo → 0).

  Args:
    image: [H, W, D] real array.
    mask: [H, W, D] brain mask; nonzero = inside.
    percentiles: (lo, hi) in [0, 100].
    source: file name used in error messages.

  Returns:
    [H, W, D] float32 in [0, 1].

  Raises:
    DataError: mask empty or of another shape, non-finite values in the mask, or p_hi == p_lo.
  """
  name = source or "<array>"
  image = np.asarray(image, dtype=np.float64)
  inside = np.asarray(mask) > 0
  if inside.shape != image.shape:
    raise DataError(f"{name}: mask shape {inside.shape} differs from image shape {image.shape}")
  values = image[inside]
  if values.size == 0:
    raise DataError(f"{name}: brain mask is empty, cannot compute intensity percentiles")
  if not np.all(np.isfinite(values)):
    raise DataError(f"{name}: non-finite intensities inside the brain mask")
  lo, hi = np.percentile(values, percentiles)
  if not hi > lo:
    raise DataError(f"{name}: intensities inside the brain mask are constant between the "
                    f"{percentiles[0]}th and {percentiles[1]}th percentiles ({lo}); cannot rescale")
  return ((np.clip(image, lo, hi) - lo) / (hi - lo)).astype(np.float32)


# --------------------------------------------------------------------------- resampling


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
  """Whole-sample symmetric extension (…2 1 0 1 2…), as ITK's B-spline and scipy 'mirror'."""
  if n == 1:
    return np.zeros_like(index)
  period = 2 * (n - 1)
  index = np.abs(index) % period
  return np.where(index > n - 1, period - index, index)


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
  """Centred cubic B-spline β3(t)."""
  t = np.abs(t)
  return np.where(t < 1.0, 2.0 / 3.0 - t * t + 0.5 * t ** 3,
                  np.where(t < 2.0, (2.0 - t) ** 3 / 6.0, 0.0))


def _cubic_matrix(n: int, positions: np.ndarray) -> np.ndarray:
  """[m, n] weights mapping B-spline coefficients to values at continuous `positions` (mirror)."""
  base = np.floor(positions).astype(np.int64)
  taps = base[:, None] + np.arange(-1, 3)[None, :]  # [m, 4]
  weights = _cubic_bspline(positions[:, None] - taps)
  matrix = np.zeros((positions.size, n))
  rows = np.broadcast_to(np.arange(positions.size)[:, None], taps.shape)
  np.add.at(matrix, (rows, _mirror(taps, n)), weights)
  return matrix


def _resample_axis(volume: np.ndarray, axis: int, positions: np.ndarray, order: int) -> np.ndarray:
  """Samples `volume` along one axis at continuous indices `positions`.

  order 3: cubic B-spline interpolation with prefilter and mirror boundary (sitkBSpline / scipy
  `map_coordinates(order=3, mode='mirror')`), float64. order 0: ITK nearest neighbour, i.e. index
  floor(x + 0.5) (round half up), clamped to the volume; keeps the dtype.
  """
  n = volume.shape[axis]
  if order == 0:
    index = np.clip(np.floor(positions + 0.5).astype(np.int64), 0, n - 1)
    return np.take(volume, index, axis=axis)
  if order != 3:
    raise ValueError(f"interpolation order must be 0 (nearest) or 3 (cubic B-spline), got {order}")
  coeffs = ndimage.spline_filter1d(np.asarray(volume, dtype=np.float64), order=3, axis=axis,
                                   mode="mirror")
  moved = np.moveaxis(coeffs, axis, 0)
  out = _cubic_matrix(n, positions) @ moved.reshape(n, -1)
  return np.moveaxis(out.reshape((positions.size,) + moved.shape[1:]), 0, axis)


def downsample(volume: np.ndarray, factor: int = 2, order: int = 3) -> np.ndarray:
  """torchio `Resample(factor)` on a 1-mm grid (the reference's ×2 downsampling).

  Output size ceil(n / factor) per axis; output voxel k is centred at continuous input index
  factor·k + (factor − 1)/2 (= 2k + 0.5 for factor 2). No anti-aliasing, no clipping.

  Args:
    volume: [H, W, D] array.
    factor: integer downsampling factor.
    order: 3 for intensity images (cubic B-spline with prefilter, mirror boundary, like
      sitkBSpline; may overshoot the input range slightly), 0 for label maps (ITK nearest
      neighbour with round-half-up: for factor 2 the label of input index 2k + 1). For an odd n the
      last sample lies half a voxel beyond the last centre; it is taken from the mirror extension
      (order 3) or the last voxel (order 0), where ITK would return its pad value.

  Returns:
    [ceil(H/f), ceil(W/f), ceil(D/f)] float32 for order 3, input dtype for order 0.
  """
  out = np.asarray(volume)
  for axis, n in enumerate(out.shape):
    positions = factor * np.arange(math.ceil(n / factor)) + (factor - 1) / 2.0
    out = _resample_axis(out, axis, positions, order)
  return out.astype(np.float32) if order == 3 else out


def affine_spacing(affine: np.ndarray) -> tuple[float, float, float]:
  """Voxel size (mm) per axis: the norms of the affine's first three columns."""
  return tuple(float(s) for s in np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3],
                                                axis=0))


def _isotropic_axes(shape: Sequence[int], spacing: Sequence[float], target: float,
                    tolerance: float) -> list[tuple[int, np.ndarray, float, float] | None]:
  """Per axis None (already `target` within tolerance) or (m, positions, scale, start).

  The new grid keeps the physical field of view: m = floor(n·s/target + 0.5) voxels of size
  `target` centred on the old field's centre; new voxel k sits at old continuous index
  start + k·scale with scale = target/s and start = (n − 1)/2 − (m − 1)/2·scale.
  """
  axes = []
  for n, s in zip(shape, spacing):
    if abs(s - target) <= tolerance:
      axes.append(None)
      continue
    m = max(1, int(math.floor(n * s / target + 0.5)))
    scale = target / s
    start = (n - 1) / 2.0 - (m - 1) / 2.0 * scale
    axes.append((m, start + scale * np.arange(m), scale, start))
  return axes


def resample_to_isotropic(volume: np.ndarray, spacing: Sequence[float], order: int,
                          target: float = 1.0, tolerance: float = 1e-3) -> np.ndarray:
  """Resamples axes whose spacing differs from `target` (mm) so that every voxel is `target` mm.

  Axes within `tolerance` are left untouched. See `_isotropic_axes` for the grid and
  `isotropic_affine` for the matching affine.

  Args:
    volume: [H, W, D] array.
    spacing: current voxel size per axis (mm).
    order: 3 (cubic B-spline, images; float32 out) or 0 (nearest, labels; dtype kept).
    target: new voxel size (mm).
    tolerance: spacing tolerance (mm).

  Returns:
    [round(H·s_H), round(W·s_W), round(D·s_D)] resampled volume.
  """
  out = np.asarray(volume)
  for axis, spec in enumerate(_isotropic_axes(out.shape, spacing, target, tolerance)):
    if spec is not None:
      out = _resample_axis(out, axis, spec[1], order)
  return out.astype(np.float32) if order == 3 else out


def isotropic_affine(affine: np.ndarray, shape: Sequence[int], target: float = 1.0,
                     tolerance: float = 1e-3) -> np.ndarray:
  """[4, 4] affine of the grid produced by `resample_to_isotropic` (same field of view)."""
  affine = np.asarray(affine, dtype=np.float64)
  grid = np.eye(4)
  for axis, spec in enumerate(_isotropic_axes(shape, affine_spacing(affine), target, tolerance)):
    if spec is not None:
      grid[axis, axis], grid[axis, 3] = spec[2], spec[3]
  return affine @ grid


def working_affine(affine: np.ndarray, offset: Sequence[int], factor: int = 2) -> np.ndarray:
  """[4, 4] affine of the final (downsampled) grid.

  affine @ T(offset) @ [[f, 0, 0, (f−1)/2], [0, f, 0, (f−1)/2], [0, 0, f, (f−1)/2], [0, 0, 0, 1]]:
  output voxel k maps to the world point of input index f·k + (f − 1)/2 + offset.
  """
  scale = np.diag([float(factor)] * 3 + [1.0])
  scale[:3, 3] = (factor - 1) / 2.0
  return np.asarray(affine, dtype=np.float64) @ translation(offset) @ scale


# --------------------------------------------------------------------------- full chain


def _validate(image: np.ndarray, mask: np.ndarray, seg: np.ndarray | None, affine: np.ndarray,
              name: str) -> None:
  """Raises DataError naming `name` when the inputs cannot be preprocessed."""
  if image.ndim != 3:
    raise DataError(f"{name}: expected a 3-D volume, got shape {image.shape}")
  for role, label in (("mask", mask), ("seg", seg)):
    if label is not None and label.shape != image.shape:
      raise DataError(f"{name}: {role} shape {label.shape} differs from image shape {image.shape}")
  if not np.all(np.isfinite(image)):
    raise DataError(f"{name}: image contains NaN or infinite values")
  if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
    raise DataError(f"{name}: affine must be a finite 4x4 matrix, got shape {affine.shape}")
  if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
    raise DataError(f"{name}: affine is singular (zero voxel size)")


def preprocess_volume(image: np.ndarray, mask: np.ndarray, seg: np.ndarray | None,
                      affine: np.ndarray, cfg: PreprocessConfig = PreprocessConfig(),
                      source: str = "") -> Preprocessed:
  """Runs the reference chain (METHOD §2.3) on one subject.

  Order: (Q23) resample to 1 mm if the header spacing is not 1 mm → curvature flow on the intensity
  image only (Q22, if cfg.curvature_flow) → crop/pad all three (labels binarised > 0) → percentile
  rescale inside the cropped mask → downsample (image cubic, labels nearest).

  Args:
    image: [H, W, D] intensity volume.
    mask: [H, W, D] brain mask (nonzero = brain).
    seg: [H, W, D] lesion label map or None.
    affine: [4, 4] voxel → world of the input.
    cfg: preprocessing parameters.
    source: file name used in error messages.

  Returns:
    `Preprocessed` on the working grid (cfg.crop_size / cfg.downsample, rounded up).
  """
  name = source or "<array>"
  image = np.asarray(image, dtype=np.float32)  # the reference reads as float32
  mask = np.asarray(mask)
  seg = None if seg is None else np.asarray(seg)
  affine = np.asarray(affine, dtype=np.float64)
  _validate(image, mask, seg, affine, name)

  spacing = affine_spacing(affine)
  resampled = any(abs(s - 1.0) > cfg.spacing_tolerance for s in spacing)
  if resampled:
    affine = isotropic_affine(affine, image.shape, 1.0, cfg.spacing_tolerance)
    image = resample_to_isotropic(image, spacing, 3, 1.0, cfg.spacing_tolerance)
    mask = resample_to_isotropic(mask, spacing, 0, 1.0, cfg.spacing_tolerance)
    if seg is not None:
      seg = resample_to_isotropic(seg, spacing, 0, 1.0, cfg.spacing_tolerance)

  if cfg.curvature_flow and cfg.cf_iterations > 0:
    # Only the voxels the crop keeps are used: the flow runs on the crop box grown by
    # iterations + 1 voxels, which gives them exactly the values of a whole-volume flow (each
    # iteration moves the effect of the box's edge replication one voxel inward, so a margin of
    # `iterations` suffices; the extra voxel is slack, as in `_active_region`).
    box = crop_box(image.shape, cfg.crop_size, margin=int(cfg.cf_iterations) + 1)
    image = image.copy()
    image[box] = curvature_flow(image[box], cfg.cf_time_step, cfg.cf_iterations)

  image, offset = crop_or_pad(image, cfg.crop_size)
  mask = (crop_or_pad(mask, cfg.crop_size)[0] > 0).astype(np.uint8)
  if seg is not None:
    seg = (crop_or_pad(seg, cfg.crop_size)[0] > 0).astype(np.uint8)

  image = rescale_percentile(image, mask, cfg.percentiles, source=name)

  f = cfg.downsample
  return Preprocessed(
      image=downsample(image, f, order=3),
      mask=downsample(mask, f, order=0),
      seg=None if seg is None else downsample(seg, f, order=0),
      affine=working_affine(affine, offset, f),
      source_spacing=spacing,
      resampled_to_1mm=resampled)
