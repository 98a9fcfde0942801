"""Cheap op-level profile: trace a few calls with jax.profiler and sum device time per op and kernel.

Used by `python -m benchmarks.suite --profile=N`: no TensorBoard or xprof needed, the trace is read
back with `jax.profiler.ProfileData`. On a GPU it reports, per line of the device plane ('XLA Ops',
'XLA Modules', the CUDA streams), the total time and the most expensive events, and splits the
'XLA Ops' time into categories (convolution forward / input-gradient / weight-gradient, GEMM,
fusions, copies and transposes, collectives, other).
"""

from __future__ import annotations

import collections
import glob
import os
import shutil
import tempfile
import time

CATEGORIES = (  # (category, substrings of the op's name or HLO text), first match wins
    ("conv_weight_grad", ("convbackwardfilter", "wgrad")),
    ("conv_input_grad", ("convbackwardinput", "dgrad")),
    ("conv_forward", ("convforward", "cudnn-conv", "convolution", "fprop")),
    ("gemm", ("cublas", "gemm", "dot", "matmul", "nvjet", "cutlass")),
    ("collective", ("all-reduce", "all-gather", "reduce-scatter", "collective", "nccl")),
    ("copy_transpose", ("transpose", "copy", "memcpy", "memset", "bitcast")),
    ("reduction_fusion", ("reduce", "input_fusion", "reduction")),
    ("fusion", ("fusion", "loop", "triton")),
)


def categorise(text: str) -> str:
  t = text.lower()
  for name, keys in CATEGORIES:
    if any(k in t for k in keys):
      return name
  return "other"


def _stats(event) -> dict:
  try:
    return {str(k): v for k, v in event.stats}
  except Exception:  # noqa: BLE001
    return {}


def summarise(path: str, top: int = 25) -> dict:
  """Per device plane and line: total µs, event count, top events; 'XLA Ops' by category."""
  from jax.profiler import ProfileData
  data = ProfileData.from_file(path)
  out = {}
  for plane in data.planes:
    if not (plane.name.startswith("/device:") or plane.name == "/host:CPU"):
      continue
    lines = {}
    for line in plane.lines:
      per_name = collections.defaultdict(lambda: [0.0, 0])
      cats = collections.defaultdict(float)
      sample = None
      for ev in line.events:
        dur = float(ev.duration_ns) / 1e3
        per_name[ev.name][0] += dur
        per_name[ev.name][1] += 1
        if plane.name.startswith("/device:") or plane.name == "/host:CPU":
          st = _stats(ev)
          if sample is None:
            sample = {k: str(v)[:200] for k, v in st.items()}
          cats[categorise(ev.name + " " + str(st.get("long_name", "")) + " "
                          + str(st.get("hlo_category", "")))] += dur
      total = sum(v[0] for v in per_name.values())
      if not per_name or total <= 0:
        continue
      ranked = sorted(per_name.items(), key=lambda kv: -kv[1][0])[:top]
      lines[line.name] = {
          "total_us": total, "events": sum(v[1] for v in per_name.values()),
          "top": [{"name": k[:160], "us": v[0], "count": v[1], "share": v[0] / total}
                  for k, v in ranked],
          "categories_us": dict(sorted(cats.items(), key=lambda kv: -kv[1])) or None,
          "sample_stats": sample}
    if lines:
      out[plane.name] = lines
  return out


def trace(fn, calls: int, top: int = 25, keep_dir: str = "") -> dict:
  """Runs `fn` (which must block until its work is done) `calls` times under the profiler."""
  import jax
  tmp = keep_dir or tempfile.mkdtemp(prefix="sadm_profile_")
  t0 = time.perf_counter()
  with jax.profiler.trace(tmp):
    for _ in range(calls):
      fn()
  wall = time.perf_counter() - t0
  files = sorted(glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True))
  try:
    summary = summarise(files[-1], top) if files else {}
  except Exception as e:  # noqa: BLE001 — a profile is optional, never fail the benchmark
    summary = {"error": f"{type(e).__name__}: {e}"}
  finally:
    if not keep_dir:
      shutil.rmtree(tmp, ignore_errors=True)
  return {"calls": calls, "wall_s": wall, "planes": summary}


def print_summary(name: str, prof: dict, top: int = 12) -> None:
  """Every device line's time per call; categories and top ops of 'XLA Ops' (top 4 elsewhere)."""
  calls = prof["calls"]
  if "error" in prof["planes"]:
    print(f"[profile {name}] failed: {prof['planes']['error']}")
    return
  device_planes = [p for p in prof["planes"] if p.startswith("/device:")]
  for plane in device_planes or list(prof["planes"]):
    for line_name, line in prof["planes"][plane].items():
      print(f"[profile {name}] {plane} / {line_name}: {line['total_us'] / calls / 1e3:.2f} ms "
            f"per call ({prof['wall_s'] / calls * 1e3:.2f} ms wall), {line['events'] // calls} "
            f"events per call")
      if line.get("categories_us"):
        tot = line["total_us"]
        print("   categories: " + ", ".join(f"{k} {100 * v / tot:.1f}%"
                                          for k, v in line["categories_us"].items()))
      for ev in line["top"][:top]:
        print(f"   {ev['share'] * 100:5.1f}%  {ev['us'] / calls / 1e3:8.3f} ms  "
              f"x{ev['count'] // calls:<4d} {ev['name'][:110]}")
