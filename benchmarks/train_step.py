"""Benchmark: one train step (cDDPM, SparK or SADM) — compile time, s/step, slices/s, memory, FLOPs, MFU."""

from __future__ import annotations

# Usage (repository root):
#   python -m benchmarks.train_step --config cddpm --size tiny --batch 8 --steps 10
#   python -m benchmarks.train_step --config cddpm --size tiny --batch 8 --fake_devices 8 \
#       --scaling 1,2,4,8
#   python -m benchmarks.train_step --config cddpm --size paper --batch 32 --dtype bfloat16  # GPU
# Synthetic batches ({'image': U[0, 1] of [B, H, W, 1]}); no data set needed. Writes
# benchmarks/results/train_step_<config>_<size>_<backend>[_scaling].json unless --out is given.

import argparse
import os
import statistics
import sys
import time

from benchmarks.machine import (device_peak_memory_gb, machine_info, matmul_peak,
                                memory_analysis, peak_rss_gb, process_usage)


def add_step_args(ap: argparse.ArgumentParser, size: str) -> None:
  """--config, --size (default `size`) and --batch: which train step a benchmark builds."""
  ap.add_argument("--config", choices=("cddpm", "spark", "sadm"), default="cddpm")
  ap.add_argument("--size", choices=("tiny", "demo", "paper"), default=size,
                  help="tiny (tests), demo (configs/demo.py's networks and grid) or paper")
  ap.add_argument("--batch", type=int, default=0, help="global batch; 0 = the config's")


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__)
  add_step_args(ap, "tiny")
  ap.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
  ap.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
  ap.add_argument("--devices", type=int, default=1, help="use the first N visible devices")
  ap.add_argument("--fake_devices", type=int, default=0,
                  help="N > 0: set XLA_FLAGS=--xla_force_host_platform_device_count=N first")
  ap.add_argument("--scaling", default="",
                  help="comma-separated device counts at the same global batch, e.g. 1,2,4,8")
  ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                  help="model compute dtype, also the dtype of the matmul peak")
  ap.add_argument("--matmul_size", type=int, default=0,
                  help="N of the N×N peak matmul; 0 = 2048 on CPU, 8192 on accelerators")
  ap.add_argument("--noise_iterations", type=int, default=10)
  ap.add_argument("--out", default="")
  return ap.parse_args(argv)


def set_fake_devices(n: int) -> None:
  """Must run before jax is imported."""
  if "jax" in sys.modules:
    raise RuntimeError("--fake_devices must be applied before jax is imported")
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])


def build_config(name: str, size: str, batch: int, dtype: str):
  """Resolved config of `name` ('cddpm' | 'spark' | 'sadm'), paper, demo or tiny, for a synthetic run.

  For 'sadm' (configs/sadm_draem.py) the frozen cDDPM has the config's own model section.
  """
  from configs import cddpm as cddpm_config, demo, sadm_draem, spark_pretrain
  from sadm_jax import config as config_lib
  if size == "demo":  # the demo job's networks, grid and batch for the stage `name`
    c = demo.get_config()
    c.stage = name
    c.sadm.mode = "draem"
  else:
    module = {"cddpm": cddpm_config, "spark": spark_pretrain, "sadm": sadm_draem}[name]
    c = module.get_config("tiny" if size == "tiny" else None)
  if batch:
    c.train.batch_size = batch
  c.model.dtype = dtype
  c.train.tensorboard = False
  return config_lib.resolve(c)


def build_task(config):
  """The stage's task without data (random weights; SADM: a random frozen cDDPM)."""
  from sadm_jax.train import cddpm, sadm, spark
  builder = {"sadm": sadm.sadm_task, "cddpm": cddpm.cddpm_task, "spark": spark.spark_task}
  return builder[config.stage](config, data=False)


