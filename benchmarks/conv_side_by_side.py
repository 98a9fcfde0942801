"""Benchmark: every convolution of our program against PyTorch's, shape by shape, in one process."""

from __future__ import annotations

# Usage (a virtualenv with this package's requirements *and* PyTorch, as benchmarks.side_by_side):
#   python -m benchmarks.conv_side_by_side --program infer --size paper [--slices 10]
#   python -m benchmarks.conv_side_by_side --program train --config cddpm --size paper
#
# Why: `benchmarks.side_by_side` gives the whole-program ratio; this says how much of it is the
# convolution library (XLA:CPU's own kernels here, oneDNN in PyTorch) and how much is the rest.
# The convolutions are read out of our compiled program's optimised HLO (`benchmarks.step_convs`:
# the same shapes, strides, padding and dimension numbers), the forward ones grouped by shape, and
# each shape timed on both sides, calls alternating round by round as `side_by_side.compare` does:
#   infer  the forward convolution: ours a lone jitted `lax.conv_general_dilated`, PyTorch
#          `F.conv2d` under `no_grad`, NCHW as the reference runs;
#   train  the layer's forward and backward: ours `jax.vjp` of it (the output, the input gradient
#          and the weight gradient in one program), PyTorch `conv2d` + `backward`. Every layer
#          computes both gradients (in the real step the first layer and frozen networks need
#          fewer), so the totals weigh the layers, not the step.
# Convolutions PyTorch's `conv2d` does not express directly (input dilation: the transposed
# convolutions; kernel dilation; grouped) are counted and left out of the totals. The totals
# weigh each shape by how often the program has it. Inputs are constants (0.1; kernels 0.01).

import argparse
import shlex
import sys

from benchmarks import side_by_side, step_convs, torch_reference, train_step


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__)
  train_step.add_step_args(ap, "demo")  # --batch 0: the reference preset's, as side_by_side
  ap.add_argument("--program", choices=("infer", "train"), default="infer",
                  help="infer: issue 13's inference programs; train: the --config train step")
  ap.add_argument("--slices", type=int, default=10, help="infer: slices per call")
  ap.add_argument("--rounds", type=int, default=5, help="timed rounds per shape (median ratio)")
  ap.add_argument("--warmup", type=int, default=1, help="untimed calls of each side per shape")
  ap.add_argument("--pause", type=float, default=0.1, help="seconds before each timed call")
  ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  ap.add_argument("--flush_denormal", type=int, choices=(0, 1), default=0,
                  help="1: torch.set_flush_denormal(True), as XLA:CPU computes")
  ap.add_argument("--top", type=int, default=15, help="shapes listed, most expensive first")
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)
  for name in ("slices", "rounds", "warmup", "threads"):
    if getattr(args, name) < 1:
      ap.error(f"--{name} {getattr(args, name)}: must be at least 1")
  if args.pause < 0 or args.top < 0 or args.batch < 0:
    ap.error("--pause, --top and --batch must not be negative")
  if not args.batch:  # the side-by-side batch (paper: 4), not the config's (paper: 32)
    args.batch = torch_reference.PRESETS[args.size]["batch"]
  return args


def group_forward(convs: list[dict]) -> list[dict]:
  """The forward convolutions grouped by (input, kernel, window, dimension labels): one dict per
  shape, with `count` (how often the program has it) and `ops` (its JAX op names)."""
  groups: dict[tuple, dict] = {}
  for c in convs:
    if c["role"] != "forward":
      continue
    key = (tuple(c["lhs_shape"]), tuple(c["rhs_shape"]), repr(c["window"]), c["dim_labels"],
           c["feature_group_count"], c["batch_group_count"])
    g = groups.setdefault(key, {**c, "count": 0, "ops": []})
    g["count"] += 1
    g["ops"].append(c["op_name"])
  return list(groups.values())


def torch_layout(conv: dict) -> dict | None:
  """PyTorch's view of `conv`: NCHW input and OIHW kernel shapes, stride, padding (symmetric ints,
  or F.pad's (left, right, top, bottom) when not), or None where `conv2d` cannot run it as is."""
  w = conv["window"]
  if (conv["feature_group_count"] != 1 or conv["batch_group_count"] != 1
      or set(w["lhs_dilation"]) != {1} or set(w["rhs_dilation"]) != {1}):
    return None
  lhs, rhs, _ = step_convs.dimension_numbers(conv["dim_labels"])
  size = lambda shape, dims, letters: tuple(shape[dims.index(ch)] for ch in letters)
  (top, bottom), (left, right) = w["padding"]
  if min(top, bottom, left, right) < 0:
    return None
  symmetric = top == bottom and left == right
  return {"input": size(conv["lhs_shape"], lhs, "NCHW"),
          "kernel": size(conv["rhs_shape"], rhs, "OIHW"), "stride": tuple(w["strides"]),
          "padding": (top, left) if symmetric else (0, 0),
          "pre_pad": None if symmetric else (left, right, top, bottom)}


