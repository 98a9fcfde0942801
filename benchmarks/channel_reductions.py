"""Per-channel reductions on CPU: one-step vs two-stage sums (`sadm_jax.models.staged`), ops and train steps.

    python -m benchmarks.channel_reductions                       # ops + demo/tiny train steps
    python -m benchmarks.channel_reductions --steps cddpm:paper:4 --rounds 1 --ops ""

`plain` sets `staged.MIN_INNER_BLOCK` above every array size, so every sum and broadcast takes
its one-step form (the reductions as before the change; the modules are the package's);
`staged` is the package default. The variants alternate round by round, each in a fresh process
(`benchmarks.ab`; `--subprocess 0`: all in this one, where the second large program ran slower
than the first); medians over all rounds. Prints a table and writes JSON (`--out`).
"""

from __future__ import annotations

import argparse
import os
import sys

from benchmarks import ab

OPS = {  # name: (shape, axes) — the sums autodiff and the norms make, by `staged_sum` (the same
  # reduction a bias's gradient takes through `expand`'s transpose)
    "sum over N·H·W, demo [16, 64, 64, 48]": ((16, 64, 64, 48), (0, 1, 2)),
    "sum over N·H·W, paper [4, 96, 96, 128]": ((4, 96, 96, 128), (0, 1, 2)),
    "sum over N·H·W, paper [4, 48, 48, 256] (C ≥ 256)": ((4, 48, 48, 256), (0, 1, 2)),
    "sum per (N, group), demo [16, 64, 64, 8×6]": ((16, 64, 64, 8, 6), (1, 2, 4)),
    "sum per (N, C) over H·W, demo [16, 64, 64, 48]": ((16, 64, 64, 48), (1, 2)),
}


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ab.add_args(ap, "cddpm:demo:0,sadm:demo:0,cddpm:tiny:0",
              os.path.join("benchmarks", "results", "channel_reductions_cpu.json"))
  return ap.parse_args(argv)


def _set_variant(name: str, default: int) -> None:
  """'plain': no axis qualifies for a first stage (one-step sums); 'staged': `default`."""
  from sadm_jax.models import staged
  staged.MIN_INNER_BLOCK = sys.maxsize if name == "plain" else default


def _time_op(shape, axes, calls: int = 30) -> dict:
  """Median ms of `staged_sum` and its largest error relative to a float64 sum."""
  import jax
  import numpy as np
  from sadm_jax.models import staged
  x = jax.numpy.asarray(np.random.default_rng(0).standard_normal(shape), np.float32)
  f = jax.jit(lambda x: staged.staged_sum(x, axes))
  return ab.op_row(f, (x,), calls, f(x), np.asarray(x, np.float64).sum(axes))


def worker(variant: str, ops: bool, steps: list[str], timed: int) -> dict:
  """One variant's op times (ms) and train steps, in this process; the package default restored."""
  from sadm_jax.models import staged
  default = staged.MIN_INNER_BLOCK
  rows = {op: (lambda shape=shape, axes=axes: _time_op(shape, axes))
          for op, (shape, axes) in (OPS.items() if ops else ())}
  return ab.variant_worker(variant, lambda v: _set_variant(v, default),
                           (staged, "MIN_INNER_BLOCK"), rows, steps, timed)


def main(argv=None) -> dict:
  args = parse_args(argv)
  return ab.main("benchmarks.channel_reductions", ("plain", "staged"), args, argv,
                 lambda v, steps: worker(v, bool(args.ops), steps, args.timed))


if __name__ == "__main__":
  main()
