"""Tests for DRAEM synthetic anomalies: Perlin masks, texture augmenters, blending, Q25 switches."""

from __future__ import annotations

import colorsys
import dataclasses
import time

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from sadm_jax.anomaly import draem

_CFG = draem.DraemConfig()


def _slice(shape=(96, 96), seed=0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  u, v = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
  inside = u ** 2 / 0.8 + v ** 2 / 0.6 < 1
  return (inside * (0.5 + 0.2 * rng.random(shape))).astype(np.float32)


# ---- Perlin noise and masks ----

def test_perlin_zero_on_lattice_and_bounded():
  noise = draem.perlin_noise_2d((128, 128), (4, 8), np.random.default_rng(0))
  assert noise.shape == (128, 128) and noise.dtype == np.float32
  np.testing.assert_allclose(noise[::32, ::16], 0.0, atol=1e-6)  # lattice points
  assert np.abs(noise).max() <= 1.0 + 1e-5 and noise.std() > 0.1
  crop = draem.perlin_noise_2d((128, 128), (4, 8), np.random.default_rng(0), crop=(96, 80))
  np.testing.assert_array_equal(crop, noise[:96, :80])


def test_mask_coverage_statistics():
  """Fraction of a 96x96 slice with noise > 0.5, before and after the random rotation."""
  rng = np.random.default_rng(0)
  before, after = [], []
  for _ in range(400):
    noise = draem.unrotated_noise((96, 96), rng, _CFG)
    before.append((noise > 0.5).mean())
    after.append((draem.rotate(noise, rng.uniform(-90, 90)) > 0.5).mean())
  before, after = np.array(before), np.array(after)
  q = np.percentile(before, [10, 25, 50, 75, 90])
  print(f"mask coverage before rotation: mean {before.mean():.4f}, p10/25/50/75/90 "
        f"{np.round(q, 4)}, empty {np.mean(before == 0):.3f}; after rotation: mean "
        f"{after.mean():.4f}, median {np.median(after):.4f}")
  assert 0.045 < before.mean() < 0.075
  assert 0.03 < q[1] and q[3] < 0.10  # the middle half lies in 3-10 %
  assert after.mean() < before.mean()  # rotation with zero fill cuts the corners


def test_noise_to_uint8_wrap_vs_clip():
  noise = np.array([-127.5 / 255, -0.5 / 255, -1.0 / 255, 0.0, 0.3, 1.0], np.float32)
  np.testing.assert_array_equal(draem.noise_to_uint8(noise, wrap=True), [129, 0, 255, 0, 76, 255])
  np.testing.assert_array_equal(draem.noise_to_uint8(noise, wrap=False), [0, 0, 0, 0, 76, 255])
  field = draem.anomaly_noise((96, 96), np.random.default_rng(3), _CFG)
  wrapped, clipped = draem.noise_to_uint8(field, True), draem.noise_to_uint8(field, False)
  negative = np.trunc(field.astype(np.float64) * 255) < 0  # noise <= -1/255
  assert negative.any()
  np.testing.assert_array_equal(wrapped != clipped, negative)


def test_wrap_switch_changes_only_the_texture():
  x = _slice()
  faithful = dataclasses.replace(_CFG, faithful_uint8_wrap=True)
  n_diff = 0
  for seed in range(30):
    xa, ya = draem.synth_anomaly(x, np.random.default_rng(seed), faithful)
    xb, yb = draem.synth_anomaly(x, np.random.default_rng(seed), _CFG)
    np.testing.assert_array_equal(ya, yb)  # same mask: it does not depend on the cast
    np.testing.assert_array_equal(xa[ya == 0], xb[yb == 0])
    n_diff += int(not np.array_equal(xa, xb))
  assert n_diff > 0  # texture statistics (equalize, autocontrast, rotation, ...) see the wrap


# ---- synth_anomaly ----

def test_deterministic_per_generator():
  x = _slice()
  a = draem.synth_anomaly(x, np.random.default_rng(5))
  b = draem.synth_anomaly(x, np.random.default_rng(5))
  c = draem.synth_anomaly(x, np.random.default_rng(6))
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[1], c[1])


def test_label_binary_and_outside_unchanged():
  x = _slice()
  rng = np.random.default_rng(0)
  nonempty = 0
  for _ in range(50):
    xa, y = draem.synth_anomaly(x, rng)
    assert xa.dtype == np.float32 and y.dtype == np.float32 and xa.shape == y.shape == x.shape
    assert set(np.unique(y)) <= {0.0, 1.0}
    np.testing.assert_array_equal(xa[y == 0], x[y == 0])  # exactly unchanged outside the label
    assert np.all((xa >= 0) & (xa <= 1))
    nonempty += int(y.any())
  assert nonempty >= 40