def torch_fn(torch, layout: dict, backward: bool):
  """A zero-argument callable: PyTorch's convolution (and its backward) of `layout`."""
  import torch.nn.functional as F
  x = torch.full(layout["input"], 0.1, requires_grad=backward)
  k = torch.full(layout["kernel"], 0.01, requires_grad=backward)

  def forward():
    v = F.pad(x, layout["pre_pad"]) if layout["pre_pad"] else x
    return F.conv2d(v, k, stride=layout["stride"], padding=layout["padding"])

  if not backward:
    def call():
      with torch.no_grad():
        return float(forward()[0, 0, 0, 0])
    return call
  grad = torch.full(tuple(forward().shape), 0.001)

  def call_backward():
    x.grad = k.grad = None
    forward().backward(grad)
    return float(k.grad[0, 0, 0, 0])
  return call_backward


def our_fn(conv: dict, backward: bool):
  """A zero-argument callable: our lone jitted convolution (or its `jax.vjp`) of `conv`."""
  import jax
  import jax.numpy as jnp
  f = step_convs.rebuilt(conv)
  x, k = step_convs.operands(conv)
  if not backward:
    fn, args = jax.jit(f), (x, k)
  else:
    g = jnp.full(conv["out_shape"], 0.001, jnp.float32)

    def fwd_bwd(x, k, g):
      y, vjp = jax.vjp(f, x, k)
      return y, *vjp(g)
    fn, args = jax.jit(fwd_bwd), (x, k, g)
  return lambda: jax.block_until_ready(fn(*args))


def compare_shapes(torch, groups: list[dict], backward: bool, args) -> tuple[list, list]:
  """(compared shapes with their timings, shapes left out)."""
  rows, skipped = [], []
  for i, g in enumerate(groups):
    layout = torch_layout(g)
    if layout is None:
      skipped.append(g)
      continue
    r = side_by_side.compare(torch_fn(torch, layout, backward), our_fn(g, backward),
                             args.rounds, args.warmup, args.pause)
    rows.append({**g, "torch_layout": layout, **r})
    print(f"  shape {i + 1}/{len(groups)}: {g['lhs_shape']} x {g['rhs_shape']} ×{g['count']}: "
          f"ratio {r['ratio_median']:.2f}", flush=True)
  return rows, skipped


def totals(rows: list[dict]) -> dict:
  """Count-weighted seconds of each side and their ratio (reference s / our s)."""
  ref = sum(r["count"] * r["reference_median_s"] for r in rows)
  ours = sum(r["count"] * r["ours_median_s"] for r in rows)
  return {"convolutions": sum(r["count"] for r in rows), "shapes": len(rows),
          "reference_s": ref, "ours_s": ours, "ratio": ref / ours if ours else None}


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    torch = torch_reference.import_torch(args.threads, bool(args.flush_denormal),
                                         "benchmarks.conv_side_by_side")
  except torch_reference.Unavailable as e:
    print(e, file=sys.stderr)
    return 2
  import jax
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  backward = args.program == "train"
  programs = (step_convs.train_programs(args) if backward else step_convs.infer_programs(args))
  convs = []
  for _, compiled, _ in programs:
    convs += step_convs.parse_convolutions(compiled.as_text())
  groups = group_forward(convs)
  if not groups:
    print("benchmarks.conv_side_by_side: no float32 forward convolution in the program",
          file=sys.stderr)
    return 2
  what = "forward + backward per layer" if backward else "forward"
  print(f"{args.program} ({args.size}): {len(groups)} convolution shapes, {what}; PyTorch "
        f"{torch.__version__} ({args.threads} threads), JAX {jax.__version__}")
  rows, skipped = compare_shapes(torch, groups, backward, args)
  if not rows:
    print(f"benchmarks.conv_side_by_side: none of the {len(groups)} convolution shapes is a plain "
          "conv2d (grouped or dilated)", file=sys.stderr)
    return 2
  total = totals(rows)
  print(f"\n{'convs':>5s} {'reference ms':>12s} {'ours ms':>8s} {'ratio':>6s}   input x kernel "
        "(ratio = reference s / our s; ms per call, count-weighted)")
  for r in sorted(rows, key=lambda r: -r["count"] * r["ours_median_s"])[:args.top]:
    print(f"{r['count']:5d} {r['count'] * r['reference_median_s'] * 1e3:12.1f} "
          f"{r['count'] * r['ours_median_s'] * 1e3:8.1f} {r['ratio_median']:6.2f}   "
          f"{r['lhs_shape']} x {r['rhs_shape']}")
  print(f"all {total['convolutions']} convolutions ({total['shapes']} shapes): reference "
        f"{total['reference_s']:.3f} s, ours {total['ours_s']:.3f} s, ratio "
        f"{total['ratio']:.2f}; left out (not a plain conv2d): "
        f"{sum(g['count'] for g in skipped)}")
  given = sys.argv[1:] if argv is None else argv
  result = {"command": "python -m benchmarks.conv_side_by_side " + shlex.join(given),
            "program": args.program, "size": args.size, **side_by_side.run_fields(args, torch),
            "totals": total, "shapes": rows,
            "left_out": [{k: g[k] for k in ("lhs_shape", "rhs_shape", "window", "count", "ops")}
                         for g in skipped]}
  if backward:
    result["config"] = args.config
  else:
    result["slices"] = args.slices
  label = "infer" if not backward else args.config
  torch_reference.write_result(result, args.out, f"conv_side_by_side_{label}", args.size,
                               bool(args.flush_denormal))
  return 0


if __name__ == "__main__":
  sys.exit(main())
