"""Benchmark: CPU and garbage-collector seconds of tracing and lowering the tiny train steps, at Python's collector defaults vs the package's (`sadm_jax.utils.gc_tuning`).

    python -m benchmarks.gc_settings [--repeats 5] [--out JSON]

In one process, per round and variant (alternating; the first round warms imports and caches
and is not counted): builds the tiny cDDPM and SADM-DRAEM trainers abstractly
(`train.aot.build_task`, no data) and traces and lowers their train steps and init programs,
as every run does before it compiles or reads the compilation cache. Reports per variant the
median CPU seconds (user + system of this process), the seconds spent inside the collector
(`gc.callbacks`) and the number of collections. Prints a table and writes JSON (machine info
included). No XLA compilation is timed: that is the same in both variants.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import statistics
import sys
import time

DEFAULT_THRESHOLD = (700, 10, 10)  # CPython's


class _GcClock:
  """Seconds inside the collector and collections counted, from `gc.callbacks`."""

  def __init__(self):
    self.seconds, self.collections, self._t = 0.0, 0, 0.0

  def __call__(self, phase, info):
    if phase == "start":
      self._t = time.perf_counter()
    else:
      self.seconds += time.perf_counter() - self._t
      self.collections += 1


def _set(variant: str) -> None:
  from sadm_jax.utils import gc_tuning
  gc.unfreeze()
  gc.set_threshold(*DEFAULT_THRESHOLD)
  if variant == "package":
    assert gc_tuning.apply({})


def _trace_and_lower() -> None:
  from configs import cddpm, sadm_draem
  from sadm_jax.train import aot, loop, sharding
  for module in (cddpm, sadm_draem):
    c = module.get_config("tiny")
    trainer = loop.Trainer(c, aot.build_task(c), sharding.make_mesh(c))
    state, batch = aot.abstract_inputs(trainer)
    trainer.train_step.trace(state, batch, trainer.train_key, trainer.frozen).lower()
    trainer.init_program.trace(trainer.init_key, trainer.init_inputs).lower()


def measure(repeats: int) -> dict:
  clock = _GcClock()
  gc.callbacks.append(clock)
  rows = {v: [] for v in ("python", "package")}
  try:
    for r in range(repeats + 1):
      for variant in (("python", "package") if r % 2 else ("package", "python")):
        _set(variant)
        gc.collect()
        clock.seconds, clock.collections = 0.0, 0
        t0 = time.process_time()
        _trace_and_lower()
        cpu = time.process_time() - t0
        if r:  # round 0 warms imports and JAX's own caches
          rows[variant].append({"cpu_s": cpu, "gc_s": clock.seconds,
                                "collections": clock.collections})
  finally:
    gc.callbacks.remove(clock)
    _set("python")
  return {v: {k: statistics.median(x[k] for x in rs) for k in ("cpu_s", "gc_s", "collections")}
          | {"runs": rs} for v, rs in rows.items()}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--out", default="benchmarks/results/gc_settings_cpu.json")
  args = ap.parse_args(argv)
  if args.repeats < 1:
    print(f"error: --repeats={args.repeats} must be >= 1", file=sys.stderr)
    return 2
  import jax
  jax.config.update("jax_platforms", "cpu")
  from benchmarks import machine
  from sadm_jax.utils import gc_tuning, io
  res = measure(args.repeats)
  print(f"trace + lower of the tiny cDDPM and SADM-DRAEM train steps and init programs, "
        f"median of {args.repeats}")
  print(f"{'collector':>28s} {'CPU s':>7s} {'in GC s':>8s} {'collections':>11s}")
  for v, label in (("python", f"Python's {DEFAULT_THRESHOLD}"),
                   ("package", f"package (freeze, {gc_tuning.GEN0_THRESHOLD})")):
    m = res[v]
    print(f"{label:>28s} {m['cpu_s']:7.2f} {m['gc_s']:8.2f} {m['collections']:11.0f}")
  given = sys.argv[1:] if argv is None else argv
  out = {"benchmark": "gc_settings", "command": "python -m benchmarks.gc_settings " +
         shlex.join(given), "machine": machine.machine_info(), "repeats": args.repeats,
         "gen0_threshold": gc_tuning.GEN0_THRESHOLD, **res}
  if args.out:
    io.write_json(args.out, out)
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
