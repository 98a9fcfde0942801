"""A/B harness for CPU formulation benchmarks: variants alternate by round, in fresh processes.

A benchmark module provides `worker(variant) -> {"ops": {name: {"ms": …, ["rel_error": …]}},
"steps": {spec: {"step_s": …}}}` and, under `--worker VARIANT`, prints that dict as JSON on its
last line. `run_rounds` runs the variants A, B then B, A, … (so that a shared machine's load hits
both alike), each call in a fresh process unless told otherwise (a second large program in one
process ran slower than the first); `summarise` takes the medians over all rounds.
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
from typing import Callable, Sequence

Rows = dict[str, dict[str, list[dict]]]  # key (op or step) -> variant -> one result per round


def add_args(ap: argparse.ArgumentParser, steps: str, out: str) -> None:
  """The options every A/B benchmark takes; `steps` and `out` are its defaults."""
  ap.add_argument("--ops", default="all", help="'all' or '' (skip the op table)")
  ap.add_argument("--steps", default=steps,
                  help="train steps config:size:batch (batch 0 = the config's), comma-separated")
  ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of the variants")
  ap.add_argument("--timed", type=int, default=5, help="timed train steps per round (median)")
  ap.add_argument("--out", default=out)
  ap.add_argument("--subprocess", type=int, default=1,
                  help="1: each variant and round in a fresh process (default); 0: in this one")
  ap.add_argument("--worker", default="", help=argparse.SUPPRESS)  # internal: variant name


def main(module: str, variants: Sequence[str], args: argparse.Namespace, argv,
         worker: Callable[[str, list[str]], dict], extra_worker_args: Sequence[str] = (),
         variant_env: dict[str, dict[str, str]] | None = None) -> dict:
  """A benchmark's entry point once its options are parsed: as `--worker`, print `worker(variant,
  steps)` as JSON; else run the rounds, print the table, write (`args.out`) and return the result.
  `variant_env`: environment variables a variant's worker process starts with (variant -> env);
  such variants need `--subprocess 1`."""
  steps = [s for s in args.steps.split(",") if s]
  if args.worker:
    print(json.dumps(worker(args.worker, steps)))
    return {}
  from benchmarks import machine
  worker_args = ["--ops", args.ops, "--steps", args.steps, "--timed", str(args.timed),
                 *extra_worker_args]
  if variant_env and not args.subprocess:
    raise SystemExit(f"{module}: its variants differ in their environment; run with --subprocess 1")
  in_process = None if args.subprocess else (lambda v: worker(v, steps))
  table = summarise(run_rounds(module, variants, args.rounds, worker_args, in_process,
                               variant_env), variants)
  print_table(table, variants)
  given = sys.argv[1:] if argv is None else argv
  result = {"command": f"python -m {module} " + shlex.join(given),
            "machine": machine.machine_info(), "rounds": args.rounds, "timed_steps": args.timed,
            "one_process_per_variant": bool(args.subprocess), "table": table}
  write(args.out, result)
  return result


def run_rounds(module: str, variants: Sequence[str], rounds: int, worker_args: Sequence[str],
               in_process: Callable[[str], dict] | None = None,
               variant_env: dict[str, dict[str, str]] | None = None) -> Rows:
  """Every variant once per round, alternating the order; `in_process(variant)` instead of a
  subprocess (`python -m module --worker variant *worker_args`, with `variant_env[variant]`
  added to its environment) when given."""
  rows: Rows = {}
  for r in range(rounds):
    for v in (variants if r % 2 == 0 else variants[::-1]):
      res = (in_process(v) if in_process else
             run_worker(module, v, worker_args, (variant_env or {}).get(v, {})))
      for key, value in {**res["ops"], **res["steps"]}.items():
        rows.setdefault(key, {}).setdefault(v, []).append(value)
        if "step_s" in value:
          print(f"round {r + 1} {v:8s} {key}: {value['step_s']:.3f} s/step", flush=True)
  return rows


def run_worker(module: str, variant: str, worker_args: Sequence[str],
               env: dict[str, str] | None = None) -> dict:
  """`python -m module --worker variant *worker_args` in a fresh process (`env` added to its
  environment); returns the JSON its stdout ends with."""
  cmd = [sys.executable, "-m", module, "--worker", variant, *worker_args]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                        env={**os.environ, **env} if env else None)
  if proc.returncode:
    raise SystemExit(f"{module} worker {variant} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(rows: Rows, variants: Sequence[str]) -> dict:
  """Per key: the unit, each variant's median, second / first and, for ops, the largest errors."""
  a, b = variants
  table = {}
  for key, per in rows.items():
    field, unit = ("ms", "ms") if "ms" in per[a][0] else ("step_s", "s/step")
    med = {v: statistics.median(x[field] for x in per[v]) for v in variants}
    table[key] = {"unit": unit, **med, "ratio": med[b] / med[a], "rounds": per}
    if "rel_error" in per[a][0]:
      table[key]["rel_error"] = {v: max(x["rel_error"] for x in per[v]) for v in variants}
  return table


def print_table(table: dict, variants: Sequence[str]) -> None:
  a, b = variants
  print(f"\n{'what':54s} {'unit':7s} {a:>9s} {b:>9s} {b + '/' + a:>16s} "
        f"{'rel. error ' + a + ' / ' + b:>28s}")
  for key, t in table.items():
    err = (f"{t['rel_error'][a]:.1e} / {t['rel_error'][b]:.1e}" if "rel_error" in t else "")
    print(f"{key:54s} {t['unit']:7s} {t[a]:9.3f} {t[b]:9.3f} {t['ratio']:16.2f} {err:>28s}")


def variant_worker(variant: str, switch: Callable[[str], None], setting: tuple[object, str],
                   ops: dict[str, Callable[[], dict]], steps: Sequence[str], timed: int) -> dict:
  """A worker whose variants switch a package setting (`setting`: module, attribute name) in
  this process: `switch(variant)`, each of `ops` (name -> a thunk returning its row; it may switch
  for a reference computation), then `switch(variant)` again and the train steps (`time_step`);
  the setting's value from before is put back afterwards, whatever happens."""
  owner, name = setting
  before = getattr(owner, name)
  out: dict = {"ops": {}, "steps": {}}
  try:
    switch(variant)
    for op, thunk in ops.items():
      out["ops"][op] = thunk()
    switch(variant)
    out["steps"] = {spec: time_step(spec, timed) for spec in steps}
  finally:
    setattr(owner, name, before)
  return out


def time_rotated(ways: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
  """Seconds of each of `ways` (name -> call) per round, `repeats` rounds in this process, every
  way once per round in an order rotated round by round (a shared machine's load hits all alike)."""
  times: dict[str, list[float]] = {k: [] for k in ways}
  for r in range(max(1, repeats)):
    for name in list(ways)[r % len(ways):] + list(ways)[:r % len(ways)]:
      t0 = time.perf_counter()
      ways[name]()
      times[name].append(time.perf_counter() - t0)
  return times


def time_calls(fn, args: Sequence, calls: int) -> list[float]:
  """Seconds of each of `calls` calls of `fn(*args)` to completion, after one untimed call."""
  import jax
  jax.block_until_ready(fn(*args))  # compile + first run
  out = []
  for _ in range(calls):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    out.append(time.perf_counter() - t0)
  return out


def op_row(fn, args: Sequence, calls: int, got, ref) -> dict:
  """An op's row: median ms of `fn(*args)` and the largest error of `got` relative to `ref`."""
  import numpy as np
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  return {"ms": statistics.median(time_calls(fn, args, calls)) * 1e3,
          "rel_error": float(np.abs(got - ref).max() / np.abs(ref).max())}


def time_step(spec: str, timed: int) -> dict:
  """The Trainer's train step `config:size:batch` (batch 0 = the config's): median s/step."""
  from benchmarks import train_step as ts
  name, size, batch = spec.split(":")
  m = ts.measure(ts.build_config(name, size, int(batch), "float32"), 1, timed, warmup=1)
  return {"step_s": m["step_s_median"], "compile_s": m["compile_s"],
          "final_loss": m["final_loss"], "cpu_user_s": m["cpu_user_s_per_step"],
          "cpu_sys_s": m["cpu_sys_s_per_step"], "minor_faults": m["minor_faults_per_step"],
          "temp_bytes": (m["program_memory"] or {}).get("temp_size_in_bytes")}


def write(out: str, result: dict) -> None:
  """The result JSON at `out` (atomically), unless `out` is empty."""
  if out:
    from sadm_jax.utils import io
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    io.write_json(out, result)
