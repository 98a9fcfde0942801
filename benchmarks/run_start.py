"""Benchmark: costs around a run's start and end on CPU — refusing a bad value, the training loader's read-ahead, reopening a trained run.

    python -m benchmarks.run_start [--repeats 3] [--out JSON]

On the tiny demo cohort (built in a temporary directory), through the CLI as a user runs it:
1. a bad value (`--config.train.num_steps=-5`) refused: wall seconds of the process (exit 2);
2. a tiny cDDPM run of 2 steps, warm compilation cache, with the package's read-ahead
   (`data.prefetch_batches` = 2 batches) and with grain's default read-ahead of 500 records
   (63 batches of 8): CPU seconds of the process (user + system) and whether the losses agree;
3. `open_run` of that run (model only, as the package does) vs restoring its whole saved state
   (`Checkpointer.restore_saved` with the optimiser state and step too), in this process.
Medians of `--repeats`, variants alternating. Prints a table and writes JSON (machine info
included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.machine import host_info

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(args: list[str], cache: str) -> tuple[int, float, float, str]:
  """(exit code, wall s, CPU s of the child, stderr) of `python -m sadm_jax.main ARGS`."""
  env = {**os.environ, "SADM_COMPILATION_CACHE": cache}
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.perf_counter()
  res = subprocess.run([sys.executable, "-m", "sadm_jax.main", *args], cwd=REPO, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  wall = time.perf_counter() - t0
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return res.returncode, wall, cpu, res.stderr


def _losses(workdir: str) -> list:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]


def measure(tmp: str, repeats: int) -> dict:
  from sadm_jax.data import synthetic
  data = os.path.join(tmp, "data")
  synthetic.generate_cohort(data, synthetic.CohortConfig.tiny())
  cache = os.path.join(tmp, "xla_cache")
  base = ["--config=configs/cddpm.py:tiny", f"--config.data.data_dir={data}",
          f"--config.data.cache_dir={data}/cache", "--config.train.num_steps=2",
          "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
          "--config.train.tensorboard=False"]
  out: dict = {}
  refusals = [_cli(base + [f"--workdir={tmp}/bad", "--config.train.num_steps=-5"], cache)
              for _ in range(repeats)]
  assert all(rc == 2 and "num_steps=-5" in err for rc, _, _, err in refusals), refusals
  out["refusal_wall_s"] = statistics.median(w for _, w, _, _ in refusals)
  variants = {"package": 2, "grain_default": 500 // 8 + 1}  # batches of 8 read ahead
  _cli(base + [f"--workdir={tmp}/warm"], cache)  # compiles; later runs read the cache
  cpu, losses = {k: [] for k in variants}, {}
  for i in range(repeats):
    for name in (list(variants) if i % 2 == 0 else list(variants)[::-1]):
      w = os.path.join(tmp, f"{name}_{i}")
      rc, _, c, _ = _cli(base + [f"--workdir={w}", f"--config.data.prefetch_batches={variants[name]}"],
                      cache)
      assert rc == 0, (name, rc)
      cpu[name].append(c)
      losses[name] = _losses(w)
  out.update({f"run_cpu_s_{k}": statistics.median(v) for k, v in cpu.items()})
  out["same_losses"] = losses["package"] == losses["grain_default"]
  from sadm_jax.train.checkpoint import Checkpointer
  from sadm_jax.train.runs import open_run
  run_dir = os.path.join(tmp, "package_0")
  opens = {"model_only": [], "whole_state": []}
  for i in range(repeats + 1):  # the first round warms up (imports, Orbax)
    for name in (list(opens) if i % 2 == 0 else list(opens)[::-1]):
      t0 = time.perf_counter()
      if name == "model_only":
        open_run(run_dir, expect="cddpm")
      else:
        with Checkpointer(run_dir, async_save=False) as ckpt:
          ckpt.restore_saved("best", keys=("params", "model_state", "opt_state", "step"))
      if i:
        opens[name].append(time.perf_counter() - t0)
  out.update({f"open_s_{k}": statistics.median(v) for k, v in opens.items()})
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default="benchmarks/results/run_start_cpu.json")
  args = ap.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    r = measure(tmp, args.repeats)
  print(f"tiny cDDPM on the tiny demo cohort, median of {args.repeats}")
  print(f"  bad value refused (wall)                 {r['refusal_wall_s']:6.2f} s")
  print(f"  2-step run, CPU, 2 batches read ahead    {r['run_cpu_s_package']:6.2f} s")
  print(f"  2-step run, CPU, 500 records read ahead  {r['run_cpu_s_grain_default']:6.2f} s"
        f"   (same losses: {r['same_losses']})")
  print(f"  open_run (model only)                    {r['open_s_model_only']:6.2f} s")
  print(f"  restore the whole saved state            {r['open_s_whole_state']:6.2f} s")
  result = {"benchmark": "run_start", "repeats": args.repeats,
            "machine": host_info(),
            **r}
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.out}")
  return 0 if r["same_losses"] else 1


if __name__ == "__main__":
  raise SystemExit(main())
