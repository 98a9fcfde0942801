"""What a benchmark ran on and what it used: machine and versions, matmul peak, memory, CPU time.

Stdlib only at import (JAX is imported inside the functions that need it), so that scripts
which must set XLA_FLAGS or run without JAX can import it first.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time


def host_info() -> dict:
  """The machine a CPU benchmark ran on, for its JSON (stdlib only: no JAX needed)."""
  return {"cpus": os.cpu_count(), "platform": platform.platform(),
          "processor": platform.processor(), "python": platform.python_version()}


def cpu_model() -> str:
  """`lscpu`'s model name and number (Linux), e.g. 'Intel(R) Xeon(R) Processor (model 167)'."""
  name = number = ""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not name:
          name = value.strip()
        elif key.strip() == "model" and not number:
          number = value.strip()
  except OSError:
    return platform.processor() or platform.machine()
  return f"{name} (model {number})"


def cpu_entry() -> dict:
  """The load average, host and CPU model, for a CPU benchmark's JSON entry (stdlib only)."""
  return {"load_average": list(os.getloadavg()), "host": host_info(), "cpu_model": cpu_model()}


def machine_info() -> dict:
  """Backend, devices, versions, CPU count and XLA_FLAGS of this process, for a benchmark's JSON."""
  import jax
  import flax
  import optax
  return {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
          "device_kind": jax.devices()[0].device_kind, "visible_devices": len(jax.devices()),
          "cpu_count": os.cpu_count(), "machine": platform.machine(),
          "platform": platform.platform(), "python": platform.python_version(),
          "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def process_usage() -> dict:
  """This process's CPU seconds (user, system) and minor page faults so far."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  return {"user_s": r.ru_utime, "sys_s": r.ru_stime, "minor_faults": r.ru_minflt}


def peak_rss_gb() -> float:
  """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def memory_analysis(compiled) -> dict | None:
  """Argument / output / alias / temporary / code bytes of a compiled program (per device), and
  total_gb = argument + output − alias + temporaries (GB, 1e9 bytes); None if not reported."""
  from sadm_jax.utils import cost
  m = cost.compiled_cost(compiled)["memory"]
  if not m:
    return None
  out = {attr: m[key] for attr, key in cost.MEMORY_FIELDS if key in m}
  out["total_gb"] = (m.get("argument_bytes", 0) + m.get("output_bytes", 0)
                     - m.get("alias_bytes", 0) + m.get("temp_bytes", 0)) / 1e9
  return out


def device_peak_memory_gb(devices=None) -> float | None:
  """Largest `peak_bytes_in_use` so far over `devices` (GPU/TPU allocators; None on CPU)."""
  import jax
  peaks = []
  for d in devices or jax.devices():
    try:
      stats = d.memory_stats()
    except Exception:  # noqa: BLE001
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"])
  return max(peaks) / 1e9 if peaks else None


def matmul_peak(dtype: str, n: int, repeats: int = 5, inner: int = 0) -> dict:
  """Best FLOP/s of an N×N @ N×N jnp.dot on device 0 (2·N³ FLOPs per product).

  Each of `repeats` timings dispatches `inner` products back to back and waits for the last
  (0 = 1 on CPU, 10 on accelerators, where one synchronisation per product would add launch gaps).
  Operands are random normal (never zeros). A float32 dot runs at XLA's default precision
  (TF32 tensor cores on recent NVIDIA GPUs), as the models' float32 matmuls and convolutions do.
  """
  import jax
  import jax.numpy as jnp
  dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  dev = jax.devices()[0]
  inner = inner or (1 if dev.platform == "cpu" else 10)
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.device_put(jax.random.normal(k1, (n, n), dt), dev)
  b = jax.device_put(jax.random.normal(k2, (n, n), dt), dev)
  dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=dt))
  jax.block_until_ready(dot(a, b))
  runs = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    outs = [dot(a, b) for _ in range(inner)]
    jax.block_until_ready(outs)
    runs.append((time.perf_counter() - t0) / inner)
  flops = 2.0 * n ** 3
  return {"n": n, "dtype": dtype, "inner": inner, "best_s": min(runs),
          "median_s": statistics.median(runs), "peak_flops_per_s": flops / min(runs),
          "median_flops_per_s": flops / statistics.median(runs)}
