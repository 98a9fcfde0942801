"""Benchmark: training-slice throughput of the grain pipeline (slices/s) with 0/1/2 worker processes.

    python -m benchmarks.data_pipeline [--data_dir D] [--workers 0 1 2] [--out JSON]

Without --data_dir it builds the tiny demo cohort in a temporary directory and prepares it at
the paper's working grid (96×96×50). Prints a table and writes JSON (machine info included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time


def prepare_table(data_dir: str | None, tmp: str):
  """A SliceTable over the cached IXI training fold of `data_dir` (default: a tiny demo cohort in `tmp`)."""
  from configs import prepare as prepare_config
  from sadm_jax import config as config_lib
  from sadm_jax.data import cache as cache_lib, pipeline, synthetic
  c = prepare_config.get_config()
  if not data_dir:
    data_dir = os.path.join(tmp, "demo")
    synthetic.generate_cohort(data_dir, synthetic.CohortConfig.tiny())
  c.data.data_dir = data_dir
  c = config_lib.resolve(c)
  _, splits, _, _ = config_lib.load_valid_splits(c, ["IXI_train_fold0"])
  cfg = config_lib.preprocess_config(c)
  cache_dir = config_lib.cache_dir(c)
  cache_lib.ensure_cached(splits["IXI_train_fold0"], cache_dir, cfg, num_workers=2)
  return pipeline.SliceTable.from_rows(cache_lib.VolumeCache(cache_dir, cfg),
                                       splits["IXI_train_fold0"])


def measure(table, workers: int, augment: bool, batch: int, batches: int,
            draem: bool = False) -> dict:
  """Slices/s of the training loader: IXI slices, or (draem=True) SADM's DRAEM anomalous slices."""
  from sadm_jax.data import augment as augment_lib, pipeline
  aug = augment_lib.IntensityAugConfig() if augment else None
  if draem:
    from sadm_jax.anomaly import pipeline as anomaly_pipeline
    loader = anomaly_pipeline.draem_train_loader(table, anomaly_pipeline.DraemConfig(),
                                                 batch_size=batch, seed=0, augment=aug,
                                                 worker_count=workers)
  else:
    loader = pipeline.train_loader(table, batch_size=batch, seed=0, augment=aug,
                                   worker_count=workers)
  it = iter(loader)
  next(it)  # start-up (worker spawn) excluded
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  dt = time.perf_counter() - start
  return {"workers": workers, "augment": augment, "draem": draem, "batch": batch,
          "batches": batches, "seconds": round(dt, 4),
          "slices_per_s": round(batch * batches / dt, 1)}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data_dir", default="")
  ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--batches", type=int, default=30)
  ap.add_argument("--out", default="benchmarks/results/data_pipeline_cpu.json")
  args = ap.parse_args()
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  with tempfile.TemporaryDirectory() as tmp:
    table = prepare_table(args.data_dir, tmp)
    rows = [measure(table, w, aug, args.batch, args.batches)
            for aug in (False, True) for w in args.workers]
  print(f"{'workers':>8}{'augment':>9}{'slices/s':>10}")
  for r in rows:
    print(f"{r['workers']:>8}{str(r['augment']):>9}{r['slices_per_s']:>10}")
  result = {"benchmark": "data_pipeline", "machine": {"cpus": os.cpu_count(),
                                                     "platform": platform.platform(),
                                                     "python": platform.python_version()},
            "volumes": len(table), "grid": list(table.slice_brain_voxels.shape), "rows": rows}
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
