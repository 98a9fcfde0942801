"""Benchmark: what importing JAX and the package costs a fresh process, per installed ml_dtypes.

    python -m benchmarks.import_time [--repeats 5] [--variant NAME=DIR ...] [--out JSON]

Every `python -m sadm_jax.main` run, each evaluation or loader worker that imports JAX and every
subprocess of the test suite pays this once. For each statement (`import ml_dtypes`, `import jax`,
`import sadm_jax.train.loop`) it starts a fresh interpreter `--repeats` times and reports the
median wall and CPU seconds (user + system of the child) and, from `python -X importtime`, the
self time of ml_dtypes' extension module, where ml_dtypes 0.7.0 spends ~1 s registering its
ufunc loops (numpy's loop registration compares each new loop with all earlier ones;
BENCHMARKS.md "Import time: ml_dtypes"). `--variant NAME=DIR` adds DIR to the front of
PYTHONPATH (e.g. a `pip install --no-deps --target DIR ml_dtypes==0.7.0`), so other versions are
measured against the installed one; variants alternate within each repeat. Prints a table and
writes JSON (machine info included).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time

from benchmarks.machine import host_info

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATEMENTS = ("import ml_dtypes", "import jax", "import sadm_jax.train.loop")
EXT = "ml_dtypes._ml_dtypes_ext"


def _env(path: str) -> dict:
  env = dict(os.environ)
  if path:
    env["PYTHONPATH"] = os.pathsep.join(p for p in (path, env.get("PYTHONPATH", "")) if p)
  return env


def run_once(statement: str, path: str = "") -> dict:
  """Wall and CPU seconds of a fresh `python -X importtime -c STATEMENT` (DIR `path` first on
  PYTHONPATH), the self seconds of ml_dtypes' extension and the ml_dtypes version it loaded."""
  code = f"{statement}\nimport ml_dtypes, sys\nsys.stdout.write(ml_dtypes.__version__)"
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.perf_counter()
  res = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=REPO,
                       env=_env(path), capture_output=True, text=True)
  wall = time.perf_counter() - t0
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if res.returncode != 0:
    last = (res.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"{statement!r} failed (exit {res.returncode}): {last}")
  ext = re.search(rf"import time:\s+(\d+) \|\s+\d+ \|\s+{re.escape(EXT)}$", res.stderr, re.M)
  return {"wall_s": wall,
          "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
          "ext_self_s": int(ext.group(1)) / 1e6 if ext else None,
          "ml_dtypes": res.stdout.strip()}


def measure(variants: dict[str, str], repeats: int, statements=STATEMENTS) -> dict:
  """{variant: {statement: medians and the ml_dtypes version}}; variants alternate per repeat."""
  runs = {v: {s: [] for s in statements} for v in variants}
  for r in range(repeats):
    order = list(variants) if r % 2 == 0 else list(variants)[::-1]
    for s in statements:
      for v in order:
        runs[v][s].append(run_once(s, variants[v]))
  out = {}
  for v, per in runs.items():
    out[v] = {}
    for s, rs in per.items():
      ext = [x["ext_self_s"] for x in rs if x["ext_self_s"] is not None]
      out[v][s] = {"wall_s": statistics.median(x["wall_s"] for x in rs),
                   "cpu_s": statistics.median(x["cpu_s"] for x in rs),
                   "ext_self_s": statistics.median(ext) if ext else None,
                   "ml_dtypes": rs[0]["ml_dtypes"], "repeats": len(rs)}
  return out


def _variants(specs: list[str]) -> dict[str, str]:
  out = {"installed": ""}
  for spec in specs:
    name, sep, path = spec.partition("=")
    if not sep or not name or name in out or not os.path.isdir(path):
      raise ValueError(f"--variant {spec!r}: expected NAME=DIR, a new NAME and DIR a directory")
    out[name] = os.path.abspath(path)
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--variant", action="append", default=[], metavar="NAME=DIR")
  ap.add_argument("--out", default="benchmarks/results/import_time_cpu.json")
  args = ap.parse_args(argv)
  try:
    if args.repeats < 1:
      raise ValueError(f"--repeats {args.repeats}: must be >= 1")
    variants = _variants(args.variant)
    results = measure(variants, args.repeats)
  except (ValueError, RuntimeError) as e:
    print(f"import_time: {e}", file=sys.stderr)
    return 2
  print(f"| variant | ml_dtypes | statement | wall s | CPU s | {EXT} self s |")
  print("|---|---|---|---|---|---|")
  for v, per in results.items():
    for s, r in per.items():
      ext = "-" if r["ext_self_s"] is None else f"{r['ext_self_s']:.3f}"
      print(f"| {v} | {r['ml_dtypes']} | `{s}` | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {ext} |")
  from sadm_jax.utils import io
  io.write_json(args.out, {
      "repeats": args.repeats, "variants": variants, "results": results,
      "machine": host_info()})
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
