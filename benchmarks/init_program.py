"""Benchmark: compile and run seconds of a training run's init program, as the package compiles it vs at XLA's default level.

    python -m benchmarks.init_program [--configs cddpm:tiny spark_pretrain:tiny ...] [--out JSON]

A run's initial state (weights, optimiser state) comes from one jitted program, run once per run
(`loop.Trainer.init_program`). On CPU the package compiles it at LLVM optimisation level 2
(`loop.CPU_INIT_COMPILER_OPTIONS`), XLA's default being 3. For each config (`module:arg`, arg 'paper' = the module's
default config) this builds the training task abstractly (`aot.build_task`, no data, no
checkpoints read) on one CPU device, compiles the init program both ways with the compilation
cache off, times each compilation and the median of 3 runs, and compares the two states element
by element (differing fraction, largest difference in float32 ULPs). Prints a table and writes
JSON (machine info included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from benchmarks.machine import host_info

DEFAULT_CONFIGS = ("cddpm:tiny", "spark_pretrain:tiny", "sadm_draem:tiny", "cddpm:paper")
# The level XLA compiles at when nothing is set (xla_backend_optimization_level's default).
XLA_DEFAULT = {"xla_backend_optimization_level": 3}


def _config(spec: str):
  import importlib
  from sadm_jax import config as config_lib
  module, _, arg = spec.partition(":")
  c = importlib.import_module(f"configs.{module}").get_config(
      None if arg in ("", "paper") else arg)
  c.mesh.num_devices = 1
  return config_lib.resolve(c)


def _ulps(a, b) -> int:
  """Largest distance in float32 ULPs between two float32 arrays of one shape (0 if equal)."""
  import numpy as np
  ia = a.astype(np.float32).view(np.int32).astype(np.int64)
  ib = b.astype(np.float32).view(np.int32).astype(np.int64)
  ia = np.where(ia < 0, np.int64(-2 ** 31) - ia, ia)  # sign-magnitude -> monotone integers
  ib = np.where(ib < 0, np.int64(-2 ** 31) - ib, ib)
  return int(np.abs(ia - ib).max()) if a.size else 0


def measure(spec: str) -> dict:
  """Compile/run seconds of the init program of config `spec` both ways, and how the states differ."""
  import jax
  import numpy as np
  from sadm_jax.train import aot, loop, sharding
  c = _config(spec)
  trainer = loop.Trainer(c, aot.build_task(c), sharding.make_mesh(c))
  args = (trainer.init_key, trainer.init_inputs)
  lowered = trainer.init_program.lower(*args)
  out = {"config": spec, "task": trainer.task.name,
         "params": int(sum(x.size for x in jax.tree.leaves(trainer.abstract_state.params)))}
  states = {}
  for name, options in (("package", None), ("xla_default", XLA_DEFAULT)):
    t0 = time.perf_counter()
    compiled = lowered.compile(options) if options else lowered.compile()
    out[f"{name}_compile_s"] = time.perf_counter() - t0
    runs = []
    for _ in range(3):
      t0 = time.perf_counter()
      state = jax.block_until_ready(compiled(*args))
      runs.append(time.perf_counter() - t0)
    out[f"{name}_run_s"] = statistics.median(runs)
    states[name] = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]
  pairs = list(zip(states["package"], states["xla_default"]))
  n = sum(a.size for a, _ in pairs)
  out["elements"] = int(n)
  out["differing_fraction"] = sum(int((a != b).sum()) for a, b in pairs) / max(n, 1)
  out["max_ulps"] = max((_ulps(a, b) for a, b in pairs if a.dtype == np.float32), default=0)
  out["options"] = loop.init_compiler_options(jax.devices()[0].platform)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
  ap.add_argument("--out", default="benchmarks/results/init_program_cpu.json")
  args = ap.parse_args()
  import jax
  jax.config.update("jax_enable_compilation_cache", False)  # every compilation is timed
  rows = [measure(spec) for spec in args.configs]
  print(f"init program on {jax.devices()[0].device_kind}, package options "
        f"{rows[0]['options']} vs XLA default {XLA_DEFAULT}")
  print(f"{'config':<22}{'params':>12}{'compile s':>11}{'(default)':>11}{'run s':>8}"
        f"{'(default)':>11}{'differ':>8}{'ULPs':>6}")
  for r in rows:
    print(f"{r['config']:<22}{r['params']:>12,}{r['package_compile_s']:>11.2f}"
          f"{r['xla_default_compile_s']:>11.2f}{r['package_run_s']:>8.3f}"
          f"{r['xla_default_run_s']:>11.3f}{100 * r['differing_fraction']:>7.1f}%"
          f"{r['max_ulps']:>6}")
  result = {"benchmark": "init_program", "jax": jax.__version__,
            "machine": host_info(),
            "rows": rows}
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
