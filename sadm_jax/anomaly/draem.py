"""DRAEM synthetic anomalies for single-channel slices: Perlin masks filled with augmented noise."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from scipy import ndimage

# METHOD §3.8 step by step (anomalib's DRAEM augmenter without an external texture source):
#   1. with probability p_anomalous the slice gets an anomaly (reference: always);
#   2. 2-D Perlin noise on a power-of-two grid (128x128 for 96x96) at resolution (2^a, 2^b),
#      a, b ~ U{0..6}, cropped to the slice, rotated by U(-90, 90) deg (bilinear, fill 0);
#      mask m = 1[noise > 0.5];
#   3. texture = the same rotated noise x255 cast to uint8 (Q25: the reference wraps negative values
#      around, e.g. -127.5 -> 129; the default here clips to [0, 255] first), then 3 distinct
#      augmenters out of 10 in random order, /255, x m -> p;
#   4. beta ~ U(0.2, 1); x_ano = x (1 - m) + beta p + (1 - beta) x m; label y = m.
# The reference replicates the texture to 3 channels and keeps channel 0; every augmenter below
# is the channel-0 result of its RGB counterpart on a grey image (see each function).

_NUM_AUGMENTERS = 10


@dataclasses.dataclass(frozen=True)
class DraemConfig:
  """Parameters of the DRAEM anomaly generator (defaults = the reference)."""
  p_anomalous: float = 1.0
  perlin_scale_exponents: tuple[int, int] = (0, 6)  # a, b ~ U{lo..hi}, resolution (2^a, 2^b)
  threshold: float = 0.5  # mask = noise > threshold
  rotation_deg: float = 90.0  # noise rotated by U(-rotation_deg, rotation_deg)
  n_augmenters: int = 3  # distinct texture augmenters out of the 10
  beta_range: tuple[float, float] = (0.2, 1.0)
  faithful_uint8_wrap: bool = False  # Q25: True keeps the reference's uint8 wrap of negative noise
  restrict_to_brain: bool = False  # Q25: m <- m AND brain (needs a brain mask)
  brain_retries: int = 10  # draws tried before giving up on a mask that overlaps the brain

  def __post_init__(self):
    if not 0.0 <= self.p_anomalous <= 1.0:
      raise ValueError(f"DraemConfig.p_anomalous must be in [0, 1], got {self.p_anomalous}")
    lo, hi = self.perlin_scale_exponents
    if not 0 <= lo <= hi:
      raise ValueError(f"DraemConfig.perlin_scale_exponents must be 0 <= lo <= hi, got {lo, hi}")
    if not 1 <= self.n_augmenters <= _NUM_AUGMENTERS:
      raise ValueError(f"DraemConfig.n_augmenters must be in [1, {_NUM_AUGMENTERS}]")
    if not 0.0 <= self.beta_range[0] <= self.beta_range[1] <= 1.0:
      raise ValueError("DraemConfig.beta_range must satisfy 0 <= lo <= hi <= 1")
    if self.brain_retries < 1:
      raise ValueError("DraemConfig.brain_retries must be >= 1")


# ---- Perlin noise and mask ----

def _fade(t: np.ndarray) -> np.ndarray:
  return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)  # 6t^5 - 15t^4 + 10t^3


def perlin_noise_2d(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator,
                    crop: tuple[int, int] | None = None) -> np.ndarray:
  """2-D gradient (Perlin) noise [H, W] float32 (or its top-left `crop`), values within ~[-1, 1].

  The lattice has res[0] x res[1] cells over the `shape` grid (pixel i sits at i * res / size),
  with a random unit gradient (angle ~ U[0, 2pi)) at each of the (res[0]+1) x (res[1]+1)
  corners; each pixel blends its four corner dot products with the quintic fade, and the result
  is scaled by sqrt(2). Noise is 0 on lattice points. `crop` evaluates only the top-left pixels
  (identical to cropping afterwards). Consumes (res[0]+1) * (res[1]+1) uniforms.
  """
  h, w = crop if crop is not None else shape
  angles = 2.0 * np.pi * rng.random((res[0] + 1, res[1] + 1))
  gx, gy = np.cos(angles), np.sin(angles)
  u = np.arange(h) * (res[0] / shape[0])
  v = np.arange(w) * (res[1] / shape[1])
  i0, j0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
  fu, fv = (u - i0)[:, None], (v - j0)[None, :]

  def corner(a: int, b: int) -> np.ndarray:  # gradient at corner (i0+a, j0+b) . offset to pixel
    cols = j0 + b
    return gx[i0 + a][:, cols] * (fu - a) + gy[i0 + a][:, cols] * (fv - b)

  n00, n10, n01, n11 = corner(0, 0), corner(1, 0), corner(0, 1), corner(1, 1)
  t, s = _fade(fu), _fade(fv)
  n0 = n00 + t * (n10 - n00)
  n1 = n01 + t * (n11 - n01)
  return (np.sqrt(2.0) * (n0 + s * (n1 - n0))).astype(np.float32)


def _perlin_grid_size(n: int, max_exponent: int) -> int:
  """Power of two >= n and >= 2^max_exponent (128 for a 96-pixel side)."""
  return max(1 << max(n - 1, 0).bit_length(), 1 << max_exponent)


def unrotated_noise(shape: tuple[int, int], rng: np.random.Generator,
                    cfg: DraemConfig = DraemConfig()) -> np.ndarray:
  """Perlin noise at a random resolution (2^a, 2^b), cropped to `shape` [H, W], float32."""
  lo, hi = cfg.perlin_scale_exponents
  a, b = (int(e) for e in rng.integers(lo, hi + 1, size=2))
  grid = (_perlin_grid_size(shape[0], hi), _perlin_grid_size(shape[1], hi))
  return perlin_noise_2d(grid, (1 << a, 1 << b), rng, crop=tuple(shape))


def rotate(image: np.ndarray, angle_deg: float) -> np.ndarray:
  """Rotation about the image centre, bilinear, zero fill, same shape (float32 [H, W])."""
  return ndimage.rotate(np.asarray(image, np.float32), angle_deg, reshape=False, order=1,
                        mode="constant", cval=0.0, prefilter=False)


def anomaly_noise(shape: tuple[int, int], rng: np.random.Generator,
                  cfg: DraemConfig = DraemConfig()) -> np.ndarray:
  """The rotated Perlin noise [H, W] float32 that defines both the mask and the texture."""
  noise = unrotated_noise(shape, rng, cfg)
  return rotate(noise, float(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)))


def noise_to_uint8(noise: np.ndarray, wrap: bool) -> np.ndarray:
  """noise x255 truncated to uint8. wrap=True: modulo 256 like the reference's C cast (Q25,
  -127.5 -> 129); wrap=False: clipped to [0, 255] first (negative noise -> 0)."""
  v = np.asarray(noise, np.float64) * 255.0
  if wrap:
    return (np.trunc(v).astype(np.int64) % 256).astype(np.uint8)
  return np.trunc(np.clip(v, 0.0, 255.0)).astype(np.uint8)


# ---- texture augmenters: single-channel uint8 [H, W] -> uint8 [H, W] ----

def _to_uint8(v: np.ndarray) -> np.ndarray:
  return np.clip(np.round(v), 0, 255).astype(np.uint8)


def _lut(img: np.ndarray, table: np.ndarray) -> np.ndarray:
  return np.asarray(table, np.uint8)[img]


def aug_gamma(img: np.ndarray, gamma: float) -> np.ndarray:
  """imgaug GammaContrast (uint8 LUT, truncated): 255 (v / 255)^gamma."""
  table = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma, 0, 255)
  return _lut(img, np.trunc(table))


def aug_brightness(img: np.ndarray, mul: float, add: float, multiply_first: bool) -> np.ndarray:
  """imgaug MultiplyAndAddToBrightness on a grey image: the brightness channel (Y / V / L) equals
  the grey level, so v -> v * mul and v -> v + add, in random order, rounded and clipped per step
  (the non-linear Lab/Luv lightness variants are treated like Y)."""
  v = img.astype(np.float64)
  steps = [lambda z: _to_uint8(z * mul), lambda z: _to_uint8(z + add)]
  for step in (steps if multiply_first else steps[::-1]):
    v = step(v).astype(np.float64)
  return v.astype(np.uint8)


def _smooth3x3(img: np.ndarray) -> np.ndarray:
  """PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13, rounded); border pixels unchanged."""
  v = img.astype(np.float64)
  out = v.copy()
  if min(img.shape) >= 3:
    box = sum(v[1 + di:v.shape[0] - 1 + di, 1 + dj:v.shape[1] - 1 + dj]
              for di in (-1, 0, 1) for dj in (-1, 0, 1))
    out[1:-1, 1:-1] = np.floor((box + 4.0 * v[1:-1, 1:-1]) / 13.0 + 0.5)
  return out


def aug_sharpness(img: np.ndarray, factor: float) -> np.ndarray:
  """PIL ImageEnhance.Sharpness: blend(smoothed, img, factor) = s + factor (img - s), truncated
  and clipped (factor 0 = smoothed, 1 = identity, 2 = sharpened)."""
  s = _smooth3x3(img)
  return np.clip(np.trunc(s + factor * (img.astype(np.float64) - s)), 0, 255).astype(np.uint8)


def aug_hue_saturation(img: np.ndarray, hue: int, saturation: int) -> np.ndarray:
  """imgaug AddToHueAndSaturation, channel 0 (red) of the grey image after the HSV round trip.

  Grey has S = 0 and H = 0. The hue shift (imgaug units, x180/255 in float32 and truncated
  toward zero, as imgaug does, to OpenCV's [0, 180): 2 degrees per unit) and
  S' = clip(saturation, 0, 255) / 255 give, by HSV -> RGB,
  R = V (1 - S' clamp(min(k, 4 - k), 0, 1)), k = (5 + H_deg / 60) mod 6. So only positive
  saturation with |hue| >= 44 (> 60 deg) darkens channel 0; otherwise it is unchanged.
  """
  shift = int(np.float32(hue) / np.float32(255.0) * np.float32(180.0))  # astype(int32)
  hue_deg = 2.0 * (shift % 180)
  sat = np.clip(saturation, 0, 255) / 255.0
  k = (5.0 + hue_deg / 60.0) % 6.0
  factor = 1.0 - sat * float(np.clip(min(k, 4.0 - k), 0.0, 1.0))
  return _to_uint8(img.astype(np.float64) * factor)


def aug_solarize(img: np.ndarray, threshold: float) -> np.ndarray:
  """imgaug Solarize (Invert above a threshold): v >= threshold -> 255 - v."""
  return np.where(img >= threshold, 255 - img, img).astype(np.uint8)


def aug_posterize(img: np.ndarray, bits: int) -> np.ndarray:
  """Keeps the `bits` most significant bits (PIL / imgaug Posterize)."""
  return (img & np.uint8((0xFF << (8 - bits)) & 0xFF)).astype(np.uint8)


def aug_invert(img: np.ndarray) -> np.ndarray:
  """255 - v."""
  return (255 - img).astype(np.uint8)


def aug_autocontrast(img: np.ndarray, cutoff: int) -> np.ndarray:
  """PIL ImageOps.autocontrast: drop `cutoff`% of the pixels at each end of the histogram, then
  map [lo, hi] linearly onto [0, 255] (int truncation, clipped); identity when hi <= lo."""
  hist = np.bincount(img.ravel(), minlength=256)
  cut = img.size * cutoff // 100
  above_lo = np.nonzero(np.cumsum(hist) > cut)[0]
  above_hi = np.nonzero(np.cumsum(hist[::-1]) > cut)[0]
  if not above_lo.size or not above_hi.size:
    return img.copy()
  lo, hi = int(above_lo[0]), 255 - int(above_hi[0])
  if hi <= lo:
    return img.copy()
  scale = 255.0 / (hi - lo)
  table = np.clip(np.trunc(np.arange(256) * scale - lo * scale), 0, 255)
  return _lut(img, table)


def aug_equalize(img: np.ndarray) -> np.ndarray:
  """PIL ImageOps.equalize: step = (N - count of the top level) // 255; v -> (step // 2 +
  #pixels below v) // step, clipped to 255. Identity for single-level images or when step = 0
  (fewer than 255 pixels below the top level)."""
  hist = np.bincount(img.ravel(), minlength=256)
  levels = hist[hist > 0]
  if levels.size <= 1:
    return img.copy()
  step = (int(levels.sum()) - int(levels[-1])) // 255
  if step == 0:
    return img.copy()
  below = np.concatenate([[0], np.cumsum(hist)[:-1]])
  return _lut(img, np.minimum((step // 2 + below) // step, 255))


def aug_rotate(img: np.ndarray, angle_deg: float) -> np.ndarray:
  """imgaug Affine(rotate): bilinear rotation about the centre, fill 0, rounded."""
  return _to_uint8(rotate(img, angle_deg))


# Samplers in the reference's list order; each draws its parameters from `rng`.
_Augmenter = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _solarize_sampled(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  apply, threshold = rng.random() < 0.5, rng.uniform(32.0, 128.0)  # Solarize(p=0.5, (32, 128))
  return aug_solarize(img, threshold) if apply else img


AUGMENTERS: tuple[tuple[str, _Augmenter], ...] = (
    ("gamma_contrast", lambda im, r: aug_gamma(im, r.uniform(0.5, 2.0))),
    ("multiply_and_add_to_brightness",
     lambda im, r: aug_brightness(im, r.uniform(0.8, 1.2), r.uniform(-30.0, 30.0),
                                  bool(r.random() < 0.5))),
    ("enhance_sharpness", lambda im, r: aug_sharpness(im, r.uniform(0.0, 2.0))),
    ("add_to_hue_and_saturation",
     lambda im, r: aug_hue_saturation(im, int(r.integers(-50, 51)), int(r.integers(-50, 51)))),
    ("solarize", _solarize_sampled),
    ("posterize", lambda im, r: aug_posterize(im, int(r.integers(1, 9)))),
    ("invert", lambda im, r: aug_invert(im)),
    ("autocontrast", lambda im, r: aug_autocontrast(im, int(r.integers(0, 21)))),
    ("equalize", lambda im, r: aug_equalize(im)),
    ("rotate", lambda im, r: aug_rotate(im, r.uniform(-45.0, 45.0))),
)
AUGMENTER_NAMES = tuple(name for name, _ in AUGMENTERS)
assert len(AUGMENTERS) == _NUM_AUGMENTERS


def augment_texture(texture: np.ndarray, rng: np.random.Generator, n: int = 3,
                    choice: tuple[int, ...] | None = None) -> np.ndarray:
  """Applies `n` distinct augmenters (uniform, random order; or the indices in `choice`) to a
  uint8 texture [H, W]."""
  if choice is None:
    choice = tuple(int(i) for i in rng.choice(len(AUGMENTERS), size=n, replace=False))
  out = np.asarray(texture, np.uint8)
  for i in choice:
    out = AUGMENTERS[i][1](out, rng)
  return out


# ---- anomaly synthesis ----

def sample_perturbation(shape: tuple[int, int], rng: np.random.Generator,
                        cfg: DraemConfig = DraemConfig()) -> tuple[np.ndarray, np.ndarray]:
  """One DRAEM perturbation: (p [H, W] float32 in [0, 1], 0 outside m; m [H, W] float32 {0, 1})."""
  noise = anomaly_noise(shape, rng, cfg)
  mask = (noise > cfg.threshold).astype(np.float32)
  texture = augment_texture(noise_to_uint8(noise, cfg.faithful_uint8_wrap), rng, cfg.n_augmenters)
  return texture.astype(np.float32) * np.float32(1.0 / 255.0) * mask, mask


def blend(x: np.ndarray, p: np.ndarray, m: np.ndarray, beta: float) -> np.ndarray:
  """x (1 - m) + beta p + (1 - beta) x m, computed so that x_ano == x exactly where m = 0."""
  beta = np.float32(beta)
  return np.where(m > 0, beta * p + (np.float32(1.0) - beta) * x, x).astype(np.float32)


def synth_anomaly(x: np.ndarray, rng: np.random.Generator, cfg: DraemConfig = DraemConfig(),
                  brain_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """DRAEM anomaly for one slice x [H, W] in [0, 1] -> (x_ano [H, W] float32, y [H, W] float32).

  y = m in {0, 1}; x_ano == x wherever y == 0. With probability 1 - p_anomalous (and when
  restrict_to_brain finds no overlap in `brain_retries` draws, or the brain mask is empty) the
  slice is returned unchanged with y = 0. Deterministic given the `rng` state.
  """
  x = np.asarray(x, np.float32)
  if x.ndim != 2:
    raise ValueError(f"synth_anomaly: expected a slice [H, W], got shape {x.shape}")
  unchanged = (x.copy(), np.zeros(x.shape, np.float32))
  if rng.random() >= cfg.p_anomalous:
    return unchanged
  brain = None
  if cfg.restrict_to_brain:
    if brain_mask is None:
      raise ValueError("synth_anomaly: restrict_to_brain=True needs a brain_mask")
    brain = np.asarray(brain_mask).astype(bool)
    if brain.shape != x.shape:
      raise ValueError(f"synth_anomaly: brain_mask {brain.shape} != slice {x.shape}")
    if not brain.any():
      return unchanged
  for _ in range(cfg.brain_retries if brain is not None else 1):
    p, m = sample_perturbation(x.shape, rng, cfg)
    if brain is not None:
      m = m * brain
      p = p * brain
    if m.any():
      break
  beta = rng.uniform(*cfg.beta_range)
  return blend(x, p, m, beta), m


def synth_volume(image: np.ndarray, mask: np.ndarray, seed: tuple[int, ...], cfg: DraemConfig
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic DRAEM anomalies per axial slice of a volume [D, H, W] (the evaluation's DRAEM
  test set), each drawn in that slice's brain `mask` (bool [D, H, W]) by one generator seeded
  with `seed`, slice after slice -> (image with anomalies float32, labels bool). Module-level and
  JAX-free: a worker process may run it."""
  rng = np.random.default_rng(list(seed))
  out, labels = np.array(image, np.float32), np.zeros(mask.shape, bool)
  for k in range(image.shape[0]):
    x_ano, y = synth_anomaly(out[k], rng, cfg, brain_mask=mask[k])
    out[k], labels[k] = x_ano, y > 0
  return out, labels