def test_beta_range_respected():
  """x = 0 and x = 1 with the same draws: x_ano1 - x_ano0 = 1 - beta on the mask."""
  betas = []
  for seed in range(200):
    a0, y = draem.synth_anomaly(np.zeros((96, 96), np.float32), np.random.default_rng(seed))
    a1, _ = draem.synth_anomaly(np.ones((96, 96), np.float32), np.random.default_rng(seed))
    if not y.any():
      continue
    b = 1.0 - (a1 - a0)[y > 0]
    assert np.ptp(b) < 1e-5  # one beta per sample
    betas.append(b.mean())
  betas = np.array(betas)
  assert betas.min() >= 0.2 - 1e-5 and betas.max() <= 1.0 + 1e-5
  assert betas.min() < 0.3 and betas.max() > 0.9 and len(betas) > 150


def test_p_anomalous():
  x = _slice()
  cfg0 = dataclasses.replace(_CFG, p_anomalous=0.0)
  xa, y = draem.synth_anomaly(x, np.random.default_rng(0), cfg0)
  np.testing.assert_array_equal(xa, x)
  assert not y.any()
  cfg = dataclasses.replace(_CFG, p_anomalous=0.5)
  rng = np.random.default_rng(1)
  # an anomalous draw can still give an empty mask (~5 %), so count label-bearing samples
  frac = np.mean([draem.synth_anomaly(x, rng, cfg)[1].any() for _ in range(300)])
  assert 0.35 < frac < 0.6


def test_default_anomalies_hit_empty_slices_and_leave_the_brain():
  # Q25 default: p_anomalous = 1 and no brain restriction, so an empty (all-zero) slice gets an
  # anomaly like any other, and masks on a brain slice reach the background.
  assert _CFG.p_anomalous == 1.0 and not _CFG.restrict_to_brain and not _CFG.faithful_uint8_wrap
  empty, x = np.zeros((96, 96), np.float32), _slice()
  outside = x == 0
  rng = np.random.default_rng(5)
  labelled_empty = labelled_outside = 0
  for _ in range(10):
    xa, y = draem.synth_anomaly(empty, rng)
    labelled_empty += int(y.any())
    assert np.array_equal(xa != 0, (xa != 0) & (y > 0))
    _, y = draem.synth_anomaly(x, rng, brain_mask=np.zeros((96, 96), bool))  # mask ignored
    labelled_outside += int(y[outside].any())
  assert labelled_empty >= 8 and labelled_outside >= 5


def test_restrict_to_brain():
  x = _slice()
  brain = np.zeros((96, 96), bool)
  brain[20:60, 30:70] = True
  cfg = dataclasses.replace(_CFG, restrict_to_brain=True)
  rng = np.random.default_rng(0)
  nonempty = 0
  for _ in range(40):
    xa, y = draem.synth_anomaly(x, rng, cfg, brain_mask=brain)
    assert not y[~brain].any()
    np.testing.assert_array_equal(xa[~brain], x[~brain])
    nonempty += int(y.any())
  assert nonempty >= 36  # retries make an empty label rare
  xa, y = draem.synth_anomaly(x, rng, cfg, brain_mask=np.zeros((96, 96), bool))
  assert not y.any() and np.array_equal(xa, x)
  with pytest.raises(ValueError):
    draem.synth_anomaly(x, rng, cfg)


def test_other_slice_sizes():
  x = _slice((64, 80))
  xa, y = draem.synth_anomaly(x, np.random.default_rng(0))
  assert xa.shape == y.shape == (64, 80)


# ---- texture augmenters: known answers ----

def test_invert_posterize_solarize():
  img = np.array([[0, 1, 100], [183, 200, 255]], np.uint8)
  np.testing.assert_array_equal(draem.aug_invert(img), [[255, 254, 155], [72, 55, 0]])
  np.testing.assert_array_equal(draem.aug_posterize(img, 3), [[0, 0, 96], [160, 192, 224]])
  np.testing.assert_array_equal(draem.aug_posterize(img, 8), img)
  np.testing.assert_array_equal(draem.aug_posterize(img, 1), [[0, 0, 0], [128, 128, 128]])
  np.testing.assert_array_equal(draem.aug_solarize(img, 100), [[0, 1, 155], [72, 55, 0]])


def test_equalize_two_levels():
  img = np.full((32, 32), 50, np.uint8)
  img[16:] = 200
  out = draem.aug_equalize(img)
  np.testing.assert_array_equal(out[:16], 0)
  np.testing.assert_array_equal(out[16:], 255)
  tiny = np.array([[50, 200]], np.uint8)  # fewer than 255 pixels below the top: PIL's identity
  np.testing.assert_array_equal(draem.aug_equalize(tiny), tiny)


def test_autocontrast_stretch():
  img = np.array([[50, 100], [150, 200]], np.uint8)
  np.testing.assert_array_equal(draem.aug_autocontrast(img, 0), [[0, 85], [170, 255]])
  flat = np.full((3, 3), 7, np.uint8)
  np.testing.assert_array_equal(draem.aug_autocontrast(flat, 10), flat)
  ramp = np.arange(100, dtype=np.uint8).reshape(10, 10)  # 10 % cut at each end -> [10, 89]
  out = draem.aug_autocontrast(ramp, 10)
  assert out[1, 0] == 0 and out[8, 9] == 255 and out[0, 0] == 0 and out[9, 9] == 255


