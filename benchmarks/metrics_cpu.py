"""CPU timings for one 96×96×50 volume: anomaly map (SSIM + median) and all per-volume metrics."""

from __future__ import annotations

# Usage (repository root): python -m benchmarks.metrics_cpu [--out PATH] [--repeats N]

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np
from scipy import ndimage

from sadm_jax.evaluate import anomaly_map as am
from sadm_jax.evaluate import metrics as mt
from sadm_jax.evaluate import thresholds as th
from sadm_jax.utils.io import write_json

SHAPE = (96, 96, 50)


def synthetic_case(seed: int = 0) -> dict[str, np.ndarray]:
  """A brain-like ellipsoid with smooth texture, a ~4 cm lesion the reconstruction "heals", and an S map.

  Returns x, recon [H, W, D] in [0, 1], brain mask, lesion gt and seg_prob [H, W, D].
  """
  rng = np.random.default_rng(seed)
  grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")).astype(np.float64)
  centre, radii = np.array([48, 48, 25]), np.array([38, 44, 23])
  brain = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) < 1
  texture = ndimage.gaussian_filter(rng.random(SHAPE), 1.5)
  texture = (texture - texture.min()) / np.ptp(texture)
  healthy = np.where(brain, 0.35 + 0.5 * texture, 0.0)
  lesion_c = np.array([60, 40, 30])
  stretch = np.array([1, 1.3, 1.7])[:, None, None, None]
  dist = np.sqrt(((grid - lesion_c[:, None, None, None]) ** 2 * stretch).sum(0))
  gt = (dist < 10 + 2 * ndimage.gaussian_filter(rng.standard_normal(SHAPE), 2)) & brain
  x = np.clip(healthy + 0.3 * gt * ndimage.gaussian_filter(rng.random(SHAPE), 1), 0, 1)
  recon = np.clip(healthy + 0.02 * ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1), 0, 1) * brain
  seg_prob = np.clip(ndimage.gaussian_filter(gt.astype(float), 2) + 0.05 * rng.random(SHAPE), 0, 1)
  return {"x": x.astype(np.float32), "recon": recon.astype(np.float32), "brain": brain, "gt": gt,
          "seg_prob": seg_prob.astype(np.float32)}


def time_ms(fn, repeats: int) -> dict[str, float]:
  """Median and min wall time in ms of `repeats` calls after one warm-up call."""
  fn()
  runs = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    runs.append(1e3 * (time.perf_counter() - t0))
  return {"median_ms": statistics.median(runs), "min_ms": min(runs), "runs": repeats}


def _jsonable(value):
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  value = float(value)
  return None if np.isnan(value) else value


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--out", default="benchmarks/results/metrics_cpu.json")
  parser.add_argument("--repeats", type=int, default=9)
  parser.add_argument("--skip-jax-median", action="store_true",
                      help="skip the JAX median on CPU (~10-20 s per call)")
  args = parser.parse_args()

  case = synthetic_case()
  x, recon, brain, gt, seg = case["x"], case["recon"], case["brain"], case["gt"], case["seg_prob"]
  a = am.anomaly_map(recon, x, brain, seg)
  _, tau = th.exact_best_threshold(a[brain], gt[brain])
  tau *= 1.1  # a validation threshold is never the per-volume optimum
  residual = np.asarray(am.residual_map(recon, x)) * brain

  def ssim():
    am.ssim_3d_map(recon, x).block_until_ready()

  r = args.repeats
  results = {
      "volume_metrics": time_ms(lambda: mt.volume_metrics(a, gt, brain, tau), r),
      "volume_metrics_faithful": time_ms(lambda: mt.volume_metrics(a, gt, brain, tau, faithful=True), r),
      # worst case for HD95: τ = 0 predicts the whole brain (surface distances over the full box)
      "volume_metrics_whole_brain_pred": time_ms(lambda: mt.volume_metrics(a, gt, brain, 0.0), r),
      "anomaly_map_sum": time_ms(lambda: am.anomaly_map(recon, x, brain, seg), r),
      "ssim_3d_map_jax": time_ms(ssim, r),
      "median_numpy_in_brain": time_ms(
          lambda: am.median_filter_3d(residual, 5, "numpy", where=brain), r),
      "median_numpy_full": time_ms(lambda: am.median_filter_3d(residual, 5, "numpy"), max(3, r // 3)),
      "median_scipy_full": time_ms(lambda: am.median_filter_3d(residual, 5, "scipy"), max(3, r // 3)),
  }
  if not args.skip_jax_median:
    results["median_jax_full"] = time_ms(lambda: am.median_filter_3d(residual, 5, "jax"), 1)

  v = mt.volume_metrics(a, gt, brain, tau)
  report = {
      "shape": list(SHAPE), "jax_backend": jax.default_backend(), "cpu_count": os.cpu_count(),
      "machine": platform.processor() or platform.machine(), "numpy": np.__version__,
      "jax": jax.__version__, "lesion_voxels": int(gt.sum()), "brain_voxels": int(brain.sum()),
      "threshold": tau, "metrics_example": {k: _jsonable(val) for k, val in v.items()},
      "timings": results,
  }
  print(f"{'what':28s} {'median ms':>10s} {'min ms':>10s}  (backend {jax.default_backend()}, "
        f"{os.cpu_count()} cpus)")
  for name, t in results.items():
    print(f"{name:28s} {t['median_ms']:10.1f} {t['min_ms']:10.1f}")
  print(f"example: dice {v['dice']:.3f} best_dice {v['best_dice']:.3f} auprc {v['auprc']:.3f} "
        f"hd95 {v['hd95_mm']:.1f} mm")
  write_json(args.out, report)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
