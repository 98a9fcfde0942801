"""Benchmark: seconds to write a montage PNG as the package does (`io.write_png`, zlib level 1) vs at Pillow's default level 6.

    python -m benchmarks.png_write [--png FILE] [--repeats 9] [--out JSON]

The image is FILE (e.g. a demo workdir's demo_montage.png) or, by default, the overview montage of
the tiny demo cohort built in a temporary directory (`synthetic.write_montage`, the function
that writes demo_montage.png). Each variant writes it `--repeats` times, alternating; reports
the median seconds and the file sizes, and checks that both files decode to the same pixels.
Prints a table and writes JSON (machine info included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from benchmarks.machine import host_info


def load_image(png: str | None, tmp: str):
  """uint8 [H, W, 3] of `png`, or of the tiny demo cohort's overview montage."""
  import numpy as np
  from PIL import Image
  if not png:
    from sadm_jax.data import synthetic
    root = os.path.join(tmp, "cohort")
    synthetic.generate_cohort(root, synthetic.CohortConfig.tiny())
    png = synthetic.write_montage(root, os.path.join(tmp, "overview.png"))
  return np.asarray(Image.open(png).convert("RGB"))


def measure(image, tmp: str, repeats: int) -> dict:
  """Median write seconds and bytes of `io.write_png` (level 1) and Pillow's default (level 6)."""
  import numpy as np
  from PIL import Image
  from sadm_jax.utils import io
  paths = {"package": os.path.join(tmp, "package.png"), "default": os.path.join(tmp, "default.png")}
  write = {"package": lambda p: io.write_png(p, image),
           "default": lambda p: Image.fromarray(image).save(p, format="PNG")}
  seconds = {k: [] for k in paths}
  for i in range(repeats):
    for name in (("package", "default") if i % 2 == 0 else ("default", "package")):
      t0 = time.perf_counter()
      write[name](paths[name])
      seconds[name].append(time.perf_counter() - t0)
  same = all(np.array_equal(np.asarray(Image.open(p).convert("RGB")), image)
             for p in paths.values())
  return {"shape": list(image.shape), "repeats": repeats,
          **{f"{k}_s_median": statistics.median(v) for k, v in seconds.items()},
          **{f"{k}_bytes": os.path.getsize(p) for k, p in paths.items()}, "lossless": same}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--png", default="")
  ap.add_argument("--repeats", type=int, default=9)
  ap.add_argument("--out", default="benchmarks/results/png_write_cpu.json")
  args = ap.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    r = measure(load_image(args.png, tmp), tmp, args.repeats)
  print(f"{args.png or 'tiny demo cohort overview'}: {r['shape'][1]}×{r['shape'][0]} RGB, "
        f"median of {r['repeats']}")
  print(f"{'writer':>22}{'ms':>8}{'KiB':>8}")
  for name, label in (("package", "io.write_png (zlib 1)"), ("default", "Pillow default (6)")):
    print(f"{label:>22}{1000 * r[f'{name}_s_median']:>8.1f}{r[f'{name}_bytes'] / 1024:>8.0f}")
  print(f"both decode to the image: {r['lossless']}")
  result = {"benchmark": "png_write", "image": args.png or "tiny demo cohort overview",
            "machine": host_info(),
            **r}
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.out}")
  return 0 if r["lossless"] else 1


if __name__ == "__main__":
  raise SystemExit(main())
