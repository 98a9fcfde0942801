"""Benchmark: CPU op variants (XLA flags, conv formulations) and whole steps, interleaved A/B."""

from __future__ import annotations

# Usage (repository root):
#   python -m benchmarks.cpu_ops                                  # op level, all flag variants
#   python -m benchmarks.cpu_ops --variants default,ynn_noconv --rounds 3 --ops conv
#   python -m benchmarks.cpu_ops --whole train,infer --size paper --variants default,package \
#       --rounds 2 --steps 2
#   python -m benchmarks.cpu_ops --whole train,infer --size demo --slices 32 \
#       --variants ynn_noconv,package --rounds 3 --steps 3 --ops ""
# XLA flags are read once, when JAX's backend starts, so every (variant, round) runs in its own
# subprocess (`--worker`) with XLA_FLAGS set; rounds alternate the variants (A, B, A, B, …, the
# order rotated each round) so that a shared machine's load hits all of them alike. Per op the
# median over all rounds' timings is reported, with its ratio to the first variant. The JSON goes
# to benchmarks/results/cpu_ops.json (or --out); each run adds/replaces one entry (its `--tag`).

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax

from benchmarks import ab, machine
from benchmarks.conv_formulations import (conv2d_im2col_vjp, conv_weight_grad_im2col,
                                          conv_weight_grad_shifted)

# Named XLA_FLAGS presets. "package" is what `sadm_jax.utils.xla_flags` applies by default on CPU.
YNN = "--xla_cpu_experimental_ynn_fusion_type"
VARIANTS = {
    "default": "",
    "ynn_noconv": f"{YNN}=-individual_convolution",
    "ynn_noconv_noreduce_nodot": f"{YNN}=-individual_convolution,-reduce,-individual_dot",
    "ynn_off": f"{YNN}=",
    "onednn": "--xla_cpu_use_onednn=true",
    "noconv_onednn": f"{YNN}=-individual_convolution --xla_cpu_use_onednn=true",
    "noconv_fastmath": f"{YNN}=-individual_convolution --xla_cpu_enable_fast_math=true",
    "noconv_1thread_eigen": f"{YNN}=-individual_convolution --xla_cpu_multi_thread_eigen=false",
    "noconv_xnn_greedy": (f"{YNN}=-individual_convolution "
                          "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"),
    "package": None,  # filled from sadm_jax.utils.xla_flags at run time
    # the package's flags, and every program's temporaries in heaps that glibc keeps (the
    # package gives that option to its train steps only: sadm_jax.utils.host_heap)
    "package_all_heaps": None,
}
PACKAGE_VARIANTS = ("package", "package_all_heaps")  # run with the package's own CPU settings

CONV_SHAPES = {  # name: (batch, spatial, c_in, c_out, kernel) — paper UNet / SegUnet layers
    "c3_96_128": (4, 96, 128, 128, 3),
    "c3_96_256to128": (4, 96, 256, 128, 3),
    "c3_48_256": (4, 48, 256, 256, 3),
    "c1_48_384to256": (4, 48, 384, 256, 1),
    "c3_24_256": (4, 24, 256, 256, 3),
    # demo UNet layers (configs/demo.py: 64×64 slices, batch 16, widths 16/32)
    "c3_64_16": (16, 64, 16, 16, 3),
    "c3_64_32": (16, 64, 32, 32, 3),
    "c3_64_48to16": (16, 64, 48, 16, 3),
    "c3_32_16to32": (16, 32, 16, 32, 3),
    "c3_64_16to1": (16, 64, 16, 1, 3),
    "c3_64_1to16": (16, 64, 1, 16, 3),
}


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--variants", default="default,ynn_noconv,ynn_off,onednn",
                  help=f"comma-separated presets from {', '.join(VARIANTS)}")
  ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (one subprocess each)")
  ap.add_argument("--ops", default="conv,dw_formulations,layout,other",
                  help="op groups: conv, dw_formulations, layout, other ('' = none)")
  ap.add_argument("--shapes", default=",".join(CONV_SHAPES), help="conv shapes (see CONV_SHAPES)")
  ap.add_argument("--iters", type=int, default=3, help="timed calls per op and round")
  ap.add_argument("--whole", default="", help="whole programs: train, infer (comma-separated)")
  ap.add_argument("--size", choices=("tiny", "demo", "paper"), default="paper",
                  help="demo: configs/demo.py's networks and 64×64(×32) grid")
  ap.add_argument("--batch", type=int, default=0, help="train batch; 0 = 4 (paper) / 16 (demo) / 8 (tiny)")
  ap.add_argument("--slices", type=int, default=10, help="inference: slices per call")
  ap.add_argument("--steps", type=int, default=2, help="whole: timed calls per round")
  ap.add_argument("--tag", default="", help="JSON entry name; default derived from the options")
  ap.add_argument("--out", default=os.path.join("benchmarks", "results", "cpu_ops.json"))
  ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: variant name
  return ap.parse_args(argv)


