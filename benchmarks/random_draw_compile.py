"""Benchmark: compile time of one jitted `jax.random` draw per shape, at XLA's default optimisation level and at level 2, shaped and flat.

    python -m benchmarks.random_draw_compile [--shapes 3x3x8x12,7x7x8x12,...] [--levels 3,2]
                                             [--out JSON]

Each (shape, level, form) compiles in a fresh subprocess (XLA flags are read when the backend
starts, and a process compiles a shape once), with the compilation cache off: `shaped` is
`jax.random.uniform(key, shape)`, `flat` is the same draw as `uniform(key, [prod(shape)])`
reshaped (the same values: the table compares their sums). The package's init programs compile at
level 2 on CPU (`train.loop.CPU_INIT_COMPILER_OPTIONS`); the tests draw their data with numpy
and compile module inits the same way (`tests.helpers.compiled_init`) because some 4-D draws
took seconds to compile alone at the default level. Prints a table and writes JSON (machine
info included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks import machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SHAPES = "3x3x8x12,7x7x8x12,1x1x8x12,3x3x64x96,8x64x64x1,864"

_PROBE = r"""
import json, math, sys, time
import jax, numpy as np
shape, form = tuple(int(n) for n in sys.argv[1].split("x")), sys.argv[2]
if form == "flat":
  f = lambda k: jax.random.uniform(k, (math.prod(shape),)).reshape(shape)
else:
  f = lambda k: jax.random.uniform(k, shape)
compiled_at = time.perf_counter()
lowered = jax.jit(f).lower(jax.random.key(0))
compiled = lowered.compile()
seconds = time.perf_counter() - compiled_at
values = np.asarray(compiled(jax.random.key(0)))
print(json.dumps({"compile_s": seconds, "checksum": float(values.astype(np.float64).sum())}))
"""


def measure(shape: str, level: int, form: str) -> dict:
  """Compile seconds (trace + lower + compile) of one draw in a fresh process."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_backend_optimization_level={level}")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  proc = subprocess.run([sys.executable, "-c", _PROBE, shape, form], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=600, check=False)
  if proc.returncode != 0:
    raise SystemExit(f"error: the probe for {shape} ({form}, level {level}) failed: "
                     f"{proc.stderr.strip().splitlines()[-1:]}")
  return {"shape": shape, "level": level, "form": form, **json.loads(proc.stdout)}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated, e.g. 3x3x8x12")
  parser.add_argument("--levels", default="3,2", help="xla_backend_optimization_level values")
  parser.add_argument("--out", default="", help="JSON file to write")
  args = parser.parse_args(argv)
  try:
    levels = [int(v) for v in args.levels.split(",")]
    shapes = args.shapes.split(",")
    for s in shapes:
      [int(n) for n in s.split("x")]
  except ValueError:
    print("error: --shapes takes e.g. 3x3x8x12,864 and --levels e.g. 3,2", file=sys.stderr)
    raise SystemExit(2) from None
  out_dir = os.path.dirname(os.path.abspath(args.out)) if args.out else ""
  if out_dir and not os.path.isdir(out_dir):
    print(f"error: --out={args.out}: no such directory {out_dir}", file=sys.stderr)
    raise SystemExit(2)
  rows = []
  print(f"{'shape':>12} {'level':>5} {'shaped s':>9} {'flat s':>7} {'same values':>11}")
  for shape in shapes:
    for level in levels:
      shaped, flat = measure(shape, level, "shaped"), measure(shape, level, "flat")
      same = shaped["checksum"] == flat["checksum"]
      rows += [shaped, flat]
      print(f"{shape:>12} {level:>5} {shaped['compile_s']:>9.2f} {flat['compile_s']:>7.2f} "
            f"{str(same):>11}", flush=True)
  if args.out:
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump({"machine": {**machine.host_info(), "cpu": machine.cpu_model()}, "rows": rows},
                f, indent=1)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
