"""Benchmark: milliseconds of the label check of input validation (`nifti.check_labels`) vs the previous formulation (`np.unique` of every voxel).

    python -m benchmarks.label_check [--shape 160 200 164] [--repeats 9] [--out JSON]

A float32 brain mask of `--shape` (default: the demo cohort's 1 mm grid; a ball of ones in zeros,
as `load_volume` reads a mask) is checked `--repeats` times by each variant, alternating; both
must report the same problems, for the valid mask and for a copy with a stray label 3. Prints a
table and writes JSON (machine info included).
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.machine import host_info


def sorted_check(vol, allowed: set[int], role: str) -> list[tuple[str, str]]:
  """The check as it was before: every voxel sorted (`np.unique`), then filtered."""
  import numpy as np
  values = np.unique(vol.data)
  if not np.all(np.isfinite(values)):
    return [(vol.path, f"{role} contains NaN/Inf voxels")]
  bad = [v for v in values if float(v) not in allowed]
  if bad:
    shown = ", ".join(f"{float(v):g}" for v in bad[:8])
    return [(vol.path, f"{role} has unexpected label value(s) {shown}; allowed {sorted(allowed)}")]
  return []


def ball_mask(shape: tuple[int, int, int]):
  """float32 [X, Y, Z]: ones inside the ellipsoid inscribed in the grid, zeros outside."""
  import numpy as np
  axes = np.ogrid[tuple(slice(0, n) for n in shape)]
  r2 = sum(((a - (n - 1) / 2) / (n / 2)) ** 2 for a, n in zip(axes, shape))
  return (r2 <= 1.0).astype(np.float32)


def measure(shape: tuple[int, int, int], repeats: int) -> dict:
  """Median seconds of each variant on a valid mask; whether both agree (also on an invalid one)."""
  import numpy as np
  from sadm_jax.data import nifti
  valid = nifti.Volume(ball_mask(shape), np.eye(4), "valid")
  stray = nifti.Volume(valid.data.copy(), np.eye(4), "stray")
  stray.data[tuple(n // 2 for n in shape)] = 3.0
  variants = {"package": nifti.check_labels, "sorted": sorted_check}
  seconds = {k: [] for k in variants}
  for i in range(repeats):
    for name in (("package", "sorted") if i % 2 == 0 else ("sorted", "package")):
      t0 = time.perf_counter()
      variants[name](valid, nifti.MASK_LABELS, "brain mask")
      seconds[name].append(time.perf_counter() - t0)
  agree = all(variants["package"](v, nifti.MASK_LABELS, "brain mask") ==
              variants["sorted"](v, nifti.MASK_LABELS, "brain mask") for v in (valid, stray))
  return {"shape": list(shape), "repeats": repeats, "agree": agree,
          **{f"{k}_s_median": statistics.median(v) for k, v in seconds.items()}}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--shape", type=int, nargs=3, default=(160, 200, 164))
  ap.add_argument("--repeats", type=int, default=9)
  ap.add_argument("--out", default="benchmarks/results/label_check_cpu.json")
  args = ap.parse_args()
  r = measure(tuple(args.shape), args.repeats)
  print(f"float32 mask {'×'.join(map(str, r['shape']))}, median of {r['repeats']}")
  print(f"{'variant':>34}{'ms':>8}")
  for name, label in (("package", "membership (nifti.check_labels)"),
                      ("sorted", "np.unique of every voxel (before)")):
    print(f"{label:>34}{1000 * r[f'{name}_s_median']:>8.1f}")
  print(f"same problems reported: {r['agree']}")
  from sadm_jax.utils import io
  io.write_json(args.out, {"benchmark": "label_check",
                           "machine": host_info(), **r})
  print(f"wrote {args.out}")
  return 0 if r["agree"] else 1


if __name__ == "__main__":
  raise SystemExit(main())
