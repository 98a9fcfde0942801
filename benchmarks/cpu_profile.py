"""Where a train step's CPU time goes on XLA:CPU, by `perf` samples of steady-state steps, in categories.

    python -m benchmarks.cpu_profile --config cddpm --size demo [--seconds 8] [--out JSON]
    python -m benchmarks.cpu_profile --config cddpm --size paper --batch 4 --seconds 30

A worker process compiles the Trainer's train step and runs it in a loop; once it is past
compilation and two steps, `perf record -g` samples it (the `cpu-clock` event at a fixed period,
so every sample weighs the same) for `--seconds`, and the samples' own (self) symbols, template
arguments stripped, are put in categories: JIT code (XLA's generated fusion kernels, and
oneDNN's JIT GEMM kernels, which `perf` cannot tell apart), Eigen's convolution patch packing,
XLA's thread pool, other Eigen / oneDNN tensor and contraction code, glibc malloc, page faults
(everything under the kernel's page-fault entry), other kernel time and the rest. Unlike a
`jax.profiler` trace, which on CPU marks an op on the thread that launched it, samples count
every core's work, so the shares add up to the step's CPU time (user + system). Needs Linux
`perf` allowed to sample a child process including its kernel time (root, CAP_PERFMON or
`kernel.perf_event_paranoid` <= 1; a profile without kernel samples is refused). Prints the
table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks import machine, train_step

# (category, kernel sample?, DSO pattern, symbol pattern), first match wins; self samples of
# each symbol, matched without its template arguments.
CATEGORIES = (
    ("JIT code: XLA's generated kernels (fusions), oneDNN's GEMM kernels", False, r"^\[JIT\]",
     r""),
    ("convolution patch packing (Eigen)", False, r"", r"gemm_pack_colmajor_block"),
    ("thread pool and scheduling", False, r"",
     r"ThreadPoolTempl|RunQueue|Steal|EigenEnvironment|xla::cpu::Worker|ThunkExecutor|"
     r"AsyncValue|CountDown"),
    ("other Eigen / oneDNN tensor and contraction code", False, r"",
     r"^Eigen::|dnnl|gemm|gebp"),
    ("glibc malloc", False, r"libc", r"malloc|free|unlink_chunk|memalign|consolidate"),
    ("other kernel time", True, r"", r""),
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
# samples, DSO, "k" for a kernel sample, symbol
_LINE = re.compile(r"^\s*[0-9.]+%\s+([0-9]+)\s+(.+?)\s+\[([.k])\]\s+(.*)$")


def bare(symbol: str) -> str:
  """`symbol` without template arguments: 'a::B<c<d>, e>::f' -> 'a::B::f'."""
  out, depth = [], 0
  for ch in symbol:
    if ch == "<":
      depth += 1
    elif ch == ">" and depth:
      depth -= 1
    elif not depth:
      out.append(ch)
  return "".join(out)


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  train_step.add_step_args(ap, "demo")
  ap.add_argument("--seconds", type=float, default=8.0, help="sampling time after warm-up")
  ap.add_argument("--frequency", type=int, default=499, help="samples per second per CPU")
  ap.add_argument("--timeout", type=float, default=1800.0,
                  help="seconds to wait for the worker's first steps (compilation included)")
  ap.add_argument("--out", default="")
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # internal
  return ap.parse_args(argv)


def categorise(self_report: str, fault_share: float) -> dict[str, float]:
  """Percent of samples per category from `perf report --no-children --sort dso,sym -n` lines
  (sample counts, so that the many symbols too small to show a percentage count too);
  `fault_share`: the inclusive percent under the kernel's page-fault entry (moved out of the
  kernel's self samples into its own category)."""
  counts = {name: 0 for name, *_ in CATEGORIES}
  counts[OTHER] = 0
  for line in self_report.splitlines():
    m = _LINE.match(line)
    if not m:
      continue
    samples, dso, kernel, sym = int(m.group(1)), m.group(2), m.group(3) == "k", bare(m.group(4))
    for name, is_kernel, dso_re, sym_re in CATEGORIES:
      if is_kernel == kernel and re.search(dso_re, dso) and re.search(sym_re, sym):
        counts[name] += samples
        break
    else:
      counts[OTHER] += samples
  total = sum(counts.values()) or 1
  shares = {name: 100.0 * c / total for name, c in counts.items()}
  kernel_time = "other kernel time"
  taken = min(fault_share, shares[kernel_time])
  shares[kernel_time] -= taken
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
  config = train_step.build_config(config_name, size, batch_size, "float32")
  trainer, state, batches, _ = train_step.setup(config, 1)
  args = (batches[0], trainer.train_key, trainer.frozen)
  step = trainer.train_step.lower(state, *args).compile()
  steps, t0, u0 = 0, None, None
  while True:
    state, metrics = step(state, *args)
    jax.block_until_ready(metrics)
    steps += 1
    if steps == 2:
      t0, u0 = time.perf_counter(), machine.process_usage()
      print("READY", flush=True)
    elif steps > 2:  # per step since READY: wall, user and system CPU seconds, minor faults
      n, u = steps - 2, machine.process_usage()
      print(f"STEP_S {(time.perf_counter() - t0) / n:.4f} {(u['user_s'] - u0['user_s']) / n:.4f} "
            f"{(u['sys_s'] - u0['sys_s']) / n:.4f} {(u['minor_faults'] - u0['minor_faults']) / n:.0f}",
            flush=True)


