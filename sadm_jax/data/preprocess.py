"""Volume preprocessing of METHOD §2.3: curvature flow, crop/pad, percentile rescale, ×2 resampling.

All volumes are numpy arrays in NIfTI voxel order (i, j, k) = (H, W, D); axial slices lie along the
last axis. The chain reproduces the reference reader + torchio transforms
(SimpleITK `CurvatureFlow` → `CropOrPad` → `RescaleIntensity(percentiles)` → `Resample(2)`) with
numpy/scipy only, and fixes quirks Q22 (curvature flow chosen by role, flag honoured) and Q23
(header spacing checked; non-1-mm volumes are resampled to 1 mm instead of being assumed 1 mm).

Grid bookkeeping: every step that changes the voxel grid also says how, so that the final 96×96×50
grid carries a correct affine (`working_affine`): crop/pad shifts the index origin by an integer
offset `o` (output index = input index − o) and the ×f resampling puts output voxel k at continuous
input index f·k + (f − 1)/2. The steps live in three modules: this one (configuration, crop/pad,
rescale, the chain), `curvature` (the flow) and `resample` (resampling and affines).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Sequence

import numpy as np

from sadm_jax.data.curvature import curvature_flow
from sadm_jax.data.errors import DataError
from sadm_jax.data.resample import (affine_spacing, downsample, isotropic_affine,
                                    resample_to_isotropic, working_affine)

# Bump when the numerical behaviour of the chain (this module, `curvature`, `resample`) changes: it is part of `PreprocessConfig.key()`,
# so caches built by an older implementation are not reused.
PREPROCESS_VERSION = 1

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
    `out` is `affine @ resample.translation(offset)`.
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
    # `iterations` suffices; the extra voxel is slack, as in `curvature._active_region`).
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
