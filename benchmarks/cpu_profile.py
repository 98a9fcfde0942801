"""Where a train step's CPU time goes on XLA:CPU, by `perf` samples of steady-state steps, in categories.

    python -m benchmarks.cpu_profile --config cddpm --size demo [--seconds 8] [--out JSON]
    python -m benchmarks.cpu_profile --config cddpm --size paper --batch 4 --seconds 30

A worker process compiles the Trainer's train step and runs it in a loop; once it is past
compilation and warm-up, `perf record -g` samples it for `--seconds`, and the samples' own
(self) symbols are put in categories: XLA's generated kernels (fusions; JIT code), Eigen's
convolution patch packing, other Eigen / oneDNN contraction code (convolutions and dots),
page faults (everything under the kernel's page-fault entry), other kernel time, glibc malloc,
XLA's thread pool and the rest. Unlike a `jax.profiler` trace, which on CPU marks an op on the
thread that launched it, samples count every core's work, so the shares add up to the step's
CPU time (user + system). Needs Linux `perf` with permission to sample a child process
(`kernel.perf_event_paranoid` <= 2). Prints the table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

# (category, DSO pattern, symbol pattern), first match wins; self samples of each symbol.
CATEGORIES = (
    ("JIT code: XLA's generated kernels (fusions), oneDNN's GEMM kernels", r"^\[JIT\]", r""),
    ("convolution patch packing (Eigen)", r"", r"gemm_pack_colmajor_block"),
    ("thread pool and scheduling", r"libjax|libtsl|libxla",
     r"ThreadPool|RunQueue|Steal|EigenEnvironment|Worker::|ThunkExecutor|AsyncValue|CountDown"),
    ("contractions: convolutions and dots (Eigen, oneDNN)", r"libjax|libxla",
     r"Eigen::internal|TensorContraction|gebp|dnnl|gemm"),
    ("glibc malloc", r"libc", r"malloc|free|unlink_chunk|memalign|consolidate"),
    ("other kernel time", r"kernel", r""),
)
PAGE_FAULTS = "page faults (kernel, inclusive)"
OTHER = "other"
# name -> symbol pattern of an entry point whose inclusive share `inclusive` reports
ENTRY_POINTS = {
    "XLA's fusion kernels (Kernel::Launch)": r"^xla::cpu::Kernel::Launch$",
    "convolutions (ConvolutionThunk, Eigen)": r"ConvolutionThunk::HandleEigen2DConvolution",
    "dots (DotThunk)": r"DotThunk::Execute",
    "page faults": r"^asm_exc_page_fault$",
}
_CHILDREN_LINE = re.compile(r"^\s*([0-9.]+)%\s+[0-9.]+%\s+\[[.k]\]\s+(.*?)\s*$")
_LINE = re.compile(r"^\s*[0-9.]+%\s+([0-9]+)\s+(.+?)\s+\[[.k]\]\s+(.*)$")  # samples, DSO, symbol


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", choices=("cddpm", "spark", "sadm"), default="cddpm")
  ap.add_argument("--size", choices=("tiny", "demo", "paper"), default="demo")
  ap.add_argument("--batch", type=int, default=0, help="global batch; 0 = the config's")
  ap.add_argument("--seconds", type=float, default=8.0, help="sampling time after warm-up")
  ap.add_argument("--frequency", type=int, default=499, help="samples per second per CPU")
  ap.add_argument("--out", default="")
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # internal
  return ap.parse_args(argv)


def categorise(self_report: str, fault_share: float) -> dict[str, float]:
  """Percent of samples per category from `perf report --no-children --sort dso,sym -n` lines
  (sample counts, so that the many symbols too small to show a percentage count too);
  `fault_share`: the inclusive percent under the kernel's page-fault entry (moved out of the
  kernel's self samples into its own category)."""
  counts = {name: 0 for name, _, _ in CATEGORIES}
  counts[OTHER] = 0
  for line in self_report.splitlines():
    m = _LINE.match(line)
    if not m:
      continue
    samples, dso, sym = int(m.group(1)), m.group(2), m.group(3)
    for name, dso_re, sym_re in CATEGORIES:
      if re.search(dso_re, dso) and re.search(sym_re, sym):
        counts[name] += samples
        break
    else:
      counts[OTHER] += samples
  total = sum(counts.values()) or 1
  shares = {name: 100.0 * c / total for name, c in counts.items()}
  kernel = "other kernel time"
  taken = min(fault_share, shares[kernel])
  shares[kernel] -= taken
  shares[PAGE_FAULTS] = taken
  return shares