def slice_size(config) -> int:
  p = config.data.preprocess
  return -(-p.crop_size[0] // p.downsample)


def time_noise(config, batch: int, iterations: int) -> dict | None:
  """Median ms of the config's diffusion noise for the whole batch alone (cDDPM, SADM), jitted."""
  if config.stage not in ("cddpm", "sadm"):
    return None
  import jax
  from sadm_jax.train import cddpm
  res = slice_size(config)
  shape = (batch, res, res, 1)
  sample = cddpm.noise_fn(config)
  draw = jax.jit(lambda k: sample(k, shape))
  jax.block_until_ready(draw(jax.random.key(0)))
  runs = []
  for i in range(iterations):
    key = jax.random.key(i + 1)
    t0 = time.perf_counter()
    jax.block_until_ready(draw(key))
    runs.append(time.perf_counter() - t0)
  return {"kind": config.diffusion.noise, "shared": bool(config.diffusion.shared_noise),
          "octaves": int(config.diffusion.octaves), "shape": list(shape),
          "median_ms": 1e3 * statistics.median(runs), "min_ms": 1e3 * min(runs)}


def synthetic_batch(keys, batch_size: int, res: int, rng) -> dict:
  """A host batch for `keys`: 'image' U[0, 1] and 'seg' a random 0/1 square per slice, [B, H, W, 1]."""
  import numpy as np
  out = {}
  for k in keys:
    if k == "image":
      out[k] = rng.uniform(0, 1, (batch_size, res, res, 1)).astype(np.float32)
    elif k == "seg":
      seg = np.zeros((batch_size, res, res, 1), np.float32)
      for i in range(batch_size):
        y, x = rng.integers(0, res // 2, 2)
        seg[i, y:y + res // 4, x:x + res // 4] = 1.0
      out[k] = seg
    else:
      raise ValueError(f"no synthetic data for batch key {k!r}")
  return out


def setup(config, n_devices: int):
  """The Trainer on the first `n_devices` devices, its initial state, two synthetic device
  batches and the seconds the init program took: `(trainer, state, batches, init_s)`."""
  import jax
  import numpy as np
  from sadm_jax.train import loop
  from sadm_jax.train import sharding as shard_lib
  devices = jax.devices()
  if n_devices > len(devices):
    raise SystemExit(f"asked for {n_devices} devices but {len(devices)} are visible "
                     f"(on CPU pass --fake_devices {n_devices})")
  mesh = shard_lib.make_mesh(config, devices=devices[:n_devices])
  batch_size = int(config.train.batch_size)
  if batch_size % n_devices:
    raise SystemExit(f"global batch {batch_size} is not divisible by {n_devices} devices")
  task = build_task(config)
  trainer = loop.Trainer(config, task, mesh)
  t0 = time.perf_counter()
  state = jax.block_until_ready(trainer.init_state())
  init_s = time.perf_counter() - t0
  rng = np.random.default_rng(0)
  batches = [trainer.device_batch(synthetic_batch(task.batch_keys, batch_size,
                                                  slice_size(config), rng))
             for _ in range(2)]
  return trainer, state, batches, init_s


def measure(config, n_devices: int, steps: int, warmup: int, pipelined_steps: int = 0,
            profile_steps: int = 0) -> dict:
  """Compiles and times the Trainer's train step on the first `n_devices` devices.

  `step_s_*` time each step to completion (dispatch + run + block); with `pipelined_steps` > 0
  the step is also timed as the training loop runs it: that many steps dispatched back to back,
  one wait at the end (`pipelined_step_s`). `profile_steps` > 0 then traces that many steps
  with `benchmarks.profile_ops` (per-op device time, in `profile`).
  """
  import jax
  import numpy as np
  from sadm_jax.utils import cost

  if steps < 1:
    raise ValueError(f"steps={steps}: time at least one step")
  devices = jax.devices()
  trainer, state, batches, init_s = setup(config, n_devices)
  batch_size = int(config.train.batch_size)
  res = slice_size(config)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  key = trainer.train_key
  t0 = time.perf_counter()
  lowered = trainer.train_step.lower(state, batches[0], key, trainer.frozen)
  lower_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  flops = cost.compiled_cost(compiled)["flops"]  # per device (the SPMD-partitioned module)

  runs = []
  metrics = None
  usage = None
  for i in range(warmup + steps):
    if i == warmup:
      usage = process_usage()
    t0 = time.perf_counter()
    state, metrics = compiled(state, batches[i % 2], key, trainer.frozen)
    jax.block_until_ready((state, metrics))
    if i >= warmup:
      runs.append(time.perf_counter() - t0)
  usage = {k: (v - usage[k]) / steps for k, v in process_usage().items()}  # per timed step
  pipelined = None
  if pipelined_steps:
    t0 = time.perf_counter()
    for i in range(pipelined_steps):
      state, metrics = compiled(state, batches[i % 2], key, trainer.frozen)
    jax.block_until_ready((state, metrics))
    pipelined = (time.perf_counter() - t0) / pipelined_steps
  profile = None
  if profile_steps:
    from benchmarks import profile_ops
    holder = {"state": state}

    def one_step():
      holder["state"], m = compiled(holder["state"], batches[0], key, trainer.frozen)
      jax.block_until_ready((holder["state"], m))

    profile = profile_ops.trace(one_step, profile_steps)
    state = holder["state"]
  loss = float(metrics["loss"])
  step_s = statistics.median(runs)
  total_flops = flops * n_devices if flops is not None else None
  return {"devices": n_devices, "global_batch": batch_size, "slice": [res, res],
          "params": n_params, "init_s": init_s, "lower_s": lower_s, "compile_s": compile_s,
          "steps": steps, "warmup": warmup, "step_s_median": step_s, "step_s_min": min(runs),
          "step_s_max": max(runs), "step_s_all": runs, "slices_per_s": batch_size / step_s,
          "pipelined_steps": pipelined_steps, "pipelined_step_s": pipelined,
          "cpu_user_s_per_step": usage["user_s"], "cpu_sys_s_per_step": usage["sys_s"],
          "minor_faults_per_step": usage["minor_faults"],
          "flops_per_step": total_flops, "flops_per_slice": (total_flops / batch_size
                                                            if total_flops else None),
          "flops_per_step_unoptimised_hlo": cost.compiled_cost(lowered)["flops"],
          "achieved_flops_per_s": total_flops / step_s if total_flops else None,
          "final_loss": loss, "peak_rss_gb_so_far": peak_rss_gb(),
          "program_memory": memory_analysis(compiled),
          "device_peak_gb_so_far": device_peak_memory_gb(devices[:n_devices]),
          "profile": profile}


def _fmt(v, spec: str, scale: float = 1.0) -> str:
  return "-" if v is None else format(v * scale, spec)


def print_table(rows: list[dict], noise: dict | None) -> None:
  print(f"{'dev':>4}{'batch':>6}{'compile s':>10}{'s/step':>9}{'min s':>8}{'slices/s':>10}"
        f"{'GFLOP/step':>12}{'GFLOP/s':>9}{'MFU %':>7}{'MFU* %':>8}{'noise %':>8}{'RSS GB':>8}"
        f"{'load':>6}")
  for r in rows:
    print(f"{r['devices']:>4}{r['global_batch']:>6}{r['compile_s']:>10.2f}{r['step_s_median']:>9.3f}"
          f"{r['step_s_min']:>8.3f}{r['slices_per_s']:>10.2f}"
          f"{_fmt(r['flops_per_step'], '12.1f', 1e-9)}"
          f"{_fmt(r['achieved_flops_per_s'], '9.1f', 1e-9)}{_fmt(r['mfu'], '7.1f', 100)}"
          f"{_fmt(r['mfu_vs_concurrent_peak'], '8.1f', 100)}"
          f"{_fmt(r.get('noise_pct_of_step'), '8.2f')}{r['peak_rss_gb_so_far']:>8.2f}"
          f"{r['loadavg_after'][0]:>6.1f}")
  if noise:
    print(f"noise alone ({noise['kind']}, {noise['octaves']} octaves, {noise['shape']}): "
          f"{noise['median_ms']:.2f} ms median")


def main(argv=None) -> None:
  args = parse_args(argv)
  counts = [int(s) for s in args.scaling.split(",") if s.strip()] if args.scaling else [args.devices]
  if args.fake_devices:
    set_fake_devices(args.fake_devices)
  import jax
  from absl import flags
  flags.FLAGS.mark_as_parsed()

  load_before = os.getloadavg()
  config = build_config(args.config, args.size, args.batch, args.dtype)
  backend = jax.default_backend()
  peak = matmul_peak(args.dtype, args.matmul_size or (2048 if backend == "cpu" else 8192))
  noise = time_noise(config, int(config.train.batch_size), args.noise_iterations)
  rows = []
  for n in counts:
    load = list(os.getloadavg())
    r = measure(config, n, args.steps, args.warmup)
    r["loadavg_before"], r["loadavg_after"] = load, list(os.getloadavg())
    # the peak again, right after the row: on a shared machine it moves with the other load
    r["matmul_peak_after"] = matmul_peak(args.dtype, peak["n"])
    rows.append(r)
  best_peak = max([peak["peak_flops_per_s"]] + [r["matmul_peak_after"]["peak_flops_per_s"]
                                                for r in rows])
  # fake CPU devices share the host's cores: the machine's peak, not N × it
  scale = lambda n: 1 if backend == "cpu" else n
  for r in rows:
    n, achieved = r["devices"], r["achieved_flops_per_s"]
    r["peak_flops_per_s"] = best_peak * scale(n)
    r["mfu"] = achieved / r["peak_flops_per_s"] if achieved else None
    concurrent = r["matmul_peak_after"]["peak_flops_per_s"] * scale(n)
    r["mfu_vs_concurrent_peak"] = achieved / concurrent if achieved else None
    if noise:
      r["noise_pct_of_step"] = 100 * noise["median_ms"] / 1e3 / r["step_s_median"]
  print(f"{args.config} ({args.size}) train step, {args.dtype}, {backend}, "
        f"{jax.devices()[0].device_kind}; load average before {load_before[0]:.2f}")
  print(f"matmul peak ({peak['n']}² {peak['dtype']}): best {best_peak / 1e9:.1f} GFLOP/s (before the "
        f"steps {peak['peak_flops_per_s'] / 1e9:.1f}; MFU uses the best, MFU* the one after each row)")
  print_table(rows, noise)
  suffix = "_scaling" if args.scaling else ""
  out = args.out or f"benchmarks/results/train_step_{args.config}_{args.size}_{backend}{suffix}.json"
  from sadm_jax.utils.io import write_json
  write_json(out, {
      "benchmark": "train_step", "config": args.config, "size": args.size, "dtype": args.dtype,
      "command": "python -m benchmarks.train_step " + " ".join(sys.argv[1:] if argv is None
                                                              else argv),
      "machine": machine_info(), "loadavg_before": list(load_before),
      "loadavg_after": list(os.getloadavg()), "matmul_peak": peak,
      "matmul_peak_best_flops_per_s": best_peak, "noise": noise,
      "rows": rows, "peak_rss_gb": peak_rss_gb(),
      "notes": ("flops_per_step from XLA's cost analysis of the compiled step (per device × "
                "devices); mfu against the best matmul peak measured in the run (one device; the "
                "whole host on CPU, whose fake devices share its cores), mfu_vs_concurrent_peak "
                "against the peak re-measured right after that row (same background load). "
                "peak_rss_gb_so_far is cumulative over the rows of one run."),
  })
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
