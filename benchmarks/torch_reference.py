"""Benchmark: the PyTorch reference's networks and steps on CPU (issue 13's side-by-side ratio)."""

from __future__ import annotations

# Usage (repository root, in a virtualenv that has PyTorch; the project itself never needs it):
#   python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
#   /tmp/torchenv/bin/python -m benchmarks.torch_reference --size paper --programs train,infer,sadm
# then the same programs of this package (benchmarks.cpu_ops --whole, benchmarks.train_step).
#
# What it builds (benchmarks/torch_reference_nets.py): the reference's three networks written
# out in PyTorch with the reference's layers and order of operations (docs/method.md §3
# describes them): the OpenAI-style diffusion UNet (scale-shift ResBlocks, residual up/down
# blocks, QKV attention split before the heads, GroupNorm, conditioning vector concatenated to
# the time embedding), the timm-layout
# ResNet-50 encoder (BatchNorm, stochastic depth), and the DAE SegUnet (reflection padding,
# weight-standardised convolutions, Swish then GroupNorm, transposed-conv up path, siamese down
# path). At the paper size the parameter counts must equal the package's pinned ones
# (tests/models), or the script stops: the comparison is between equal networks.
#
# Programs (float32, torch.set_num_threads(--threads), median of --steps after --warmup):
#   train  cDDPM step: encoder + UNet fwd/bwd + Adam, pred-x0 L1 at random t (Gaussian noise).
#   infer  encoder once + UNet at t = 499 + SegUnet probability on --slices slices (no grad).
#   sadm   SADM step: frozen encoder + UNet at random t (no grad), SegUnet fwd/bwd (BCE) + Adam.
# Host-side work of the reference's steps (simplex noise with numba, DRAEM anomalies with imgaug)
# is not included; the package's steps generate simplex noise inside the step. In `sadm` the
# frozen encoder and UNet run once, in eval mode; the reference runs them in train mode and its
# encoder twice in DRAEM mode (once on the clean input, unused), so it would cost more, not less.
# Per program the JSON also has the CPU time and minor page faults per timed call (getrusage,
# via benchmarks.machine.process_usage);
# --profile adds one call under torch.profiler (its convolutions' share of the self CPU time).
# Writes benchmarks/results/torch_reference_<size>[_ftz]_cpu.json unless --out is given.

import argparse
import os
import platform
import shlex
import statistics
import sys
import time

from benchmarks.machine import cpu_model

# Network sizes of the package's configurations (checked against configs/ by
# tests/benchmarks/test_torch_reference_bench.py): UNet (model_channels, channel_mult,
# num_res_blocks, num_head_channels, GroupNorm groups), encoder (stage sizes, stem width,
# cond_dim), SegUnet width exponent, slice side in pixels, and the batch of the train programs.
PRESETS = {
    "paper": dict(unet=(128, (1, 2, 2), 3, 64, 32), encoder=((3, 4, 6, 3), 64, 512), segnet_wf=6,
                  size=96, batch=4),
    "demo": dict(unet=(16, (1, 2, 2), 1, 16, 8), encoder=((1, 1, 1, 1), 16, 64), segnet_wf=3,
                 size=64, batch=16),
    "tiny": dict(unet=(16, (1, 2), 1, 16, 8), encoder=((1, 1, 1, 1), 8, 32), segnet_wf=3,
                 size=64, batch=8),
}
# Parameter counts the package pins at the paper configuration (tests/models).
PAPER_PARAMS = {"unet": 44_068_481, "encoder": 24_550_848, "segnet": 16_736_705}
TIMESTEPS = 1000


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--size", choices=tuple(PRESETS), default="paper")
  ap.add_argument("--programs", default="train,infer,sadm",
                  help="comma-separated: train, infer, sadm")
  ap.add_argument("--batch", type=int, default=0, help="train/sadm batch; 0 = the preset's")
  ap.add_argument("--slices", type=int, default=10, help="infer: slices per call")
  ap.add_argument("--steps", type=int, default=3, help="timed calls per program (median reported)")
  ap.add_argument("--warmup", type=int, default=3,
                  help="untimed calls first, at least one (PyTorch's paper train step "
                       "settles after ~3)")
  ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  ap.add_argument("--flush_denormal", type=int, choices=(0, 1), default=0,
                  help="1: torch.set_flush_denormal(True), the arithmetic XLA:CPU always uses; "
                       "0 (default): PyTorch's default, as the reference runs")
  ap.add_argument("--profile", action="store_true",
                  help="one more call per program under torch.profiler: its convolutions' share")
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)
  for name in ("batch", "slices", "steps", "warmup", "threads"):
    if getattr(args, name) < (0 if name == "batch" else 1):
      ap.error(f"--{name} {getattr(args, name)}: must be at least {0 if name == 'batch' else 1}")
  return args


