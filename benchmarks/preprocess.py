"""Benchmark: seconds per volume of `preprocess_volume`, curvature flow on the crop box vs the whole volume.

    python -m benchmarks.preprocess [--data_dir D] [--crop 192 192 96] [--downsample 3] [--out JSON]

Without --data_dir it builds the tiny demo cohort (16 volumes, 1 mm) in a temporary directory.
Each volume is preprocessed twice, one process, alternating the order per volume: as the package
does it (the flow on the crop box grown by iterations + 1 voxels) and with the flow on the whole
volume first (how it was done before), and the two working-grid images are checked to be equal
bit for bit. Prints a table and writes JSON (machine info included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from benchmarks.machine import host_info


def rows_of(data_dir: str | None, tmp: str) -> list:
  """Every split row (healthy and pathological volumes) of `data_dir` (default: a tiny demo cohort)."""
  from configs import prepare as prepare_config
  from sadm_jax import config as config_lib
  from sadm_jax.data import synthetic
  if not data_dir:
    data_dir = os.path.join(tmp, "demo")
    synthetic.generate_cohort(data_dir, synthetic.CohortConfig.tiny())
  c = prepare_config.get_config()
  c.data.data_dir = data_dir
  c = config_lib.resolve(c)
  _, splits, _, _ = config_lib.load_valid_splits(c)
  seen, rows = set(), []
  for split_rows in splits.values():
    for r in split_rows:
      if r.img not in seen:
        seen.add(r.img)
        rows.append(r)
  return rows


def whole_volume_flow(image, mask, seg, affine, cfg):
  """`preprocess_volume` with the curvature flow run on the whole volume first (the old order)."""
  import dataclasses
  from sadm_jax.data import curvature, preprocess as pp
  flowed = curvature.curvature_flow(image, cfg.cf_time_step, cfg.cf_iterations)
  return pp.preprocess_volume(flowed, mask, seg, affine, dataclasses.replace(cfg,
                                                                             curvature_flow=False))


def measure(rows, cfg) -> dict:
  """Per-volume seconds of both variants and whether their images are identical."""
  import numpy as np
  from sadm_jax.data import nifti, preprocess as pp
  crop_s, whole_s, identical = [], [], True
  for i, row in enumerate(rows):
    img, mask = nifti.load_volume(row.img), nifti.load_volume(row.mask)
    seg = nifti.load_volume(row.seg).data if row.seg else None
    args = (img.data, mask.data, seg, img.affine, cfg)
    out = {}
    for name in (("crop", "whole") if i % 2 == 0 else ("whole", "crop")):
      fn = pp.preprocess_volume if name == "crop" else whole_volume_flow
      t0 = time.perf_counter()
      out[name] = fn(*args)
      (crop_s if name == "crop" else whole_s).append(time.perf_counter() - t0)
    identical &= bool(np.array_equal(out["crop"].image, out["whole"].image))
  return {"volumes": len(rows), "shape_1mm": list(img.data.shape),
          "crop_box_s_median": statistics.median(crop_s), "crop_box_s_total": sum(crop_s),
          "whole_volume_s_median": statistics.median(whole_s),
          "whole_volume_s_total": sum(whole_s), "identical": identical}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data_dir", default="")
  ap.add_argument("--crop", type=int, nargs=3, default=[192, 192, 96])
  ap.add_argument("--downsample", type=int, default=3)
  ap.add_argument("--out", default="benchmarks/results/preprocess_cpu.json")
  args = ap.parse_args()
  from sadm_jax.data import preprocess as pp
  cfg = pp.PreprocessConfig(crop_size=tuple(args.crop), downsample=args.downsample)
  with tempfile.TemporaryDirectory() as tmp:
    r = measure(rows_of(args.data_dir, tmp), cfg)
  print(f"{r['volumes']} volumes ({'×'.join(map(str, r['shape_1mm']))} at 1 mm), crop "
        f"{'×'.join(map(str, args.crop))}, downsample {args.downsample}")
  print(f"{'flow on':>14}{'s/volume (median)':>19}{'total s':>9}")
  print(f"{'crop box':>14}{r['crop_box_s_median']:>19.3f}{r['crop_box_s_total']:>9.1f}")
  print(f"{'whole volume':>14}{r['whole_volume_s_median']:>19.3f}{r['whole_volume_s_total']:>9.1f}")
  print(f"images identical: {r['identical']}")
  result = {"benchmark": "preprocess", "crop": args.crop, "downsample": args.downsample,
            "machine": host_info(),
            **r}
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.out}")
  return 0 if r["identical"] else 1


if __name__ == "__main__":
  raise SystemExit(main())
