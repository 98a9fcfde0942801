"""Benchmark: compile and run seconds of the per-volume evaluation program against the number of SegUnets it serves.

    python -m benchmarks.volume_program                               # tiny, 1/3/6 SegUnets
    python -m benchmarks.volume_program --baseline_repo /tmp/old      # + an older checkout

An evaluation builds one `sadm_jax.evaluate.scoring.VolumeProgram` per cDDPM for all the runs
that use it (a sweep's n SADM runs: n SegUnets of one architecture). Each worker, a fresh process
with the compilation cache off, builds the cDDPM and n SegUnets with random weights
(`benchmarks.evaluation.build`; the SegUnets' weights are scaled copies of one draw), then
traces + lowers and compiles the program for one device and times `--repeats` calls on one
volume (median). With `--baseline_repo DIR` every worker also runs with DIR's `sadm_jax`
(and `benchmarks`) first on the path, alternating with this checkout, so the two compare in one
period. Prints a table and writes JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--size", choices=("tiny", "demo", "paper"), default="tiny")
  ap.add_argument("--models", default="1,3,6", help="comma-separated SegUnet counts")
  ap.add_argument("--repeats", type=int, default=7, help="timed calls after the first (median)")
  ap.add_argument("--rounds", type=int, default=1, help="alternating rounds (with a baseline)")
  ap.add_argument("--baseline_repo", default="", help="an older checkout to compare against")
  ap.add_argument("--out", default="")
  ap.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # internal: n
  args = ap.parse_args(argv)
  try:
    args.models = [int(m) for m in args.models.split(",") if m.strip()]
  except ValueError:
    ap.error(f"--models {args.models!r}: expected comma-separated integers")
  if not args.models or min(args.models) < 1 or args.repeats < 1 or args.rounds < 1:
    ap.error("--models, --repeats and --rounds must be positive")
  if args.baseline_repo and not os.path.isdir(os.path.join(args.baseline_repo, "sadm_jax")):
    ap.error(f"--baseline_repo {args.baseline_repo}: no sadm_jax package there")
  args.out = args.out or os.path.join("benchmarks", "results",
                                      f"volume_program_{args.size}_cpu.json")
  return args


def worker(size: str, n: int, repeats: int) -> dict:
  """One program with n SegUnets of one architecture: seconds to trace + lower, compile, run."""
  import jax
  import jax.numpy as jnp
  from benchmarks import evaluation as ev
  from sadm_jax.evaluate import inference, scoring
  jax.config.update("jax_enable_compilation_cache", False)
  b = ev.build(size, "float32")
  segnets = [b.segnet] + [
      inference.SegmentationInference(b.segnet.module, jax.tree.map(
          lambda a, k=k: a * (1.0 + 0.01 * k), b.segnet.variables)) for k in range(1, n)]
  runs = [(f"run{k}", "sum", k) for k in range(n)]
  settings = {"lam": 0.5, "median_size": 5, "erode_mask": 0, "min_component_size": 0,
              "residual_mode": "ssim"}
  prog = scoring.VolumeProgram(b.cddpm, segnets, runs, settings, scoring.local_mesh(1), False)
  image = b.image[None]
  args = (prog.variables, jnp.asarray(image, jnp.float32), jnp.asarray(image > 0),
          jnp.zeros((1,), jnp.uint32))
  # `program` is the public handle; a baseline checkout from before it existed has only `_fn`
  program = getattr(prog, "program", None) or prog._fn
  t0 = time.perf_counter()
  lowered = program.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  runs_s = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    runs_s.append(time.perf_counter() - t)
  return {"segnets": n, "trace_lower_s": t1 - t0, "compile_s": t2 - t1,
          "run_s": statistics.median(runs_s), "run_s_all": runs_s,
          "groups": getattr(prog, "groups", None)}


def _run_worker(args, n: int, repo: str) -> dict:
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [p for p in (repo, REPO, os.environ.get("PYTHONPATH", "")) if p])}
  # this file as a script: its imports (`benchmarks.evaluation`, `sadm_jax`) come from `repo`
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(n), "--size", args.size,
         "--repeats", str(args.repeats)]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo, check=False)
  if proc.returncode:
    raise SystemExit(f"volume_program worker (n={n}, {repo}) failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.worker:
    print(json.dumps(worker(args.size, args.worker, args.repeats)))
    return {}
  trees = {"this": REPO, **({"baseline": os.path.abspath(args.baseline_repo)}
                            if args.baseline_repo else {})}
  rows: dict = {}
  for r in range(args.rounds):
    order = list(trees) if r % 2 == 0 else list(trees)[::-1]
    for n in args.models:
      for name in order:
        res = _run_worker(args, n, trees[name])
        rows.setdefault(f"{name} n={n}", []).append(res)
        print(f"round {r + 1} {name:8s} n={n}: trace+lower {res['trace_lower_s']:.2f} s, "
              f"compile {res['compile_s']:.2f} s, run {res['run_s']:.3f} s", flush=True)
  table = {k: {f: statistics.median(x[f] for x in v)
               for f in ("trace_lower_s", "compile_s", "run_s")} for k, v in rows.items()}
  print(f"\n{'checkout, SegUnets':22s} {'trace+lower s':>14s} {'compile s':>10s} {'run s':>8s}")
  for k, t in table.items():
    print(f"{k:22s} {t['trace_lower_s']:14.2f} {t['compile_s']:10.2f} {t['run_s']:8.3f}")
  from benchmarks import machine
  from sadm_jax.utils import io
  given = sys.argv[1:] if argv is None else argv
  result = {"command": "python -m benchmarks.volume_program " + shlex.join(given),
            "machine": machine.machine_info(), "size": args.size, "trees": trees,
            "table": table, "rounds": rows}
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  io.write_json(args.out, result)
  print(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  main()