def test_gamma_and_brightness():
  img = np.array([0, 128, 255], np.uint8)
  np.testing.assert_array_equal(draem.aug_gamma(img, 2.0), [0, 64, 255])  # 64.25 truncated
  np.testing.assert_array_equal(draem.aug_gamma(img, 1.0), img)
  v = np.array([100, 250, 5], np.uint8)
  np.testing.assert_array_equal(draem.aug_brightness(v, 1.1, 10, True), [120, 255, 16])
  np.testing.assert_array_equal(draem.aug_brightness(v, 1.1, 10, False), [121, 255, 16])
  np.testing.assert_array_equal(draem.aug_brightness(v, 0.8, -30, True), [50, 170, 0])


def test_hue_saturation_matches_hsv_to_rgb():
  img = np.array([0, 60, 128, 255], np.uint8)
  np.testing.assert_array_equal(draem.aug_hue_saturation(img, 50, -20), img)  # S stays 0
  np.testing.assert_array_equal(draem.aug_hue_saturation(img, 10, 50), img)  # red sector
  for hue, sat in [(-50, 50), (50, 37), (-45, 12), (48, 50)]:
    # imgaug projects the hue in float32 and truncates toward zero: (hue / 255 · 180).astype(int)
    hue_deg = 2.0 * (int(np.float32(hue) / np.float32(255.0) * np.float32(180.0)) % 180)
    want = [round(255 * colorsys.hsv_to_rgb(hue_deg / 360, sat / 255, v / 255)[0]) for v in img]
    np.testing.assert_allclose(draem.aug_hue_saturation(img, hue, sat), want, atol=1)
  assert draem.aug_hue_saturation(img, -50, 50)[3] < 255
  # hue 45 -> H + 31 (31.76 truncated, not rounded to 32): 62 deg, R = 200 (1 - 50/255 · 2/60)
  np.testing.assert_array_equal(draem.aug_hue_saturation(np.full(3, 200, np.uint8), 45, 50), 199)
  np.testing.assert_array_equal(draem.aug_hue_saturation(np.full(3, 200, np.uint8), 43, 50), 200)


def test_pil_like_augmenters_match_pillow():
  rng = np.random.default_rng(0)
  for trial in range(12):
    noise = draem.anomaly_noise((96, 96), rng, _CFG)
    img = draem.noise_to_uint8(noise, wrap=bool(trial % 2))
    pil = Image.fromarray(img)
    factor = float(rng.uniform(0, 2))
    np.testing.assert_array_equal(draem.aug_sharpness(img, factor),
                                  np.asarray(ImageEnhance.Sharpness(pil).enhance(factor)))
    cutoff = int(rng.integers(0, 21))
    np.testing.assert_array_equal(draem.aug_autocontrast(img, cutoff),
                                  np.asarray(ImageOps.autocontrast(pil, cutoff=cutoff)))
    np.testing.assert_array_equal(draem.aug_equalize(img), np.asarray(ImageOps.equalize(pil)))


def test_sharpness_and_rotate_simple_cases():
  img = np.random.default_rng(0).integers(0, 256, (9, 9)).astype(np.uint8)
  np.testing.assert_array_equal(draem.aug_sharpness(img, 1.0), img)
  const = np.full((9, 9), 90, np.uint8)
  np.testing.assert_array_equal(draem.aug_sharpness(const, 0.0), const)
  np.testing.assert_array_equal(draem.aug_rotate(img, 0.0), img)
  rot = draem.aug_rotate(np.full((21, 21), 200, np.uint8), 45.0)
  assert rot[10, 10] == 200 and rot[0, 0] == 0  # corners fill with 0


def test_every_augmenter_keeps_shape_and_dtype():
  img = draem.noise_to_uint8(draem.anomaly_noise((96, 96), np.random.default_rng(1), _CFG), False)
  for i, name in enumerate(draem.AUGMENTER_NAMES):
    out = draem.augment_texture(img, np.random.default_rng(0), choice=(i,))
    assert out.shape == img.shape and out.dtype == np.uint8, name
  rng = np.random.default_rng(0)
  counts = np.zeros(len(draem.AUGMENTERS))
  for _ in range(300):
    choice = rng.choice(len(draem.AUGMENTERS), size=3, replace=False)
    counts[choice] += 1
  assert counts.min() > 50  # uniform choice, 90 expected per augmenter


def test_timing_report():
  x = _slice()
  rng = np.random.default_rng(0)
  reps = 200
  t0 = time.perf_counter()
  for _ in range(reps):
    draem.synth_anomaly(x, rng)
  ms = (time.perf_counter() - t0) / reps * 1e3
  print(f"synth_anomaly 96x96: {ms:.2f} ms per slice")
  assert ms < 200
