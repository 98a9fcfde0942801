"""Benchmark: the PyTorch reference and this package in one process, calls alternating (issue 13's ratio)."""

from __future__ import annotations

# Usage (repository root, in a virtualenv with this package's requirements *and* PyTorch; the
# project itself never needs PyTorch):
#   python -m venv /tmp/sbs && /tmp/sbs/bin/pip install -r requirements.txt torch
#   /tmp/sbs/bin/python -m benchmarks.side_by_side --size demo --programs train,infer,sadm
#
# Why: `benchmarks.torch_reference` and this package's benchmarks run in separate processes, one
# after the other; on a VM whose speed drifts by 20-40 % within minutes the ratio of two such
# runs says as much about the drift as about the code. Here both sides are built in one process
# (the reference's networks and programs from `benchmarks.torch_reference`; ours from the
# package's public functions, as `benchmarks.train_step` and `benchmarks.evaluation` build them)
# and timed call by call: every round runs one call of each side, the order alternating from round
# to round, after a pause that lets the other side's thread pool go idle. The ratio is taken per
# round (reference seconds / our seconds: above 1, we are faster) and its median reported, so a
# drift slower than one round cancels out.
#
# Programs, equal networks and batches on both sides (`torch_reference.PRESETS`, checked against
# the configs by tests/benchmarks/test_torch_reference_bench.py):
#   train  cDDPM train step (encoder + UNet fwd/bwd + Adam); ours: the Trainer's compiled step
#   sadm   SADM-DRAEM train step (frozen cDDPM, SegUnet fwd/bwd + Adam)
#   infer  encoder once + UNet at t = 499 + SegUnet on --slices slices
#          (ours: `benchmarks.evaluation.single_step_inference`)
# PyTorch runs on --threads threads (torch.set_num_threads); XLA:CPU uses every core it sees.
# Writes benchmarks/results/side_by_side_<size>[_ftz]_cpu.json unless --out is given.

import argparse
import os
import platform
import shlex
import statistics
import sys
import time

PROGRAMS = ("train", "sadm", "infer")
_OUR_CONFIG = {"train": "cddpm", "sadm": "sadm"}


def parse_args(argv=None) -> argparse.Namespace:
  from benchmarks.torch_reference import PRESETS
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--size", choices=tuple(PRESETS), default="demo")
  ap.add_argument("--programs", default="train,infer",
                  help=f"comma-separated, of {', '.join(PROGRAMS)}")
  ap.add_argument("--slices", type=int, default=10, help="infer: slices per call")
  ap.add_argument("--rounds", type=int, default=7,
                  help="timed rounds, one call of each side per round (median of the ratios)")
  ap.add_argument("--warmup", type=int, default=3,
                  help="untimed calls of each side first, at least one (PyTorch's paper train "
                       "step settles after ~3)")
  ap.add_argument("--pause", type=float, default=0.5,
                  help="seconds before each timed call (the other side's threads go idle)")
  ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  ap.add_argument("--flush_denormal", type=int, choices=(0, 1), default=0,
                  help="1: torch.set_flush_denormal(True), the arithmetic XLA:CPU always uses; "
                       "0 (default): PyTorch's default, as the reference runs")
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)
  for name in ("slices", "rounds", "warmup", "threads"):
    if getattr(args, name) < 1:
      ap.error(f"--{name} {getattr(args, name)}: must be at least 1")
  if args.pause < 0:
    ap.error(f"--pause {args.pause}: must not be negative")
  args.program_list = [p.strip() for p in args.programs.split(",") if p.strip()]
  bad = [p for p in args.program_list if p not in PROGRAMS]
  if bad or not args.program_list:
    ap.error(f"--programs: unknown {', '.join(bad) or '(none given)'}; "
             f"choose from {', '.join(PROGRAMS)}")
  return args


def our_programs(size: str, batch: int, slices: int, names: list[str]) -> dict:
  """name -> zero-argument callable running one call of this package's program to completion."""
  import jax
  from benchmarks import evaluation as ev
  from benchmarks import train_step as ts

  fns = {}
  for name in names:
    if name in _OUR_CONFIG:
      config = ts.build_config(_OUR_CONFIG[name], size, batch, "float32")
      trainer, state, batches, _ = ts.setup(config, 1)
      step = trainer.train_step.lower(state, batches[0], trainer.train_key,
                                      trainer.frozen).compile()
      holder = {"state": state, "i": 0}

      def train_call(step=step, trainer=trainer, batches=batches, holder=holder):
        holder["state"], metrics = step(holder["state"], batches[holder["i"] % 2],
                                        trainer.train_key, trainer.frozen)
        holder["i"] += 1
        return float(jax.block_until_ready(metrics)["loss"])

      fns[name] = train_call
    else:
      cddpm, segnet, image = ev.single_step_inference(size, slices)

      def infer_call(cddpm=cddpm, segnet=segnet, image=image):
        return float(jax.block_until_ready(
            segnet.probability(image, cddpm.reconstruct(image, 1))).mean())

      fns[name] = infer_call
  return fns


