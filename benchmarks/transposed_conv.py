"""Transposed convolutions on CPU: kernel gradient as XLA differentiates it vs through the adjoint.

    python -m benchmarks.transposed_conv                        # ops + demo SADM train step
    python -m benchmarks.transposed_conv --ops "" --steps sadm:paper:4,spark:paper:4 --rounds 1 \
        --timed 3 --out benchmarks/results/transposed_conv_paper_cpu.json

`plain` empties `layers.ADJOINT_BACKENDS`, so `layers.ConvTranspose` is differentiated as is (its
kernel gradient a conv over the stride-dilated input, as with `nn.ConvTranspose`); `adjoint` is
the package default (`layers.conv_transpose`). Ops: one forward + VJP (input and kernel) of the
SegUnet's and the SparK decoder's up-convs at their demo and paper shapes, with the kernel
gradient's largest error relative to a float64 computation. Variants alternate round by round,
each in a fresh process (`benchmarks.ab`); prints a table and writes JSON (`--out`).
"""

from __future__ import annotations

import argparse
import os

from benchmarks import ab

SEGUNET = dict(kernel_size=(2, 2), strides=(2, 2), padding="VALID")
SPARK = dict(kernel_size=(4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), transpose_kernel=True)
OPS = {  # name: (module kwargs, input shape [B, h, w, C_in], output channels)
    "SegUnet up-conv, demo [16, 8, 8, 128] → 64": (SEGUNET, (16, 8, 8, 128), 64),
    "SegUnet up-conv, demo [16, 32, 32, 32] → 16": (SEGUNET, (16, 32, 32, 32), 16),
    "SegUnet up-conv, paper [4, 12, 12, 1024] → 512": (SEGUNET, (4, 12, 12, 1024), 512),
    "SegUnet up-conv, paper [4, 48, 48, 256] → 128": (SEGUNET, (4, 48, 48, 256), 128),
    "SparK up-conv, paper [4, 6, 6, 256] → 256": (SPARK, (4, 6, 6, 256), 256),
    "SparK up-conv, paper [4, 48, 48, 32] → 32": (SPARK, (4, 48, 48, 32), 32),
}
VARIANTS = ("plain", "adjoint")


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ab.add_args(ap, "sadm:demo:0", os.path.join("benchmarks", "results", "transposed_conv_cpu.json"))
  ap.add_argument("--calls", type=int, default=10, help="timed calls per op and round (median)")
  return ap.parse_args(argv)


def _set_variant(name: str, default: tuple[str, ...]) -> None:
  """'plain': no backend takes the adjoint kernel gradient; 'adjoint': `default` (the package's)."""
  from sadm_jax.models import layers
  layers.ADJOINT_BACKENDS = () if name == "plain" else default


def _time_op(variant: str, default: tuple[str, ...], kwargs: dict, shape, features: int,
             calls: int) -> dict:
  """Median ms of forward + VJP of `layers.ConvTranspose`; kernel-gradient error vs float64."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from sadm_jax.models import layers
  rng = np.random.default_rng(0)
  m = layers.ConvTranspose(features, **kwargs)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  k_shape = jax.eval_shape(m.init, jax.random.key(0), x)["params"]["kernel"].shape
  params = {"params": {"kernel": jnp.asarray(rng.standard_normal(k_shape) / np.sqrt(k_shape[2]),
                                             jnp.float32), "bias": jnp.zeros(features)}}
  g = jnp.asarray(rng.standard_normal(jax.eval_shape(m.apply, params, x).shape), jnp.float32)
  with jax.enable_x64(True):  # float64 reference: the same module differentiated as is
    _set_variant("plain", default)
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    ref = jax.vjp(m.clone(dtype=jnp.float64).apply, p64,
                  jnp.asarray(x, jnp.float64))[1](jnp.asarray(g, jnp.float64))[0]
  _set_variant(variant, default)
  f = jax.jit(lambda p, x: jax.vjp(m.apply, p, x)[1](g))
  got = f(params, x)[0]["params"]["kernel"]
  return ab.op_row(f, (params, x), calls, got, ref["params"]["kernel"])


def worker(variant: str, ops: bool, steps: list[str], timed: int, calls: int) -> dict:
  """One variant's op times (ms) and train steps, in this process; the package default restored."""
  from sadm_jax.models import layers
  default = layers.ADJOINT_BACKENDS
  rows = {op: (lambda spec=spec: _time_op(variant, default, *spec, calls))
          for op, spec in (OPS.items() if ops else ())}
  return ab.variant_worker(variant, lambda v: _set_variant(v, default),
                           (layers, "ADJOINT_BACKENDS"), rows, steps, timed)


def main(argv=None) -> dict:
  args = parse_args(argv)
  return ab.main("benchmarks.transposed_conv", VARIANTS, args, argv,
                 lambda v, steps: worker(v, bool(args.ops), steps, args.timed, args.calls),
                 ["--calls", str(args.calls)])


if __name__ == "__main__":
  main()
