"""Benchmark: predict's per-scan preparation (read, reorient, preprocess) and output writing, one scan at a time, in threads, and in worker processes.

    python -m benchmarks.predict_prepare --checkpoint_dir=runs/demo \
        --scans=a.nii.gz,b.nii.gz,... [--masks=a_mask.nii.gz,...] [--threads=2] [--repeats=3]

`predict.prepare` on every scan in this process: one after the other; through predict's own
pipeline (`prefetch.prefetch` with `--threads` threads, `data.num_workers`) with one scan per batch,
as on one device; with all scans in one batch, as on as many devices; and as the stage runs it,
the reading and preprocessing in `--threads` worker processes (`predict.preparer`; the pool
started and warmed by one call first, its start-up timed apart). Alternating, after one untimed
call; medians. No inference runs, so this is the preparation a host with fast devices (a GPU)
waits for. Then the writing of every scan's outputs (`preparer(...).finish`: the map carried
back to the scan's grid, thresholded at the predictor's τ, written) from a stand-in map, one
after the other and all at once in the worker processes. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from benchmarks import ab, machine


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--checkpoint_dir", required=True, help="evaluation, SADM or cDDPM workdir")
  ap.add_argument("--scans", required=True, help="comma-separated NIfTI scans")
  ap.add_argument("--masks", default="", help="comma-separated brain masks, one per scan")
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default=os.path.join("benchmarks", "results",
                                                "predict_prepare_cpu.json"))
  return ap.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  from configs import predict as predict_config
  from sadm_jax import config as config_lib
  from sadm_jax.evaluate import predict, predictor
  from sadm_jax.evaluate import prefetch as prefetch_lib
  from sadm_jax.utils.io import write_json
  scans = [s for s in args.scans.split(",") if s]
  masks = [m for m in args.masks.split(",") if m] or [None] * len(scans)
  if len(masks) != len(scans):
    raise SystemExit(f"error: --masks lists {len(masks)} masks for {len(scans)} scans")
  c = predict_config.get_config()
  c.predict.checkpoint_dir = args.checkpoint_dir
  pred = predictor.load_predictor(args.checkpoint_dir, config_lib.resolve(c))
  items = list(zip(scans, masks))
  prepare = lambda item: predict.prepare(pred, *item)  # noqa: E731
  prepare(items[0])  # warm-up: imports, first reads
  n = args.threads
  with predict.preparer(pred, n) as in_pool:
    t0 = time.perf_counter()
    in_pool(*items[0])  # the pool's start-up: n processes spawned, imports, a first scan
    pool_start_s = time.perf_counter() - t0
    ways = {"sequential": lambda: [prepare(item) for item in items],
            f"{n} threads, 1 scan per batch": lambda: list(
                prefetch_lib.prefetch([[item] for item in items], prepare, n)),
            f"{n} threads, 1 batch": lambda: list(prefetch_lib.prefetch([items], prepare, n)),
            f"{n} processes, 1 scan per batch": lambda: list(
                prefetch_lib.prefetch([[item] for item in items], lambda it: in_pool(*it), n))}
    # Writing the outputs (`outputs.finish` through predict's helper) of every scan from a
    # stand-in map, one after the other here, and all at once in the pool, as predict does with
    # a batch of as many scans (a GPU host's batch: one scan per device).
    with predict.preparer(pred, 1) as here:
      prepared = [here(*item) for item in items]
    maps = [np.random.default_rng(k).uniform(0, 1, p.work.image.shape).astype(np.float32)
            for k, p in enumerate(prepared)]
    out = tempfile.mkdtemp(prefix="predict_prepare_")

    def write(per_scan) -> None:
      for wait in [per_scan.finish(p, a, os.path.join(out, str(k)), "scan")
                   for k, (p, a) in enumerate(zip(prepared, maps))]:
        wait()
    ways.update({"writing outputs, sequential": lambda: write(here),
                 f"writing outputs, {n} processes": lambda: write(in_pool)})
    times = ab.time_rotated(ways, args.repeats)
    shutil.rmtree(out, ignore_errors=True)
  table = {k: {"median_s": statistics.median(v), "scans_per_s": len(items) / statistics.median(v)}
           for k, v in times.items()}
  print(f"{'how':30s} {'median s':>9s} {'scans/s':>8s}   ({len(items)} scans)")
  for k, t in table.items():
    print(f"{k:30s} {t['median_s']:9.2f} {t['scans_per_s']:8.2f}")
  print(f"(the process pool's start-up with its first scan: {pool_start_s:.2f} s)")
  entry = {"checkpoint_dir": os.path.abspath(args.checkpoint_dir), "scans": scans,
           "threads": args.threads, "table": table, "runs": times,
           "pool_start_with_first_scan_s": pool_start_s, **machine.cpu_entry()}
  write_json(args.out, entry)
  print("wrote", args.out)
  return entry


if __name__ == "__main__":
  main()
