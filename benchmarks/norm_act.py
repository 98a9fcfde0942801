"""GroupNorm → [FiLM] → SiLU differentiated as composed vs through the recomputing VJP.

    python -m benchmarks.norm_act                        # ops + demo cDDPM train step
    python -m benchmarks.norm_act --ops "" --steps cddpm:paper:4 --rounds 1 --timed 2 \
        --out benchmarks/results/norm_act_paper_cpu.json

`plain` (the package default) empties `norm_act.RECOMPUTE_BACKENDS`, so `norm_act.GroupNormSiLU`
is differentiated as composed; `recompute` lists the backend in use there, so that the UNet's
GroupNorm → [FiLM] → SiLU take the recomputing VJP (on whichever backend JAX runs, e.g. a GPU).
Ops: forward + VJP (input, GroupNorm scale and bias, FiLM scale and shift) at the demo and paper
UNet's widest shapes, with the largest error of the input gradient relative to a float64
computation (flax's GroupNorm, the FiLM and SiLU, differentiated in float64). Train steps also
record the program's temporary bytes and the minor page faults per step. Variants alternate round
by round, each in a fresh process (`benchmarks.ab`); prints a table and writes JSON (`--out`).
"""

from __future__ import annotations

import argparse
import os

from benchmarks import ab

OPS = {  # name: (input shape [B, H, W, C], groups, with FiLM)
    "GN+SiLU, demo [16, 64, 64, 48], 8 groups": ((16, 64, 64, 48), 8, False),
    "GN+FiLM+SiLU, demo [16, 64, 64, 16], 8 groups": ((16, 64, 64, 16), 8, True),
    "GN+SiLU, paper [4, 96, 96, 256], 32 groups": ((4, 96, 96, 256), 32, False),
    "GN+FiLM+SiLU, paper [4, 96, 96, 128], 32 groups": ((4, 96, 96, 128), 32, True),
}
VARIANTS = ("plain", "recompute")


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ab.add_args(ap, "cddpm:demo:0", os.path.join("benchmarks", "results", "norm_act_cpu.json"))
  ap.add_argument("--calls", type=int, default=10, help="timed calls per op and round (median)")
  return ap.parse_args(argv)


def _set_variant(name: str) -> None:
  """'plain': no backend takes the recomputing VJP; 'recompute': the backend in use does."""
  import jax
  from sadm_jax.models import norm_act
  norm_act.RECOMPUTE_BACKENDS = () if name == "plain" else (jax.default_backend(),)


def _time_op(shape, groups: int, film: bool, calls: int) -> dict:
  """Median ms of forward + VJP of `GroupNormSiLU` under the variant set by the worker;
  input-gradient error vs float64."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  from sadm_jax.models import norm_act
  rng = np.random.default_rng(0)
  m = norm_act.GroupNormSiLU(groups)
  c = shape[-1]
  x = jnp.asarray(rng.standard_normal(shape) * 2.0 + 0.5, jnp.float32)
  params = {"params": {"scale": jnp.asarray(1 + 0.1 * rng.standard_normal(c), jnp.float32),
                       "bias": jnp.asarray(0.1 * rng.standard_normal(c), jnp.float32)}}
  f_shape = (shape[0], 1, 1, c)
  fm = (tuple(jnp.asarray(0.3 * rng.standard_normal(f_shape), jnp.float32) for _ in range(2))
        if film else None)
  g = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  with jax.enable_x64(True):  # float64 reference: flax's GroupNorm, the FiLM, SiLU, autodiff
    gn = nn.GroupNorm(num_groups=groups, epsilon=1e-5, use_fast_variance=False,
                      param_dtype=jnp.float64)

    def composed(p, x, f):
      h = gn.apply(p, x)
      return nn.silu(h if f is None else h * (1 + f[0]) + f[1])

    to64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
    ref = jax.vjp(composed, to64(params), to64(x), to64(fm))[1](jnp.asarray(g, jnp.float64))[1]
    assert ref.dtype == jnp.float64
  fn = jax.jit(lambda p, x, f: jax.vjp(lambda p_, x_, f_: m.apply(p_, x_, f_), p, x, f)[1](g))
  got = fn(params, x, fm)[1]
  return ab.op_row(fn, (params, x, fm), calls, got, ref)


def worker(variant: str, ops: bool, steps: list[str], timed: int, calls: int) -> dict:
  """One variant's op times (ms) and train steps, in this process; the package default restored."""
  from sadm_jax.models import norm_act
  rows = {op: (lambda spec=spec: _time_op(*spec, calls))
          for op, spec in (OPS.items() if ops else ())}
  return ab.variant_worker(variant, _set_variant, (norm_act, "RECOMPUTE_BACKENDS"), rows, steps,
                           timed)


def main(argv=None) -> dict:
  args = parse_args(argv)
  return ab.main("benchmarks.norm_act", VARIANTS, args, argv,
                 lambda v, steps: worker(v, bool(args.ops), steps, args.timed, args.calls),
                 ["--calls", str(args.calls)])


if __name__ == "__main__":
  main()