def profile_call(fn) -> dict:
  """One call of `fn` under torch.profiler: wall s; self CPU s of its convolutions, of all ops."""
  from torch.profiler import ProfilerActivity, profile
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
  events = prof.key_averages()
  conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key) / 1e6
  return {"wall_s": wall, "conv_self_s": conv,
          "all_self_s": sum(e.self_cpu_time_total for e in events) / 1e6,
          "top": sorted(((e.key, e.self_cpu_time_total / 1e6, e.count) for e in events),
                        key=lambda r: -r[1])[:12]}


def count(module) -> int:
  return sum(p.numel() for p in module.parameters())


class Unavailable(Exception):
  """The reference cannot be built in this Python (no PyTorch, or networks unequal to the
  package's); the message is the one line to print."""


def write_result(result: dict, out: str, name: str, size: str, flush_denormal: bool) -> str:
  """Writes `result` as JSON to `out`, or to benchmarks/results/<name>_<size>[_ftz]_cpu.json."""
  from sadm_jax.utils import io
  out = out or os.path.join("benchmarks", "results",
                            f"{name}_{size}{'_ftz' if flush_denormal else ''}_cpu.json")
  io.write_json(out, result)
  print(f"wrote {out}")
  return out


def import_torch(threads: int, flush_denormal: bool, caller: str):
  """`torch`, set up as the comparisons run it: `threads` intra-op threads, denormals flushed or
  not, seed 0. Raises `Unavailable` (its message names `caller`) without PyTorch."""
  try:
    import torch
  except ImportError:
    raise Unavailable(f"{caller}: PyTorch is not installed in this Python ({sys.executable}); "
                      "see the usage lines at the top of the script") from None
  torch.set_num_threads(threads)
  torch.set_flush_denormal(flush_denormal)
  torch.manual_seed(0)
  return torch


def setup_reference(size: str, threads: int, flush_denormal: bool, caller: str):
  """PyTorch set up as the comparisons run it (`import_torch`) and the reference's networks at
  `size`: (torch, preset, (encoder, unet, segnet), parameter counts). Raises `Unavailable`."""
  torch = import_torch(threads, flush_denormal, caller)
  from benchmarks.torch_reference_nets import build_networks
  preset = dict(PRESETS[size])
  encoder, unet, segnet = build_networks(preset)
  params = {"unet": count(unet), "encoder": count(encoder), "segnet": count(segnet)}
  if size == "paper" and params != PAPER_PARAMS:
    raise Unavailable(f"{caller}: parameter counts {params} differ from the package's "
                      f"{PAPER_PARAMS}: the networks are not equal")
  return torch, preset, (encoder, unet, segnet), params


