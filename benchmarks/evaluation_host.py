"""Benchmark: the host's per-volume work of an evaluation test pass (filter, metrics, record, report files), one volume after the other and in threads.

    python -m benchmarks.evaluation_host [--grid 50,96,96] [--volumes 8] [--threads 2] [--repeats 3]

What `Evaluation._finish` does for each volume of a computed batch, from stand-in maps (an
ellipsoid brain with a lesion, uniform noise): `scoring.filter_small`, `records.base` (the
reconstruction errors) and `records.test_record` (every metric at τ and at two FPR thresholds),
`report.write_volume_outputs` (anomaly, prediction and reconstruction NIfTIs) and `Store.write`;
and the DRAEM test set's loading (`draem.synth_volume`), here, in threads and in worker
processes. Behind accelerators this is what a batch waits for (`execute.host_threads`: one
thread per volume there, the DRAEM anomalies in as many processes). Alternating, after one untimed round; medians. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from concurrent import futures

import numpy as np

from benchmarks import ab, machine


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--grid", default="50,96,96", help="D,H,W of a volume (slice-major)")
  ap.add_argument("--volumes", type=int, default=8, help="volumes per batch (devices)")
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default=os.path.join("benchmarks", "results",
                                                "evaluation_host_cpu.json"))
  return ap.parse_args(argv)


def stand_in_volumes(grid, n: int, seed: int = 0) -> list[dict]:
  """n volumes [D, H, W]: an ellipsoid brain, a lesion in it, a map that finds it among noise."""
  d, h, w = grid
  z, y, x = np.mgrid[:d, :h, :w]
  mask = ((z - d / 2) / (0.45 * d)) ** 2 + ((y - h / 2) / (0.42 * h)) ** 2 + \
      ((x - w / 2) / (0.38 * w)) ** 2 < 1
  rng = np.random.default_rng(seed)
  out = []
  for k in range(n):
    gt = (((z - 0.4 * d) / (0.12 * d)) ** 2 + ((y - 0.42 * h) / (0.1 * h)) ** 2 +
          ((x - 0.5 * w + k) / (0.08 * w)) ** 2 < 1) & mask
    image = rng.uniform(0, 1, grid).astype(np.float32) * mask
    out.append({"name": f"vol{k}", "image": image, "recon": image * 0.9, "mask": mask, "gt": gt,
                "anomaly": (rng.uniform(0, 0.6, grid) * mask + 0.5 * gt).astype(np.float32)})
  return out


def finish_volume(v: dict, out_dir: str, store) -> dict:
  """One volume's host work, as `Evaluation._finish_volume` does it for a test pass."""
  from sadm_jax.evaluate import records, report, scoring
  a = scoring.filter_small(v["anomaly"], 5)
  rec = records.base(v["name"], v["image"], v["recon"], v["mask"], v["gt"])
  rec = records.test_record(rec, a, v["gt"], v["mask"], (2.0, 2.0, 2.0), False, 0.7,
                            {"fpr_1": 0.9, "fpr_5": 0.8})
  report.write_volume_outputs(out_dir, v["name"], np.eye(4), v["image"], a, a > 0.7, v["mask"],
                              recon=v["recon"], gt=v["gt"], nifti=True, png=False)
  store.write(_Run(), "Set", "test", {**rec, "fingerprint": "benchmark"})
  return rec


class _Run:
  """The store's view of a run (its folder)."""
  method, train_anomalies, fold = "benchmark", "none", "fold0"


def _synth(args: tuple):
  from sadm_jax.anomaly import draem
  return draem.synth_volume(*args)


def main(argv=None) -> dict:
  args = parse_args(argv)
  from sadm_jax.anomaly import draem
  from sadm_jax.evaluate.store import Store
  from sadm_jax.utils import workers
  from sadm_jax.utils.io import write_json
  grid = tuple(int(g) for g in args.grid.split(","))
  volumes = stand_in_volumes(grid, args.volumes)
  root = tempfile.mkdtemp(prefix="evaluation_host_")
  store = Store(root)
  out_dir = os.path.join(root, "report")
  one = lambda v: finish_volume(v, out_dir, store)  # noqa: E731
  # The DRAEM test set's loading: its anomalies drawn per slice (`draem.synth_volume`), as
  # `Evaluation.case` does, here, in threads and in worker processes.
  cfg = draem.DraemConfig(restrict_to_brain=True)
  synth = [(v["image"], v["mask"], (0, k), cfg) for k, v in enumerate(volumes)]

  def in_threads(fn, items) -> list:
    with futures.ThreadPoolExecutor(args.threads) as t:
      return list(t.map(fn, items))
  with workers.process_pool(args.threads) as pool:
    list(pool.map(_synth, synth))  # the workers started
    ways = {"one after the other": lambda: [one(v) for v in volumes],
            f"{args.threads} threads": lambda: in_threads(one, volumes),
            "DRAEM loading, one after the other": lambda: [_synth(x) for x in synth],
            f"DRAEM loading, {args.threads} threads": lambda: in_threads(_synth, synth),
            f"DRAEM loading, {args.threads} processes": lambda: list(pool.map(_synth, synth))}
    for way in ways.values():  # untimed: imports, first writes
      way()
    times = ab.time_rotated(ways, args.repeats)
  shutil.rmtree(root, ignore_errors=True)
  table = {k: {"median_s": statistics.median(v),
               "ms_per_volume": 1000 * statistics.median(v) / len(volumes)}
           for k, v in times.items()}
  print(f"{'how':36s} {'median s':>9s} {'ms/volume':>10s}   ({len(volumes)} volumes of {grid})")
  for k, t in table.items():
    print(f"{k:36s} {t['median_s']:9.3f} {t['ms_per_volume']:10.1f}")
  entry = {"grid": list(grid), "volumes": len(volumes), "threads": args.threads, "table": table,
           "runs": times, **machine.cpu_entry()}
  write_json(args.out, entry)
  print("wrote", args.out)
  return entry


if __name__ == "__main__":
  main()