def _timed(fn, pause: float) -> tuple[float, float]:
  """(wall s, user + system CPU s) of one call of `fn`, after `pause` seconds of sleep."""
  from benchmarks.machine import process_usage
  time.sleep(pause)
  u0 = process_usage()
  t0 = time.perf_counter()
  fn()
  wall = time.perf_counter() - t0
  u1 = process_usage()
  return wall, (u1["user_s"] - u0["user_s"]) + (u1["sys_s"] - u0["sys_s"])


def compare(torch_fn, our_fn, rounds: int, warmup: int, pause: float) -> dict:
  """Warm-up calls of each side, then `rounds` rounds of one timed call each, the order
  alternating (reference first in even rounds); per-round ratio = reference s / our s."""
  for _ in range(warmup):
    torch_fn()
    our_fn()
  ref, ours, ref_cpu, our_cpu = [], [], [], []
  for r in range(rounds):
    order = ((torch_fn, ref, ref_cpu), (our_fn, ours, our_cpu))
    for fn, walls, cpus in (order if r % 2 == 0 else order[::-1]):
      wall, cpu = _timed(fn, pause)
      walls.append(wall)
      cpus.append(cpu)
  ratios = [a / b for a, b in zip(ref, ours)]
  return {"reference_s": ref, "ours_s": ours, "ratios": ratios,
          "reference_median_s": statistics.median(ref), "ours_median_s": statistics.median(ours),
          "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
          "ratio_max": max(ratios), "reference_cpu_s_per_call": statistics.median(ref_cpu),
          "ours_cpu_s_per_call": statistics.median(our_cpu)}


def run_fields(args: argparse.Namespace, torch) -> dict:
  """How a comparison ran, for its JSON: rounds, warm-up, pause, PyTorch's threads and denormal
  mode, both frameworks' versions, the XLA flags and the machine."""
  import jax
  from benchmarks import machine
  return {"rounds": args.rounds, "warmup": args.warmup, "pause_s": args.pause,
          "threads": args.threads, "flush_denormal": bool(args.flush_denormal),
          "torch": torch.__version__, "jax": jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "python": platform.python_version(),
          "machine": machine.cpu_model(), "cpu_count": os.cpu_count()}


def main(argv=None) -> int:
  args = parse_args(argv)
  from benchmarks import torch_reference as tr
  try:
    torch, preset, (encoder, unet, segnet), params = tr.setup_reference(
        args.size, args.threads, bool(args.flush_denormal), "benchmarks.side_by_side")
  except tr.Unavailable as e:
    print(e, file=sys.stderr)
    return 2
  import jax

  torch_fns = tr.programs(encoder, unet, segnet, preset["batch"], args.slices, preset["size"])
  our_fns = our_programs(args.size, preset["batch"], args.slices, args.program_list)
  rows = {}
  print(f"PyTorch {torch.__version__} ({args.threads} threads, flush_denormal "
        f"{args.flush_denormal}) and JAX {jax.__version__} in one process, size {args.size}, "
        f"batch {preset['batch']}, {args.slices} inference slices, {args.rounds} rounds")
  print(f"{'program':8s} {'reference s':>12s} {'ours s':>8s} {'ratio':>6s} {'min':>6s} "
        f"{'max':>6s} {'ref CPU s':>10s} {'our CPU s':>10s}   (ratio = reference s / our s, "
        "per round)")
  for p in args.program_list:
    rows[p] = r = compare(torch_fns[p], our_fns[p], args.rounds, args.warmup, args.pause)
    print(f"{p:8s} {r['reference_median_s']:12.3f} {r['ours_median_s']:8.3f} "
          f"{r['ratio_median']:6.2f} {r['ratio_min']:6.2f} {r['ratio_max']:6.2f} "
          f"{r['reference_cpu_s_per_call']:10.2f} {r['ours_cpu_s_per_call']:10.2f}", flush=True)
  result = {"command": "python -m benchmarks.side_by_side " + shlex.join(
      sys.argv[1:] if argv is None else argv),
            "size": args.size, "batch": preset["batch"], "slices": args.slices,
            **run_fields(args, torch), "params": params, "programs": rows,
            "load_after": list(os.getloadavg())}
  tr.write_result(result, args.out, "side_by_side", args.size, bool(args.flush_denormal))
  return 0


if __name__ == "__main__":
  sys.exit(main())