def profile(args) -> dict:
  """Starts the worker, samples it with perf once it is READY, stops it; the categorised shares."""
  if shutil.which("perf") is None:
    raise SystemExit("cpu_profile: Linux `perf` is not installed")
  with tempfile.TemporaryDirectory(prefix="sadm_perf_") as tmp:
    data, log = os.path.join(tmp, "perf.data"), os.path.join(tmp, "worker.log")
    with open(log, "w") as err:
      proc = subprocess.Popen([sys.executable, "-m", "benchmarks.cpu_profile", "--worker",
                               "--config", args.config, "--size", args.size,
                               "--batch", str(args.batch)],
                              stdout=subprocess.PIPE, stderr=err, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:  # drains the worker's output, so that it never blocks on a full pipe
      for line in proc.stdout:
        lines.append(line)
        if line.startswith("READY"):
          ready.set()
      ready.set()  # the worker ended

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
      if not ready.wait(args.timeout) or proc.poll() is not None:
        with open(log) as f:
          tail = f.read()[-2000:]
        raise SystemExit(f"cpu_profile: the worker was not stepping after {args.timeout:g} s "
                         f"(exit {proc.poll()}):\n{tail}")
      period_ns = str(int(1e9 / args.frequency))
      rec = subprocess.run(["perf", "record", "-e", "cpu-clock", "-c", period_ns, "-g",
                            "-p", str(proc.pid), "-o", data, "--", "sleep", str(args.seconds)],
                           capture_output=True, text=True, check=False, timeout=args.timeout)
      if rec.returncode or not os.path.exists(data):
        raise SystemExit(f"cpu_profile: perf record failed: {rec.stderr.strip()[-500:]}")
    finally:
      proc.kill()
      proc.wait()
      reader.join(timeout=10)
    steps = [[float(v) for v in x.split()[1:]] for x in lines if x.startswith("STEP_S")]
    report = ["perf", "report", "-i", data, "--stdio", "-g", "none", "--percent-limit", "0"]
    selfs = subprocess.run(report + ["--no-children", "--sort", "dso,sym", "-n"],
                           capture_output=True, text=True, check=True).stdout
    children = subprocess.run(report + ["--children", "--sort", "sym"], capture_output=True,
                              text=True, check=True).stdout
  if not any((m := _LINE.match(line)) and m.group(3) == "k" for line in selfs.splitlines()):
    raise SystemExit("cpu_profile: perf recorded no kernel samples (kernel.perf_event_paranoid "
                     "> 1?), so the shares would leave out system time")
  entry = inclusive(children)
  shares = categorise(selfs, entry["page faults"])
  return {"config": args.config, "size": args.size, "batch": args.batch, "seconds": args.seconds,
          "frequency": args.frequency,
          "per_step_while_sampled": (dict(zip(("wall_s", "cpu_user_s", "cpu_sys_s",
                                               "minor_faults"), steps[-1])) if steps else None),
          "shares_percent": shares, "inclusive_percent_at_least": entry}


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.worker:
    worker(args.config, args.size, args.batch)
    return {}
  from benchmarks import ab
  result = {**profile(args), "command": "python -m benchmarks.cpu_profile " + shlex.join(
      argv if argv is not None else sys.argv[1:]), "machine": machine.machine_info()}
  per = result["per_step_while_sampled"] or {}
  print(f"{args.config} ({args.size}) train step while sampled: {per.get('wall_s', float('nan')):.3f}"
        f" s/step, CPU user {per.get('cpu_user_s', float('nan')):.3f} s + system "
        f"{per.get('cpu_sys_s', float('nan')):.3f} s, {per.get('minor_faults', float('nan')):.0f} "
        "minor faults per step; share of the sampled CPU time:")
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
