"""Every convolution of a compiled program, timed on its own: which ones its time is in.

    python -m benchmarks.step_convs --config cddpm --size demo [--top 25] [--out JSON]
    python -m benchmarks.step_convs --program infer --size paper [--slices 10]

`--program train` (default) compiles the Trainer's train step (as `benchmarks.train_step`);
`--program infer` the two inference programs of issue 13's side-by-side workload (the cDDPM's
encoder once and UNet at t = 499, then the SegUnet, on `--slices` slices:
`benchmarks.evaluation.single_step_inference`, as `benchmarks.cpu_ops --whole infer` times it).
It reads the convolutions out of each program's optimised HLO (operand shapes, window, dimension
labels, and the JAX op they came from), and runs each as a lone jitted
`lax.conv_general_dilated` with the same shapes and dimension numbers (median of `--iters` calls
after one untimed call; a kernel reversal is not reproduced, it does not change the work). On CPU
a `jax.profiler` trace cannot tell this: XLA:CPU runs a convolution asynchronously on its thread
pool and the trace marks only its launch. Each convolution is classed by its role: the forward
pass, the input gradient (backward pass, window = the kernel) or the weight gradient (backward
pass, window = the activation: XLA writes dL/dW as a convolution of the input with dL/dy over a
"batch" of input channels). Prints each program's time, the totals per role and the most
expensive convolutions; writes JSON. For XLA:CPU programs (on a GPU the convolutions are cuDNN
custom calls, which this does not read); 2-D float32 convolutions only.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import sys
import time

from benchmarks import ab, machine, train_step

_SHAPE = re.compile(r"%([\w.\-]+) = f32\[([\d,]*)\]")
_CONV = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = f32\[([\d,]*)\]\S* convolution\(%([\w.\-]+), "
                   r"%([\w.\-]+)\), window=\{([^}]*)\}, dim_labels=([0-9a-z]+_[0-9a-z]+->[0-9a-z]+)"
                   r"(?:, feature_group_count=(\d+))?(?:, batch_group_count=(\d+))?")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_LETTERS = {"b": "N", "f": "C", "i": "I", "o": "O", "0": "H", "1": "W"}


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  train_step.add_step_args(ap, "demo")
  ap.add_argument("--program", choices=("train", "infer"), default="train",
                  help="train: the --config train step; infer: issue 13's inference programs "
                       "(--config and --batch unused)")
  ap.add_argument("--slices", type=int, default=10, help="infer: slices per call")
  ap.add_argument("--iters", type=int, default=5, help="timed calls per convolution (median)")
  ap.add_argument("--top", type=int, default=20, help="convolutions listed, most expensive first")
  ap.add_argument("--out", default="", help="JSON path; default benchmarks/results/"
                  "step_convs_<config or infer>_<size>_<backend>.json")
  return ap.parse_args(argv)


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(s) for s in text.split(",") if s)


def parse_window(window: str) -> dict:
  """HLO `window={size=3x3 stride=2x2 pad=1_1x1_1 lhs_dilate=… rhs_dilate=…}` as lax arguments."""
  fields = dict(kv.split("=", 1) for kv in window.split())
  pair = lambda key: tuple(int(v) for v in fields.get(key, "").split("x") if v)
  size = pair("size")
  ones = (1,) * len(size)
  pad = ([tuple(int(v) for v in p.split("_")) for p in fields["pad"].split("x")]
         if "pad" in fields else [(0, 0)] * len(size))
  return {"size": size, "strides": pair("stride") or ones, "padding": pad,
          "lhs_dilation": pair("lhs_dilate") or ones, "rhs_dilation": pair("rhs_dilate") or ones}


def dimension_numbers(labels: str) -> tuple[str, str, str]:
  """HLO dim_labels (e.g. `b01f_01io->b01f`) as lax dimension-number strings (NHWC, HWIO, NHWC)."""
  lhs, rest = labels.split("_")
  rhs, out = rest.split("->")
  if any(len(part) != 4 or set(part) - set(_LETTERS) for part in (lhs, rhs, out)):
    raise SystemExit(f"step_convs: dim_labels {labels!r} is not a 2-D convolution's")
  return tuple("".join(_LETTERS[ch] for ch in part) for part in (lhs, rhs, out))


def _forward_name(op_name: str) -> str:
  """A backward-pass op name (`…/transpose(jvp(M))/…`) as its forward op's (`…/jvp(M)/…`)."""
  return re.sub(r"transpose\((jvp\([^()]*\))\)", r"\1", op_name)


