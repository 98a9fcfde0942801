"""The benchmark suite's report: its table of rows, the machine it ran on, the JSON record."""

from __future__ import annotations

import os
import sys

from benchmarks import machine


def fmt(v, spec: str, scale: float = 1.0) -> str:
  """`v × scale` formatted with `spec` ('9.2f'), or '-' right-aligned to the same width."""
  if v is None:
    return "-".rjust(int(spec.split(".")[0] or 0))
  return format(v * scale, spec)


def table(rows: list[dict]) -> str:
  """Fixed-width table of every row (train: per step; eval: per volume; data: slices/s)."""
  head = (f"{'what':<12}{'dtype':>9}{'dev':>4}{'batch':>6}{'compile s':>10}{'ms':>9}"
          f"{'ms pipe':>9}{'items/s':>9}{'TFLOP':>8}{'TFLOP/s':>9}{'MFU %':>7}{'mem GB':>8}"
          f"{'peak GB':>8}")
  lines = [head]
  for r in rows:
    if r["what"].startswith("data"):
      lines.append(f"{r['what']:<12}{'-':>9}{'-':>4}{r['batch']:>6}{'-':>10}"
                   f"{1e3 * r['seconds'] / r['batches']:>9.1f}{'-':>9}{r['slices_per_s']:>9.1f}"
                   f"   (workers {r['workers']}, intensity augmentation)")
      continue
    train = r["what"].endswith("_train")
    sec = r["step_s_median"] if train else r["median_s"]
    flops = r["flops_matmul_jaxpr"] or r.get("flops_per_step")
    items = r["slices_per_s"] if train else r["volumes_per_s"]
    mem = r["program_memory"]
    mem = [mem] if isinstance(mem, dict) or mem is None else mem
    mem_gb = max([m["total_gb"] for m in mem if m and "total_gb" in m], default=None)
    peak_gb = r.get("device_peak_gb_so_far") or r.get("peak_rss_gb_so_far")
    lines.append(
        f"{r['what']:<12}{r['dtype']:>9}{r.get('devices', 1):>4}"
        f"{r.get('global_batch', r.get('slices_per_batch')):>6}{fmt(r['compile_s'], '10.1f')}"
        f"{1e3 * sec:>9.2f}{fmt(r.get('pipelined_step_s'), '9.2f', 1e3)}{items:>9.2f}"
        f"{fmt(flops, '8.3f', 1e-12)}{fmt(flops / sec if flops else None, '9.3f', 1e-12)}"
        f"{fmt(r['mfu'], '7.1f', 100)}{fmt(mem_gb, '8.2f')}{fmt(peak_gb, '8.2f')}")
  return "\n".join(lines)


def environment() -> dict:
  """The machine, jax/jaxlib versions, default matmul precision and devices of this process."""
  import jax
  info = machine.machine_info()
  try:
    import jaxlib
    info["jaxlib"] = jaxlib.__version__
  except Exception:  # noqa: BLE001
    pass
  info["default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
  try:
    info["environment"] = jax.print_environment_info(return_string=True)
  except Exception:  # noqa: BLE001
    pass
  info["devices"] = [str(d) for d in jax.devices()]
  return info


def record(args, argv, peaks_info, load_before, rows, precision, errors) -> dict:
  """The JSON record of a suite run: its command, flags, machine, peaks, rows and errors."""
  return {
      "benchmark": "suite", "config": args.config, "what": args.what, "dtypes": args.dtype,
      "scaling": args.scaling, "norm_act": getattr(args, "norm_act_taken", args.norm_act),
      "command": "python -m benchmarks.suite " + " ".join(sys.argv[1:] if argv is None else argv),
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "machine": environment(),
      "matmul_peak": peaks_info, "loadavg_before": list(load_before),
      "loadavg_after": list(os.getloadavg()), "rows": rows, "eval_precision": precision,
      "errors": errors,
      "notes": ("FLOPs and MFU: conv + dot FLOPs of the step's / volume's jaxpr (flops_matmul_jaxpr; "
                "scan bodies × length). XLA's cost analysis (flops_per_step, mfu_hlo) agrees with "
                "it within a few % on CPU but leaves out cuDNN convolutions on GPU, and counts the "
                "lax.map over the 3 evaluation timesteps once (flops_hlo_loop_body_once). Peak: "
                "the N×N matmul of the row's dtype measured at the start (× devices on "
                "accelerators; fake CPU devices share one host). step_s_* wait for every step; "
                "pipelined_step_s dispatches steps back to back as the training loop does. eval "
                "compile_s = first call − median (None when eval_precision compiled it first). "
                "float32 matmuls and convolutions run at XLA's default precision (TF32 on NVIDIA "
                "tensor cores), the float32 peak likewise."),
  }
