"""Benchmark: wall and CPU seconds of each CLI run the test session starts in the background (tests/conftest.py), one after the other, from an empty compilation cache.

    python -m benchmarks.background_runs [--runs tiny_cddpm,tiny_sadm,...] [--out JSON]

Writes the session's fake data (8 IXI subjects, 3 volumes per pathological split) and runs
`python -m sadm_jax.main` (or a test's job module) with each entry of tests/conftest.py's
BACKGROUND_RUNS in its order, as the session does (a run's `{run}` fields name earlier runs'
workdirs; 8 fake CPU devices; one fresh persistent compilation cache shared by the runs, so later
runs read what earlier ones compiled), but alone on the machine and at normal priority. CPU is user + system of the run and
its children (grain and cohort workers). With --runs, the earlier runs a chosen one reads are
run too. Prints a table and writes JSON (machine info included). Temporary files are removed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _session():
  """tests/conftest.py (importing it sets the test session's XLA flags and compilation cache for
  this process, which the runs then inherit): its BACKGROUND_RUNS and run-order helper."""
  sys.path.insert(0, REPO)
  from tests import conftest
  return conftest


def measure(chosen: list[str] | None, root: str) -> list[dict]:
  os.environ["SADM_TEST_JAX_CACHE"] = os.path.join(root, "jax_cache")
  session = _session()
  from tests.helpers import background_command
  runs = dict(session.BACKGROUND_RUNS)
  unknown = sorted(set(chosen or ()) - set(runs))
  if unknown:
    raise ValueError(f"--runs: unknown run(s) {', '.join(unknown)}; expected some of "
                     f"{', '.join(runs)}")
  from tests.data import fake_data
  fields = {"data": os.path.join(root, "data")}
  fake_data.write_data_dir(fields["data"], n_ixi=8, n_patho=3)
  rows = []
  for name in session.needed_runs(chosen or list(runs)):
    fields[name] = os.path.join(root, name)
    module, args = background_command([a.format(**fields) for a in runs[name]])
    cmd = [sys.executable, "-m", module, *args, f"--workdir={fields[name]}"]
    before, t0 = os.times(), time.perf_counter()
    with open(fields[name] + ".log", "w") as log:
      rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL).returncode
    wall, after = time.perf_counter() - t0, os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system -
                                                          before.children_system)
    rows.append({"run": name, "exit": rc, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                 "args": runs[name]})
    if rc != 0:
      with open(fields[name] + ".log", errors="replace") as f:
        rows[-1]["output_tail"] = f.read()[-2000:]
      break
  return rows


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--runs", default="", help="comma-separated names; default: all")
  ap.add_argument("--out", default="benchmarks/results/background_runs_cpu.json")
  args = ap.parse_args(argv)
  chosen = [r for r in args.runs.split(",") if r] or None
  root = tempfile.mkdtemp(prefix="sadm_bg_bench_")
  try:
    rows = measure(chosen, root)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  finally:
    shutil.rmtree(root, ignore_errors=True)
  from benchmarks import machine
  print(f"{'run':24s} {'exit':>4s} {'wall s':>8s} {'CPU s':>8s}")
  for r in rows:
    print(f"{r['run']:24s} {r['exit']:4d} {r['wall_s']:8.1f} {r['cpu_s']:8.1f}")
  print(f"{'total':24s} {'':4s} {sum(r['wall_s'] for r in rows):8.1f} "
        f"{sum(r['cpu_s'] for r in rows):8.1f}")
  failed = [r for r in rows if r["exit"] != 0]
  for r in failed:
    print(f"{r['run']} exited with {r['exit']}:\n{r['output_tail']}", file=sys.stderr)
  if args.out:
    from sadm_jax.utils import io
    given = sys.argv[1:] if argv is None else argv
    io.write_json(args.out, {"benchmark": "background_runs",
                             "command": "python -m benchmarks.background_runs " + shlex.join(given),
                             "machine": machine.machine_info(), "runs": rows})
    print(f"wrote {args.out}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