# ----------------------------------------------------------------------------- worker side


def _conv_ops(shape, groups: set[str]):
  """(name, jitted fn, args, flops) for one conv shape: fwd / dX / dW and alternatives."""
  import jax
  import jax.numpy as jnp
  from jax import lax
  b, s, ci, co, k = shape
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (b, s, s, ci))
  w = jax.random.normal(kw, (k, k, ci, co)) / (k * (ci ** 0.5))
  g = jax.random.normal(kg, (b, s, s, co))
  dn = ("NHWC", "HWIO", "NHWC")
  flops = 2.0 * b * s * s * ci * co * k * k

  def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)

  ops = []
  if "conv" in groups:
    ops += [("fwd", jax.jit(conv), (x, w)),
            ("dx", jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g)[0]), (x, w, g)),
            ("dw", jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g)[1]), (x, w, g))]
  if "dw_formulations" in groups:
    ops += [("dw_im2col", jax.jit(conv_weight_grad_im2col, static_argnums=2), (x, g, k)),
            ("dw_shift", jax.jit(conv_weight_grad_shifted, static_argnums=2), (x, g, k)),
            ("fwdbwd_lax", jax.jit(jax.grad(lambda x, w: jnp.vdot(conv(x, w), g), (0, 1))),
             (x, w)),
            ("fwdbwd_im2col_vjp", jax.jit(jax.grad(lambda x, w: jnp.vdot(
                conv2d_im2col_vjp(x, w), g), (0, 1))), (x, w))]
  if "layout" in groups:
    xn, gn = jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(g, (0, 3, 1, 2))
    wn = jnp.transpose(w, (3, 2, 0, 1))
    dnn = ("NCHW", "OIHW", "NCHW")

    def conv_n(x, w):
      return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dnn)

    ops += [("fwd_nchw", jax.jit(conv_n), (xn, wn)),
            ("dx_nchw", jax.jit(lambda x, w, g: jax.vjp(conv_n, x, w)[1](g)[0]), (xn, wn, gn)),
            ("dw_nchw", jax.jit(lambda x, w, g: jax.vjp(conv_n, x, w)[1](g)[1]), (xn, wn, gn))]
  return [(name, fn, a, flops * (3 if name.startswith("fwdbwd") else 1))
          for name, fn, a in ops]


def _other_ops():
  """GroupNorm+FiLM+SiLU and the middle attention block (fwd + bwd), paper widths."""
  import jax
  import jax.numpy as jnp
  from sadm_jax.models.layers import GroupNorm32
  from sadm_jax.models.unet import AttentionBlock

  out = []
  x = jax.random.normal(jax.random.key(1), (4, 96, 96, 128))
  ss = jax.random.normal(jax.random.key(2), (4, 1, 1, 256)) * 0.1
  gn = GroupNorm32(32)
  gv = gn.init(jax.random.key(0), x)

  def gn_film(v, x, ss):
    scale, shift = jnp.split(ss, 2, axis=-1)
    return jnp.sum(jax.nn.silu(gn.apply(v, x) * (1 + scale) + shift) ** 2)

  out.append(("gn_film_silu_fwdbwd_96_128", jax.jit(jax.grad(gn_film, (0, 1, 2))),
              (gv, x, ss), None))
  h = jax.random.normal(jax.random.key(3), (4, 24, 24, 256))
  attn = AttentionBlock(64)
  av = attn.init(jax.random.key(0), h)
  out.append(("attn_fwdbwd_24_256", jax.jit(jax.grad(lambda v, h: jnp.sum(attn.apply(v, h) ** 2),
                                                     (0, 1))), (av, h), None))
  return out


