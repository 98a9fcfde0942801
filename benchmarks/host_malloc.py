"""Host memory on CPU: train steps and a large block, under the package's and glibc's malloc settings.

    python -m benchmarks.host_malloc --timed 8        # glibc vs package, demo cDDPM and SADM steps
    python -m benchmarks.host_malloc --variants glibc,one_heap --rounds 1

XLA:CPU allocates a program's temporaries at every execution (as one block by default, 370 MB
for the demo cDDPM train step) and frees them at the end; glibc maps blocks that large afresh
each time and unmaps them when freed, so every step faults its temporaries in again. The
variants start their worker processes with these environments:
- `package`: the package's defaults (the train steps' temporaries in heaps of at most 60 MiB,
  kept by glibc: `sadm_jax.utils.host_heap`);
- `glibc`: `SADM_CPU_HEAP_REUSE=0`, glibc's defaults and one block (the package before that);
- `hugetlb`: as `glibc` plus `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, mapped blocks asked for
  transparent huge pages (glibc 2.35 or later; older versions ignore it);
- `one_heap`: as `glibc` plus GLIBC_TUNABLES for one arena, no mmap, no trimming.
Ops: a fresh 256 MiB block written and freed (ms and minor page faults per round trip). Steps:
the Trainer's train steps, compiled in the worker, with the user and system CPU seconds and the
minor page faults per step. Two variants alternate round by round, each in a fresh process
(`benchmarks.ab`); prints the tables and writes JSON (`--out`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from benchmarks import ab

TUNABLES = {
    "package": "",
    "glibc": "",
    "hugetlb": "glibc.malloc.hugetlb=1",
    "one_heap": ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                 "glibc.malloc.trim_threshold=4611686018427387904"),
}
HEAP_REUSE = {"package": "1"}  # SADM_CPU_HEAP_REUSE of each variant; "0" where not listed
BLOCK_MIB = 256


def variant_env(variant: str) -> dict[str, str]:
  """The environment a variant's worker starts with (and checks it got)."""
  from sadm_jax.utils import host_heap
  return {"GLIBC_TUNABLES": TUNABLES[variant],
          host_heap.ENV_SWITCH: HEAP_REUSE.get(variant, "0")}


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ab.add_args(ap, "cddpm:demo:0,sadm:demo:0",
              os.path.join("benchmarks", "results", "host_malloc_cpu.json"))
  ap.add_argument("--variants", default="glibc,package",
                  help=f"two of {', '.join(TUNABLES)}, comma-separated")
  ap.add_argument("--calls", type=int, default=9, help="timed round trips of the block (median)")
  args = ap.parse_args(argv)
  args.variants = tuple(v.strip() for v in args.variants.split(","))
  chosen = set(args.variants)
  if len(args.variants) != 2 or len(chosen) != 2 or not chosen <= set(TUNABLES):
    ap.error(f"--variants: two different ones of {', '.join(TUNABLES)}, got "
             f"{','.join(args.variants)}")
  return args


def block_round_trips(calls: int, mib: int = BLOCK_MIB) -> dict:
  """Median ms and minor page faults of allocating, writing and freeing a `mib` MiB block."""
  import numpy as np
  from benchmarks.machine import process_usage
  ms, faults = [], []
  for _ in range(calls + 1):  # the first trip maps the block whatever the settings: untimed
    f0, t0 = process_usage()["minor_faults"], time.perf_counter()
    block = np.empty(mib << 18, np.float32)
    block.fill(1.0)
    del block
    ms.append((time.perf_counter() - t0) * 1e3)
    faults.append(process_usage()["minor_faults"] - f0)
  return {"ms": statistics.median(ms[1:]), "minor_faults": statistics.median(faults[1:])}


def worker(variant: str, ops: bool, steps: list[str], timed: int, calls: int) -> dict:
  """One variant's block round trips and train steps, in this process (started with its env)."""
  want = variant_env(variant)
  got = {name: os.environ.get(name, "") for name in want}
  if got != want:
    raise SystemExit(f"variant {variant}: {', '.join(f'{k}={v!r}' for k, v in got.items())} (the "
                     "worker's environment did not take effect)")
  other = sorted(k for k in os.environ if k.startswith("MALLOC_") or
                 (k == "LD_PRELOAD" and os.environ[k].strip()))
  if other:
    raise SystemExit(f"variant {variant}: {', '.join(other)} set in the environment would change "
                     "the allocator of every variant; unset it")
  out: dict = {"ops": {}, "steps": {}}
  if ops:
    out["ops"][f"{BLOCK_MIB} MiB block: allocate, write, free"] = block_round_trips(calls)
  out["steps"] = {spec: ab.time_step(spec, timed) for spec in steps}
  return out


def print_usage(table: dict, variants) -> None:
  """Per row and variant: the medians of minor page faults (and CPU seconds, for steps)."""
  print(f"\n{'what':54s} {'variant':9s} {'minor faults':>13s} {'user s':>8s} {'sys s':>8s}")
  for key, t in table.items():
    for v in variants:
      rounds = t["rounds"][v]
      cells = [f"{statistics.median(r['minor_faults'] for r in rounds):13.0f}"]
      for field in ("cpu_user_s", "cpu_sys_s"):
        cells.append(f"{statistics.median(r[field] for r in rounds):8.3f}"
                     if field in rounds[0] else f"{'-':>8s}")
      print(f"{key:54s} {v:9s} {' '.join(cells)}")


def main(argv=None) -> dict:
  args = parse_args(argv)
  env = {v: variant_env(v) for v in args.variants}
  result = ab.main("benchmarks.host_malloc", args.variants, args, argv,
                   lambda v, steps: worker(v, bool(args.ops), steps, args.timed, args.calls),
                   ["--calls", str(args.calls), "--variants", ",".join(args.variants)], env)
  if result:
    print_usage(result["table"], args.variants)
  return result


if __name__ == "__main__":
  main()