def role(conv: dict, kernels: dict[str, tuple[int, ...]]) -> str:
  """'forward', 'input gradient' or 'weight gradient'.

  Backward-pass convolutions carry `transpose(` in their JAX op name, or none at all when XLA
  made them. A weight gradient's output has its forward convolution's kernel shape (`kernels`:
  forward op name -> sorted kernel shape; an input gradient's has the activation's). Without a
  forward match (XLA-made convolutions, e.g. 1×1 convs' weight gradients, whose forward passes
  XLA turned into dots; or nested names such as `jvp(transpose(jvp(…)))`): a weight gradient's
  output spans the kernel's few pixels while its window spans the activation, so its output has
  fewer pixels than its window.
  """
  if conv["op_name"] and "transpose(" not in conv["op_name"]:
    return "forward"
  kernel = kernels.get(_forward_name(conv["op_name"]))
  if kernel is not None:
    return "weight gradient" if tuple(sorted(conv["out_shape"])) == kernel else "input gradient"
  out_dims = dimension_numbers(conv["dim_labels"])[2]
  out_pixels = conv["out_shape"][out_dims.index("H")] * conv["out_shape"][out_dims.index("W")]
  window = conv["window"]["size"]
  return "weight gradient" if out_pixels < window[0] * window[1] else "input gradient"


def parse_convolutions(hlo: str) -> list[dict]:
  """The f32 convolutions of an optimised HLO module's text, with their operands' shapes."""
  shapes = {m.group(1): _ints(m.group(2)) for m in _SHAPE.finditer(hlo)}
  convs = []
  for line in hlo.splitlines():
    m = _CONV.match(line)
    if not m:
      continue
    name, out, lhs, rhs, window, labels, feature_groups, batch_groups = m.groups()
    missing = [o for o in (lhs, rhs) if o not in shapes]
    if missing:
      raise SystemExit(f"step_convs: convolution {name}: operand {missing[0]} is not float32 "
                       "or not defined in the module")
    op = _OP_NAME.search(line)
    convs.append({"name": name, "lhs_shape": shapes[lhs], "rhs_shape": shapes[rhs],
                  "out_shape": _ints(out), "window": parse_window(window), "dim_labels": labels,
                  "feature_group_count": int(feature_groups or 1),
                  "batch_group_count": int(batch_groups or 1),
                  "op_name": op.group(1) if op else ""})
  kernels = {c["op_name"]: tuple(sorted(c["rhs_shape"])) for c in convs
             if c["op_name"] and "transpose(" not in c["op_name"]}
  for c in convs:
    c["role"] = role(c, kernels)
  return convs


def rebuilt(conv: dict):
  """The convolution as a `lax.conv_general_dilated` function of (input, kernel)."""
  import jax
  w = conv["window"]
  return lambda x, k: jax.lax.conv_general_dilated(
      x, k, w["strides"], w["padding"], w["lhs_dilation"], w["rhs_dilation"],
      dimension_numbers=dimension_numbers(conv["dim_labels"]),
      feature_group_count=conv.get("feature_group_count", 1),
      batch_group_count=conv.get("batch_group_count", 1))


def flops(conv: dict) -> float:
  """`sadm_jax.utils.cost`'s count of the rebuilt convolution: 2 × output elements × window ×
  kernel input features (an input dilation's inserted zeros included, as XLA counts them)."""
  import jax
  from sadm_jax.utils import cost
  args = [jax.ShapeDtypeStruct(conv[k], "float32") for k in ("lhs_shape", "rhs_shape")]
  return cost.traced_matmul_flops(rebuilt(conv), *args)


def operands(conv: dict):
  """The constant (input, kernel) a rebuilt convolution is timed on: 0.1 and 0.01, float32."""
  import jax.numpy as jnp
  return (jnp.full(conv["lhs_shape"], 0.1, jnp.float32),
          jnp.full(conv["rhs_shape"], 0.01, jnp.float32))


def time_convolution(conv: dict, iters: int) -> float:
  """Median seconds of the convolution as a lone jitted `lax.conv_general_dilated`."""
  import jax
  fn = jax.jit(rebuilt(conv))
  x, k = operands(conv)
  shape = tuple(jax.eval_shape(fn, x, k).shape)
  if shape != tuple(conv["out_shape"]):
    raise RuntimeError(f"{conv['name']}: rebuilt with shape {shape}, HLO says {conv['out_shape']}")
  return statistics.median(ab.time_calls(fn, (x, k), iters))


def _totals(convs: list[dict]) -> dict:
  s, f = sum(c["seconds"] for c in convs), sum(c["flops"] for c in convs)
  return {"count": len(convs), "seconds": s, "gflop": f / 1e9,
          "gflop_per_s": f / s / 1e9 if s else None}


def summarise(convs: list[dict]) -> dict:
  """Per role: count, seconds, GFLOP and GFLOP/s; plus the total."""
  out = {r: _totals([c for c in convs if c["role"] == r])
         for r in ("forward", "input gradient", "weight gradient")}
  out["all"] = _totals(convs)
  return out