def programs(encoder, unet, segnet, batch: int, slices: int, size: int):
  """name -> zero-argument callable running one call of that program."""
  import torch
  import torch.nn.functional as F

  betas = torch.linspace(1e-4, 0.02, TIMESTEPS, dtype=torch.float64)
  abar = torch.cumprod(1 - betas, 0).float()
  gen = torch.Generator().manual_seed(0)

  def q_sample(x0, t):
    a = abar[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=gen)

  x_train = torch.rand(batch, 1, size, size, generator=gen)
  cddpm_opt = torch.optim.Adam(list(encoder.parameters()) + list(unet.parameters()), lr=1e-4)
  seg_opt = torch.optim.Adam(segnet.parameters(), lr=5e-5)
  mask = (torch.rand(batch, 1, size, size, generator=gen) > 0.9).float()

  def train():
    encoder.train(), unet.train()
    t = torch.randint(0, TIMESTEPS, (batch,), generator=gen)
    pred = unet(q_sample(x_train, t), t, encoder(x_train))
    loss = F.l1_loss(pred, x_train)
    cddpm_opt.zero_grad(set_to_none=True)
    loss.backward()
    cddpm_opt.step()
    return loss.item()

  def sadm():
    encoder.eval(), unet.eval(), segnet.train()
    t = torch.randint(0, TIMESTEPS, (batch,), generator=gen)
    with torch.no_grad():
      reco = unet(q_sample(x_train, t), t, encoder(x_train))
    loss = F.binary_cross_entropy_with_logits(segnet(reco, x_train), mask)
    seg_opt.zero_grad(set_to_none=True)
    loss.backward()
    seg_opt.step()
    return loss.item()

  x_infer = torch.rand(slices, 1, size, size, generator=gen)

  def infer():
    encoder.eval(), unet.eval(), segnet.eval()
    with torch.inference_mode():
      t = torch.full((slices,), 499)
      reco = unet(q_sample(x_infer, t), t, encoder(x_infer))
      return float(torch.sigmoid(segnet(reco, x_infer)).mean())

  return {"train": train, "infer": infer, "sadm": sadm}


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    torch, preset, (encoder, unet, segnet), params = setup_reference(
        args.size, args.threads, bool(args.flush_denormal), "benchmarks.torch_reference")
  except Unavailable as e:
    print(e, file=sys.stderr)
    return 2
  from benchmarks.machine import process_usage  # stdlib only at import: no JAX needed

  batch = args.batch or preset["batch"]
  fns = programs(encoder, unet, segnet, batch, args.slices, preset["size"])
  wanted = [p for p in args.programs.split(",") if p]
  for p in wanted:
    if p not in fns:
      print(f"benchmarks.torch_reference: unknown program {p!r} in --programs; choose from "
            f"{', '.join(fns)}", file=sys.stderr)
      return 2
  rows = {}
  for p in wanted:
    t0 = time.perf_counter()
    fns[p]()
    first = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
      fns[p]()
    times = []
    u0 = process_usage()
    for _ in range(args.steps):
      t0 = time.perf_counter()
      value = fns[p]()
      times.append(time.perf_counter() - t0)
    use = {k: (v - u0[k]) / args.steps for k, v in process_usage().items()}
    rows[p] = {"median_s": statistics.median(times), "min_s": min(times), "all_s": times,
               "first_call_s": first, "last_value": value,
               "cpu_user_s_per_call": use["user_s"], "cpu_sys_s_per_call": use["sys_s"],
               "minor_faults_per_call": use["minor_faults"]}
    if args.profile:
      rows[p]["profile"] = profile_call(fns[p])
  result = {"command": "python -m benchmarks.torch_reference " + shlex.join(
      sys.argv[1:] if argv is None else argv),
            "size": args.size, "batch": batch, "slices": args.slices, "threads": args.threads,
            "flush_denormal": bool(args.flush_denormal), "params": params,
            "torch": torch.__version__, "python": platform.python_version(),
            "machine": cpu_model(), "cpu_count": os.cpu_count(), "programs": rows,
            "load_after": list(os.getloadavg())}
  print(f"PyTorch {torch.__version__}, {args.threads} threads, flush_denormal "
        f"{args.flush_denormal}, size {args.size}, "
        f"batch {batch}, {args.slices} inference slices; parameters {params}")
  print(f"{'program':8s} {'median s':>9s} {'min s':>8s} {'first s':>8s} {'user s':>7s} "
        f"{'sys s':>6s} {'faults':>8s}  (CPU and minor faults per timed call)")
  for p, r in rows.items():
    print(f"{p:8s} {r['median_s']:9.3f} {r['min_s']:8.3f} {r['first_call_s']:8.3f} "
          f"{r['cpu_user_s_per_call']:7.2f} {r['cpu_sys_s_per_call']:6.2f} "
          f"{r['minor_faults_per_call']:8.0f}")
    if "profile" in r:
      q = r["profile"]
      print(f"         profiled call: {q['wall_s']:.3f} s, convolutions {q['conv_self_s']:.3f} s "
            f"of {q['all_self_s']:.3f} s self CPU time")
  write_result(result, args.out, "torch_reference", args.size, bool(args.flush_denormal))
  return 0


if __name__ == "__main__":
  sys.exit(main())
