"""Benchmark: the predict stage on N scans with D CPU devices per process (and a baseline checkout).

    python -m benchmarks.predict_devices --checkpoint_dir=runs/demo/evaluate \
        --scan=runs/demo/demo_data/.../x.nii.gz [--mask=...] [--copies=4] [--devices=1,2] \
        [--repeats=3] [--baseline_repo=/tmp/old] [--out=JSON]

Copies the scan `--copies` times under different names (equal images, different noise indices)
and runs `python -m sadm_jax.main --config=configs/predict.py` on that folder as a user would,
each run a fresh process and output folder, with `XLA_FLAGS=--xla_force_host_platform_device_count=D`.
One untimed warm-up run per (code, D) fills a compilation cache shared by the runs (a user's
second predict reads it too); the timed repeats are interleaved over the codes and device
counts so that a drift of the VM's speed hits them alike. Wall seconds are the whole command's
(start-up, model loading, preprocessing, inference, writing). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--checkpoint_dir", required=True, help="evaluation, SADM or cDDPM workdir")
  ap.add_argument("--scan", required=True, help="a NIfTI scan to copy")
  ap.add_argument("--mask", default="", help="its brain mask (default: image > 0)")
  ap.add_argument("--copies", type=int, default=4)
  ap.add_argument("--devices", default="1,2", help="comma-separated CPU device counts")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--baseline_repo", default="", help="a checkout to time the same way")
  ap.add_argument("--out", default=os.path.join("benchmarks", "results",
                                                "predict_devices_cpu.json"))
  return ap.parse_args(argv)


def _scans(args, root: str) -> str:
  folder = os.path.join(root, "scans")
  os.makedirs(folder)
  for k in range(args.copies):
    shutil.copy(args.scan, os.path.join(folder, f"scan-{k:03d}_T1w.nii.gz"))
    if args.mask:
      shutil.copy(args.mask, os.path.join(folder, f"scan-{k:03d}_mask.nii.gz"))
  return folder


def _run(repo: str, args, scans: str, root: str, devices: int) -> float:
  """Wall seconds of one predict command (a fresh process and output folder)."""
  work = tempfile.mkdtemp(prefix="predict_", dir=root)
  env = {**os.environ, "PYTHONPATH": repo, "JAX_PLATFORMS": "cpu",
         "SADM_COMPILATION_CACHE": os.path.join(root, "jax_cache"),
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  cmd = [sys.executable, "-m", "sadm_jax.main", "--config=configs/predict.py", f"--workdir={work}",
         f"--config.predict.checkpoint_dir={os.path.abspath(args.checkpoint_dir)}",
         f"--config.predict.input={scans}"]
  t0 = time.perf_counter()
  out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  shutil.rmtree(work, ignore_errors=True)
  if out.returncode != 0:
    raise RuntimeError(f"predict in {repo} failed:\n{(out.stdout + out.stderr)[-3000:]}")
  return wall


def main(argv=None) -> dict:
  args = parse_args(argv)
  root = tempfile.mkdtemp(prefix="bench_predict_")
  try:
    scans = _scans(args, root)
    codes = [("current", REPO)] + ([("baseline", os.path.abspath(args.baseline_repo))]
                                    if args.baseline_repo else [])
    counts = [int(n) for n in args.devices.split(",") if n.strip()]
    cases = [(label, repo, n) for label, repo in codes for n in counts]
    for label, repo, n in cases:  # warm-up: the compilation cache
      _run(repo, args, scans, root, n)
    walls: dict[str, list[float]] = {}
    for rep in range(max(1, args.repeats)):
      for label, repo, n in cases:
        wall = _run(repo, args, scans, root, n)
        walls.setdefault(f"{label}, {n} device(s)", []).append(round(wall, 2))
        print(f"repeat {rep} {label:8s} devices {n}: {wall:.1f} s, load "
              f"{os.getloadavg()[0]:.1f}", flush=True)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  table = {k: {"median_s": statistics.median(v), "scans": args.copies,
               "scans_per_minute": 60 * args.copies / statistics.median(v)}
           for k, v in walls.items()}
  print(f"{'code, devices':28s} {'median s':>9s} {'scans':>6s} {'scans/min':>10s}")
  for k, t in table.items():
    print(f"{k:28s} {t['median_s']:9.1f} {t['scans']:6d} {t['scans_per_minute']:10.2f}")
  entry = {"command": " ".join(sys.argv), "checkpoint_dir": os.path.abspath(args.checkpoint_dir),
           "scan": os.path.abspath(args.scan), "copies": args.copies, "table": table,
           "runs": walls, "host": machine.host_info(), "cpu_model": machine.cpu_model()}
  from sadm_jax.utils.io import write_json
  write_json(args.out, entry)
  print("wrote", args.out)
  return entry


if __name__ == "__main__":
  main()