def train_programs(args) -> list[tuple[str, object, float]]:
  """[("train step", compiled step, s/step: the last of 3 steps)] for `--config` at `--size`."""
  import jax
  config = train_step.build_config(args.config, args.size, args.batch, "float32")
  trainer, state, batches, _ = train_step.setup(config, 1)
  compiled = trainer.train_step.lower(state, batches[0], trainer.train_key,
                                      trainer.frozen).compile()
  for i in range(3):  # the step's state is donated: each step takes the previous one's
    t0 = time.perf_counter()
    state, metrics = compiled(state, batches[i % 2], trainer.train_key, trainer.frozen)
    jax.block_until_ready((state, metrics))
    step_s = time.perf_counter() - t0
  return [("train step", compiled, step_s)]


def infer_programs(args) -> list[tuple[str, object, float]]:
  """The cDDPM reconstruction and SegUnet programs of one issue-13 inference call, compiled, each
  with its median seconds over 3 calls (after one untimed call)."""
  import jax.numpy as jnp
  from benchmarks import evaluation
  cddpm, segnet, image = evaluation.single_step_inference(args.size, args.slices)
  image = jnp.asarray(image)
  recon_args = (cddpm.variables, image, jnp.asarray(1, jnp.uint32))
  recon = cddpm.program.lower(*recon_args).compile()
  _, per_t = recon(*recon_args)
  seg_args = (segnet.variables, image, per_t)
  seg = segnet.program.lower(*seg_args).compile()
  return [(name, fn, statistics.median(ab.time_calls(fn, call, 3)))
          for name, fn, call in (("cddpm reconstruction", recon, recon_args),
                                 ("segunet", seg, seg_args))]


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.iters < 1 or args.top < 0 or args.slices < 1:
    raise SystemExit(f"step_convs: --iters and --slices must be ≥ 1 and --top ≥ 0 (got "
                     f"{args.iters}, {args.slices}, {args.top})")
  import jax
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  infer = args.program == "infer"
  programs = infer_programs(args) if infer else train_programs(args)
  convs, per_program = [], {}
  for name, compiled, seconds in programs:
    found = parse_convolutions(compiled.as_text())
    if not found:
      raise SystemExit(f"step_convs: no float32 convolution found in the {name}'s optimised HLO")
    for c in found:
      c["program"] = name
      c["seconds"] = time_convolution(c, args.iters)
      c["flops"] = flops(c)
    per_program[name] = {"program_s": seconds, "table": summarise(found)}
    convs += found
  table = summarise(convs)
  what = (f"inference ({args.size}, {args.slices} slices)" if infer
          else f"{args.config} ({args.size}) train step")
  how = "each program the median of 3 calls" if infer else "the last of 3 steps"
  print(f"{what}, {jax.default_backend()}: {how}; its convolutions one by one")
  for name, p in per_program.items():
    conv_s = p["table"]["all"]["seconds"]
    print(f"  {name:22s} {p['program_s']:8.3f} s; {p['table']['all']['count']:4d} convolutions "
          f"{conv_s:8.3f} s ({100 * conv_s / p['program_s']:.0f} %)")
  print(f"{'role':18s} {'count':>5s} {'ms':>8s} {'GFLOP':>7s} {'GFLOP/s':>8s}")
  for r, t in table.items():
    print(f"{r:18s} {t['count']:5d} {t['seconds'] * 1e3:8.1f} {t['gflop']:7.2f} "
          f"{t['gflop_per_s'] or 0:8.1f}")
  print(f"\nmost expensive {args.top}: ms, GFLOP/s, role, input × kernel -> output, window, JAX op")
  for c in sorted(convs, key=lambda c: -c["seconds"])[:args.top]:
    print(f"{c['seconds'] * 1e3:7.2f} {c['flops'] / c['seconds'] / 1e9:6.1f}  {c['role']:15s} "
          f"{c['lhs_shape']} x {c['rhs_shape']} -> {c['out_shape']} {c['window']['size']} "
          f"{c['op_name'][-60:]}")
  given = sys.argv[1:] if argv is None else argv
  result = {"command": "python -m benchmarks.step_convs " + shlex.join(given),
            "machine": machine.machine_info(), "program": args.program, "size": args.size,
            "iters": args.iters, "programs": per_program, "table": table, "convolutions": convs}
  if infer:
    result["slices"] = args.slices
  else:
    result["config"] = args.config
    result["step_s"] = per_program["train step"]["program_s"]
  label = "infer" if infer else args.config
  out = args.out or os.path.join("benchmarks", "results",
                                 f"step_convs_{label}_{args.size}_{jax.default_backend()}.json")
  ab.write(out, result)
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
