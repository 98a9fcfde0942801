"""Timings of jitted diffusion-noise batches: independent vs shared simplex fields vs Gaussian."""

from __future__ import annotations

# Usage (repository root): python -m benchmarks.simplex_noise [--batch 32] [--size 96]
#   [--iterations 20] [--out benchmarks/results/simplex_noise_cpu.json]

import argparse
import platform
import statistics
import time

import jax
import numpy as np

from sadm_jax.diffusion.noise import sample_noise
from sadm_jax.utils.io import write_json

MODES = {
    "simplex_independent": {"kind": "simplex", "shared": False},
    "simplex_shared": {"kind": "simplex", "shared": True},
    "gaussian": {"kind": "gaussian", "shared": False},
}


def time_mode(shape: tuple[int, int, int, int], iterations: int, warmup: int,
              **kwargs) -> dict[str, float]:
  """Compile time, then median / mean / min ms per jitted batch over `iterations` fresh keys."""
  draw = jax.jit(lambda key: sample_noise(key, shape, **kwargs))
  t0 = time.perf_counter()
  jax.block_until_ready(draw(jax.random.key(0)))
  compile_s = time.perf_counter() - t0
  for i in range(warmup):
    jax.block_until_ready(draw(jax.random.key(1000 + i)))
  runs = []
  for i in range(iterations):
    key = jax.random.key(i + 1)
    t0 = time.perf_counter()
    jax.block_until_ready(draw(key))
    runs.append(1e3 * (time.perf_counter() - t0))
  sample = np.asarray(draw(jax.random.key(12345)))[..., 0]
  per_field_std = sample.std(axis=(1, 2))
  return {"compile_s": compile_s, "median_ms": statistics.median(runs),
          "mean_ms": statistics.fmean(runs), "min_ms": min(runs), "iterations": iterations,
          "sample_mean": float(sample.mean()), "sample_per_field_std": float(per_field_std.mean()),
          "sample_pooled_std": float(sample.std()), "sample_min": float(sample.min()),
          "sample_max": float(sample.max())}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=96)
  parser.add_argument("--iterations", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--out", default="benchmarks/results/simplex_noise_cpu.json")
  args = parser.parse_args()

  shape = (args.batch, args.size, args.size, 1)
  results = {name: time_mode(shape, args.iterations, args.warmup, **kw)
             for name, kw in MODES.items()}
  print(f"{args.batch}×{args.size}×{args.size} noise batch, jitted, {jax.devices()[0].platform}")
  print(f"{'mode':<22}{'median ms':>11}{'mean ms':>10}{'min ms':>9}{'compile s':>11}"
        f"{'std/field':>11}{'range':>17}")
  for name, r in results.items():
    print(f"{name:<22}{r['median_ms']:>11.2f}{r['mean_ms']:>10.2f}{r['min_ms']:>9.2f}"
          f"{r['compile_s']:>11.2f}{r['sample_per_field_std']:>11.3f}"
          f"   [{r['sample_min']:+.2f}, {r['sample_max']:+.2f}]")
  write_json(args.out, {
      "shape": list(shape), "warmup": args.warmup, "results": results,
      "jax": jax.__version__, "backend": jax.default_backend(),
      "device": str(jax.devices()[0]), "machine": platform.machine(),
      "python": platform.python_version(), "num_devices": len(jax.devices()),
  })
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