def _whole_train(size: str, batch: int, steps: int) -> tuple[list[float], dict]:
  """The Trainer's cDDPM train step (encoder + UNet fwd/bwd + Adam) on a synthetic batch.

  Timed by `benchmarks.train_step.measure` (compile, one warm-up step, `steps` timed steps).
  """
  from benchmarks import train_step as ts

  config = ts.build_config("cddpm", size, batch, "float32")
  m = ts.measure(config, 1, steps, warmup=1)
  return m["step_s_all"], {"compile_s": m["compile_s"], "gflop_per_step":
                           (m["flops_per_step"] or 0) / 1e9, "final_loss": m["final_loss"]}


def _whole_infer(size: str, slices: int):
  """Inference as in issue 13 (`benchmarks.evaluation.single_step_inference`): a function of no
  arguments for one call, and the first call's seconds (compilation included)."""
  import jax
  from benchmarks import evaluation as ev

  cddpm, segnet, image = ev.single_step_inference(size, slices)

  def run():
    return segnet.probability(image, cddpm.reconstruct(image, 1))

  t0 = time.perf_counter()
  jax.block_until_ready(run())
  return run, time.perf_counter() - t0


def worker(args) -> dict:
  groups = {g for g in args.ops.split(",") if g}
  res = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "ops": {}, "flops": {}, "extra": {}}
  ops = []
  for name in [s for s in args.shapes.split(",") if s] if groups & {"conv", "dw_formulations",
                                                                      "layout"} else []:
    for op, fn, a, f in _conv_ops(CONV_SHAPES[name], groups):
      ops.append((f"{name}/{op}", fn, a, f))
  if "other" in groups:
    ops += _other_ops()
  for name, fn, a, f in ops:
    res["ops"][name] = ab.time_calls(fn, a, args.iters)
    res["flops"][name] = f
  wholes = [w for w in args.whole.split(",") if w]
  batch = args.batch or {"paper": 4, "demo": 16}.get(args.size, 8)
  for w in wholes:
    if w == "train":
      name = f"train_{args.size}_b{batch}"
      res["ops"][name], res["extra"][name] = _whole_train(args.size, batch, args.steps)
    elif w == "infer":
      fn, first = _whole_infer(args.size, args.slices)
      name = f"infer_{args.size}_{args.slices}slices"
      res["extra"][name] = {"first_call_s": first}
      res["ops"][name] = ab.time_calls(fn, (), args.steps)
    else:
      raise SystemExit(f"unknown --whole {w!r}")
  res["load_after"] = list(os.getloadavg())
  return res


# ----------------------------------------------------------------------------- driver side


def variant_flags(name: str) -> str:
  if name not in VARIANTS:
    raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
  if name in PACKAGE_VARIANTS:
    from sadm_jax.utils import xla_flags
    flags = xla_flags.cpu_default_flags()
    if name == "package_all_heaps":
      flags = [*flags, f"--{xla_flags.HEAP_FLAG}={xla_flags.CPU_HEAP_BYTES}"]
    return " ".join(flags)
  return VARIANTS[name]