def inclusive(children_report: str) -> dict[str, float]:
  """Per ENTRY_POINTS name: the largest inclusive percent of a symbol matching its pattern in a
  `perf report --children --sort sym` output (a lower bound: stacks through JIT code do not
  always unwind to their caller)."""
  out = {name: 0.0 for name in ENTRY_POINTS}
  for line in children_report.splitlines():
    m = _CHILDREN_LINE.match(line)
    if not m:
      continue
    for name, pattern in ENTRY_POINTS.items():
      if re.search(pattern, m.group(2)):
        out[name] = max(out[name], float(m.group(1)))
  return out


def worker(config_name: str, size: str, batch_size: int) -> None:
  """Compiles the train step, says READY after two steps, then steps until killed."""
  import jax
  import numpy as np
  from benchmarks import train_step as ts
  from sadm_jax.train import loop
  from sadm_jax.train import sharding as shard_lib
  config = ts.build_config(config_name, size, batch_size, "float32")
  task = ts.build_task(config)
  trainer = loop.Trainer(config, task, shard_lib.make_mesh(config, devices=jax.devices()[:1]))
  state = trainer.init_state()
  batch = trainer.device_batch(ts.synthetic_batch(task.batch_keys, int(config.train.batch_size),
                                                  ts.slice_size(config), np.random.default_rng(0)))
  step = trainer.train_step.lower(state, batch, trainer.train_key, trainer.frozen).compile()
  steps, t0 = 0, None
  while True:
    state, metrics = step(state, batch, trainer.train_key, trainer.frozen)
    jax.block_until_ready(metrics)
    steps += 1
    if steps == 2:
      t0 = time.perf_counter()
      print("READY", flush=True)
    elif steps > 2:
      print(f"STEP_S {(time.perf_counter() - t0) / (steps - 2):.4f}", flush=True)


def profile(args) -> dict:
  if shutil.which("perf") is None:
    raise SystemExit("cpu_profile: Linux `perf` is not installed")
  tmp = tempfile.mkdtemp(prefix="sadm_perf_")
  data = os.path.join(tmp, "perf.data")
  proc = subprocess.Popen([sys.executable, "-m", "benchmarks.cpu_profile", "--worker",
                           "--config", args.config, "--size", args.size,
                           "--batch", str(args.batch)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    for line in proc.stdout:
      if line.startswith("READY"):
        break
    else:
      raise SystemExit(f"cpu_profile: the worker exited ({proc.wait()}) before its steps")
    rec = subprocess.run(["perf", "record", "-F", str(args.frequency), "-g", "-p", str(proc.pid),
                          "-o", data, "--", "sleep", str(args.seconds)],
                         capture_output=True, text=True, check=False)
    if rec.returncode or not os.path.exists(data):
      raise SystemExit(f"cpu_profile: perf record failed: {rec.stderr.strip()[-500:]}")
    step_s = None
    proc.terminate()
    for line in proc.stdout:
      if line.startswith("STEP_S"):
        step_s = float(line.split()[1])
  finally:
    if proc.poll() is None:
      proc.kill()
    proc.wait()
  report = ["perf", "report", "-i", data, "--stdio", "-g", "none", "--percent-limit", "0"]
  selfs = subprocess.run(report + ["--no-children", "--sort", "dso,sym", "-n"], capture_output=True,
                         text=True, check=True).stdout
  children = subprocess.run(report + ["--children", "--sort", "sym"], capture_output=True,
                            text=True, check=True).stdout
  shutil.rmtree(tmp, ignore_errors=True)
  entry = inclusive(children)
  shares = categorise(selfs, entry["page faults"])
  return {"config": args.config, "size": args.size, "batch": args.batch, "seconds": args.seconds,
          "frequency": args.frequency, "step_s": step_s, "shares_percent": shares,
          "inclusive_percent_at_least": entry}


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.worker:
    worker(args.config, args.size, args.batch)
    return {}
  from benchmarks import ab
  from benchmarks import train_step as ts
  result = {**profile(args), "command": "python -m benchmarks.cpu_profile " + " ".join(
      argv if argv is not None else sys.argv[1:]), "machine": ts.machine_info()}
  print(f"{args.config} ({args.size}) train step, {result['step_s'] or float('nan'):.3f} s/step "
        f"while sampled; share of the sampled CPU time:")
  for name, pct in sorted(result["shares_percent"].items(), key=lambda kv: -kv[1]):
    print(f"  {pct:6.1f} %  {name}")
  print("inclusive shares of entry points (lower bounds: stacks through JIT code do not always "
        "unwind):")
  for name, pct in result["inclusive_percent_at_least"].items():
    print(f"  {pct:6.1f} %  {name}")
  ab.write(args.out, result)
  return result


if __name__ == "__main__":
  main()