def run_worker(variant: str, argv: list[str]) -> dict:
  """One round of `variant` in a fresh process that runs exactly the variant's XLA flags (the
  package variants also with the package's other CPU settings: its train steps' heap option
  and glibc settings, `sadm_jax.utils.host_heap`)."""
  own = variant in PACKAGE_VARIANTS
  return ab.run_worker("benchmarks.cpu_ops", variant, argv,
                       env={"XLA_FLAGS": variant_flags(variant), "JAX_PLATFORMS": "cpu",
                            "SADM_XLA_CPU_DEFAULTS": "1" if own else "0",
                            "SADM_CPU_HEAP_REUSE": "1" if own else "0"})


def summarise(variants: list[str], results: dict[str, list[dict]]) -> dict:
  base = variants[0]
  table = {}
  names = list(results[base][0]["ops"])
  for op in names:
    row = {}
    for v in variants:
      times = [t for r in results[v] for t in r["ops"].get(op, [])]
      if not times:
        continue
      flops = results[v][0]["flops"].get(op)
      med = statistics.median(times)
      row[v] = {"median_s": med, "min_s": min(times), "n": len(times),
                "round_medians_s": [statistics.median(r["ops"][op]) for r in results[v]],
                "gflops_per_s": flops / med / 1e9 if flops else None}
    for v in row:
      row[v]["ratio_to_" + base] = row[v]["median_s"] / row[base]["median_s"]
    table[op] = row
  return table


def print_table(variants: list[str], table: dict) -> None:
  w = max(12, *(len(v) for v in variants))
  print(f"{'op':34s} " + " ".join(f"{v:>{w}s}" for v in variants)
        + f"   (median ms [GFLOP/s]; ratio to {variants[0]})")
  for op, row in table.items():
    cells = []
    for v in variants:
      c = row.get(v)
      if c is None:
        cells.append(f"{'—':>{w}s}")
        continue
      s = f"{c['median_s'] * 1e3:.1f}"
      if c["gflops_per_s"]:
        s += f" [{c['gflops_per_s']:.0f}]"
      cells.append(f"{s:>{w}s}")
    ratios = " ".join(f"{row[v]['ratio_to_' + variants[0]]:.2f}" for v in variants if v in row)
    print(f"{op:34s} " + " ".join(cells) + f"   {ratios}")


def main(argv=None) -> dict:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if args.worker:
    print(json.dumps(worker(args)))
    return {}
  variants = [v for v in args.variants.split(",") if v]
  for v in variants:
    variant_flags(v)  # fail early on a bad name
  load_before = list(os.getloadavg())
  results = {v: [] for v in variants}
  t_start = time.time()
  for r in range(args.rounds):
    order = variants[r % len(variants):] + variants[:r % len(variants)]
    for v in order:
      t0 = time.time()
      results[v].append(run_worker(v, argv))
      print(f"round {r + 1}/{args.rounds} {v}: {time.time() - t0:.0f} s, "
            f"load {os.getloadavg()[0]:.2f}", flush=True)
  table = summarise(variants, results)
  print(f"\nload average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
        f"{args.rounds} rounds × {len(variants)} variants, {time.time() - t_start:.0f} s")
  print_table(variants, table)
  entry = {
      "argv": argv, "variants": {v: variant_flags(v) for v in variants}, "table": table,
      "extra": {v: [r["extra"] for r in results[v]] for v in variants},
      "load_before": load_before, "load_after": list(os.getloadavg()),
      "worker_load_after": {v: [r["load_after"] for r in results[v]] for v in variants},
      "machine": {"cpu_count": os.cpu_count(), "processor": machine.cpu_model(),
                  "platform": platform.platform(), "python": platform.python_version(),
                  "jax": jax.__version__},
      "date": time.strftime("%Y-%m-%d %H:%M:%S"),
  }
  tag = args.tag or ("whole_" + args.whole.replace(",", "_") + "_" + args.size if args.whole
                     else "ops_" + args.ops.replace(",", "_"))
  saved = {}
  if os.path.isfile(args.out):
    with open(args.out) as f:
      saved = json.load(f)
  saved[tag] = entry
  from sadm_jax.utils.io import write_json
  write_json(args.out, saved)
  print("wrote", args.out, "entry", tag)
  return entry


if __name__ == "__main__":
  main()
