"""One benchmark entry point: cDDPM / SADM train steps, per-volume evaluation, data pipeline.

For the visible devices it reports compile time, steady-state throughput, peak memory and MFU
(FLOPs of the jitted program against a matmul peak measured in the same run, per compute dtype),
and scaling over device counts; prints one table and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

# Usage (repository root):
#   python -m benchmarks.suite                                     # everything, tiny config, CPU ok
#   XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.suite --config=tiny \
#       --what=cddpm_train,sadm_train --devices=1,2,4,8            # data-parallel scaling check
#   python -m benchmarks.suite --config=paper --dtype=bfloat16,float32 \
#       --what=cddpm_train,sadm_train,eval,eval_precision --tag=h100   # one GPU, paper sizes
# What it times (random weights and synthetic inputs: timings do not depend on values):
#   cddpm_train  Trainer.train_step of stage I (benchmarks.train_step.measure), batch --batch;
#   sadm_train   the same for stage II: frozen random cDDPM + SegUnet, as train.sadm.sadm_task builds it;
#   eval         one 96×96×50 (tiny: 64×64×8) volume through inference.py: cDDPM reconstruction
#                (encoder once, t = 249/499/749) and SADM (+ SegUnet probability), per volume;
#   eval_precision  bfloat16 vs float32 inference on the same weights and volume (max |Δ| of the
#                reconstruction and of the mean SegUnet probability, anomaly-map Dice agreement);
#   data         grain training-loader slices/s (IXI and DRAEM anomalous slices) on the demo cohort.

import argparse
import os
import time

from benchmarks import machine, profile_ops, suite_report
from benchmarks.suite_report import fmt
from benchmarks import train_step as ts

WHATS = ("cddpm_train", "sadm_train", "eval", "eval_precision", "data")
DEFAULT_WHAT = "cddpm_train,sadm_train,eval,data"
NORM_ACT = ("default", "plain", "recompute")


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--what", default=DEFAULT_WHAT, help=f"comma-separated subset of {WHATS}")
  ap.add_argument("--config", choices=("tiny", "paper"), default="tiny")
  ap.add_argument("--dtype", default="float32",
                  help="comma-separated compute dtypes: float32, bfloat16")
  ap.add_argument("--batch", type=int, default=0, help="global train batch; 0 = the config's")
  ap.add_argument("--devices", default="",
                  help="comma-separated device counts for the train steps; '' = all visible")
  ap.add_argument("--scaling", choices=("strong", "weak"), default="strong",
                  help="strong: the same global batch on every count; weak: batch × devices")
  ap.add_argument("--fake_devices", type=int, default=0,
                  help="N > 0: N fake CPU devices (sets XLA_FLAGS before jax is imported)")
  ap.add_argument("--steps", type=int, default=10, help="timed train steps (median reported)")
  ap.add_argument("--warmup", type=int, default=2, help="untimed train steps after compiling")
  ap.add_argument("--pipelined_steps", type=int, default=-1,
                  help="steps dispatched back to back for the loop-like timing; -1 = --steps")
  ap.add_argument("--repeats", type=int, default=5, help="timed volumes after the first call")
  ap.add_argument("--matmul_size", type=int, default=0, help="0 = 2048 on CPU, 8192 otherwise")
  ap.add_argument("--data_dir", default="", help="data: prepared cohort ('' = demo cohort)")
  ap.add_argument("--data_workers", default="0,2", help="data: comma-separated worker counts")
  ap.add_argument("--data_batches", type=int, default=20)
  ap.add_argument("--profile", type=int, default=0,
                  help="N > 0: also trace N train steps / volumes per row and sum device time per op")
  ap.add_argument("--norm_act", choices=NORM_ACT, default="default",
                  help="the UNet's GroupNorm → [FiLM] → SiLU backward: the package's choice for "
                       "this backend (default), autodiff of the composition (plain) or the "
                       "recomputing VJP (recompute); see sadm_jax.models.norm_act")
  ap.add_argument("--tag", default="", help="suffix of the JSON name, e.g. h100")
  ap.add_argument("--out", default="", help="JSON path; default benchmarks/results/suite_<...>.json")
  args = ap.parse_args(argv)
  args.what = parse_list(args.what, str)
  bad = [w for w in args.what if w not in WHATS]
  if bad:
    ap.error(f"unknown --what {bad}; choose from {WHATS}")
  args.dtype = parse_list(args.dtype, str)
  if any(d not in ("float32", "bfloat16") for d in args.dtype):
    ap.error("--dtype takes float32 and/or bfloat16")
  args.devices = parse_list(args.devices, int)
  args.data_workers = parse_list(args.data_workers, int)
  if args.pipelined_steps < 0:
    args.pipelined_steps = args.steps
  return args


def parse_list(text: str, kind) -> list:
  """'a, b,,c' -> [kind(a), kind(b), kind(c)]."""
  return [kind(s.strip()) for s in str(text).split(",") if s.strip()]


def device_counts(requested: list[int], visible: int) -> list[int]:
  """The device counts to run ([] = all visible); each must be between 1 and `visible`."""
  counts = requested or [visible]
  for n in counts:
    if not 1 <= n <= visible:
      raise SystemExit(f"--devices {n}: {visible} device(s) are visible (on CPU: --fake_devices)")
  return counts


def row_batch(base: int, n_devices: int, scaling: str) -> int:
  """Global batch of a row: `base` (strong scaling) or `base` × devices (weak scaling)."""
  return base * n_devices if scaling == "weak" else base


def mfu(flops: float | None, seconds: float | None, peak: float | None) -> float | None:
  """Model FLOP utilisation: (flops / seconds) / peak; None when any input is missing."""
  if not flops or not seconds or not peak:
    return None
  return flops / seconds / peak


# --------------------------------------------------------------------------- FLOPs from the jaxpr


def jaxpr_flops(fn, *args) -> float | None:
  """`sadm_jax.utils.cost.traced_matmul_flops(fn, *args)` (conv + dot FLOPs, scan bodies ×
  length), or None when tracing fails: a count is optional, the timing is not."""
  from sadm_jax.utils import cost  # imports jax: not at module level (--fake_devices)
  try:
    return cost.traced_matmul_flops(fn, *args)
  except Exception as e:  # noqa: BLE001
    print(f"(jaxpr FLOP count failed: {type(e).__name__}: {e})")
    return None


# --------------------------------------------------------------------------- train steps


def train_rows(what: str, args, peaks: dict, visible: int, rows: list) -> list[dict]:
  """Appends to `rows` one row per (dtype, device count) of the cDDPM or SADM train step."""
  import jax
  stage = "cddpm" if what == "cddpm_train" else "sadm"
  base = ts.build_config(stage, args.config, args.batch, "float32")
  for dtype in args.dtype:
    for n in device_counts(args.devices, visible):
      config = ts.build_config(stage, args.config,
                               row_batch(int(base.train.batch_size), n, args.scaling), dtype)
      r = ts.measure(config, n, args.steps, args.warmup, args.pipelined_steps, args.profile)
      if r.get("profile"):
        profile_ops.print_summary(f"{what} {dtype} x{n}", r["profile"])
      r["flops_matmul_jaxpr"] = _train_jaxpr_flops(config, n)
      noise = ts.time_noise(config, int(config.train.batch_size), 5)
      peak = peaks[dtype] * (1 if jax.default_backend() == "cpu" else n)
      # MFU counts the jaxpr's conv + dot FLOPs: XLA:GPU's cost analysis leaves out the cuDNN
      # convolution custom calls (0.12 of 14.5 TFLOP for the paper cDDPM step on an H100), while
      # on CPU the two counts agree within 2-5 % (mfu_hlo keeps the cost-analysis figure).
      fl = r["flops_matmul_jaxpr"] or r["flops_per_step"]
      r.update(what=what, dtype=dtype, peak_flops_per_s=peak, noise=noise,
               mfu=mfu(fl, r["step_s_median"], peak),
               mfu_pipelined=mfu(fl, r["pipelined_step_s"], peak),
               mfu_hlo=mfu(r["flops_per_step"], r["step_s_median"], peak),
               noise_pct_of_step=(100 * noise["median_ms"] / 1e3 / r["step_s_median"]
                                  if noise else None))
      rows.append(r)
      print(f"  {what} {dtype} devices={n}: {1e3 * r['step_s_median']:.1f} ms/step "
            f"(pipelined {fmt(r['pipelined_step_s'], '.1f', 1e3)}), compile "
            f"{r['compile_s']:.1f} s, {fmt(fl, '.2f', 1e-12)} TFLOP, MFU "
            f"{fmt(r['mfu'], '.1f', 100)}% (pipelined {fmt(r['mfu_pipelined'], '.1f', 100)}%)",
            flush=True)
  return rows


def _train_jaxpr_flops(config, n_devices: int) -> float | None:
  """Conv + dot FLOPs of one global train step, from its jaxpr (abstract inputs, no compile)."""
  import jax
  import jax.numpy as jnp
  from sadm_jax.train import loop, sharding as shard_lib
  task = ts.build_task(config)
  trainer = loop.Trainer(config, task, shard_lib.make_mesh(config,
                                                           devices=jax.devices()[:n_devices]))
  res, b = ts.slice_size(config), int(config.train.batch_size)
  batch = {k: jax.ShapeDtypeStruct((b, res, res, 1), jnp.float32) for k in task.batch_keys}
  return jaxpr_flops(trainer.train_step, trainer.abstract_state, batch, trainer.train_key,
                     trainer.frozen)


# --------------------------------------------------------------------------- evaluation


def eval_rows(args, peaks: dict, benches: dict, rows: list) -> list[dict]:
  """Appends to `rows` per-volume cDDPM and SADM inference rows for each dtype."""
  import jax
  import jax.numpy as jnp
  from benchmarks import evaluation as ev
  from sadm_jax.utils import cost
  for dtype in args.dtype:
    fresh = dtype not in benches  # else compiled already (eval_precision ran first)
    if fresh:
      benches[dtype] = ev.build(args.config, dtype)  # "tiny" | "paper"
    b = benches[dtype]
    image, cddpm, segnet = b.image, b.cddpm, b.segnet
    img = jnp.asarray(image, jnp.float32)
    idx = jnp.asarray(1, jnp.uint32)

    def cddpm_only():
      jax.block_until_ready(cddpm.reconstruct(image, 1).mean)

    def sadm():
      jax.block_until_ready(segnet.probability(image, cddpm.reconstruct(image, 1)))

    t_cddpm = ev.timed(cddpm_only, args.repeats)  # the first call compiles the cDDPM program
    t_sadm = ev.timed(sadm, args.repeats)  # ... and this one the SegUnet program
    traces = {"cddpm": cddpm.traces, "segnet": segnet.traces}
    per_t = cddpm.reconstruct(image, 1).per_t
    # compiled programs (cache hits of the calls above): XLA FLOPs and memory
    c_prog = cddpm.program.lower(cddpm.variables, img, idx).compile()
    s_prog = segnet.program.lower(segnet.variables, img, per_t).compile()
    f_cddpm = jaxpr_flops(cddpm.program, cddpm.variables, img, idx)
    f_seg = jaxpr_flops(segnet.program, segnet.variables, img, per_t)
    cddpm.traces, segnet.traces = traces["cddpm"], traces["segnet"]  # the counts above re-trace
    hlo_c, hlo_s = cost.compiled_cost(c_prog)["flops"], cost.compiled_cost(s_prog)["flops"]
    prof = profile_ops.trace(sadm, args.profile) if args.profile else None
    if prof:
      profile_ops.print_summary(f"eval_sadm {dtype}", prof)
    peak = peaks[dtype]
    common = {"dtype": dtype, "grid": list(b.grid), "slices_per_batch": b.grid[2],
              "timesteps": list(b.eval_cfg.diffusion.ensemble_timesteps), "params": b.n_params,
              "traces": traces, "peak_flops_per_s": peak,
              "device_peak_gb_so_far": machine.device_peak_memory_gb()}
    for what, t, flops, hlo, mem in (
        ("eval_cddpm", t_cddpm, f_cddpm, hlo_c, [machine.memory_analysis(c_prog)]),
        ("eval_sadm", t_sadm, (f_cddpm or 0) + (f_seg or 0) if f_cddpm and f_seg else None,
         (hlo_c or 0) + (hlo_s or 0) if hlo_c and hlo_s else None,
         [machine.memory_analysis(c_prog), machine.memory_analysis(s_prog)])):
      # first call − median ≈ compile time (for eval_sadm: the SegUnet's; the cDDPM's is cached)
      rows.append({**common, "what": what, **t,
                   "compile_s": t["first_call_s"] - t["median_s"] if fresh else None,
                   "volumes_per_s": 1.0 / t["median_s"], "flops_matmul_jaxpr": flops,
                   "flops_hlo_loop_body_once": hlo, "program_memory": mem,
                   "mfu": mfu(flops, t["median_s"], peak),
                   "peak_rss_gb_so_far": machine.peak_rss_gb(),
                   "profile": prof if what == "eval_sadm" else None})
      print(f"  {what} {dtype}: {1e3 * t['median_s']:.1f} ms/volume", flush=True)
  return rows


def precision_check(args, benches: dict) -> dict:
  """bfloat16 vs float32 inference on the same random weights, volume and noise."""
  import numpy as np
  from benchmarks import evaluation as ev
  from sadm_jax.evaluate import anomaly_map as am, inference, metrics
  out = {}
  for dtype in ("float32", "bfloat16"):
    if dtype not in benches:
      benches[dtype] = ev.build(args.config, dtype)  # "tiny" | "paper"
    b = benches[dtype]
    out[dtype] = inference.infer_volume(b.image, 1, b.cddpm, b.segnet)
  b = benches["float32"]
  x = np.transpose(b.image, (1, 2, 0))
  f32, bf16 = out["float32"], out["bfloat16"]
  maps = {d: am.anomaly_map(out[d].recon, x, b.brain, out[d].seg_prob) for d in out}
  tau = float(np.quantile(maps["float32"][b.brain], 0.97))  # top 3 % of the f32 map in the brain
  pred = {d: (maps[d] > tau) & b.brain for d in maps}
  brain = b.brain

  def diffs(a, c):
    d = np.abs(np.asarray(a, np.float64) - np.asarray(c, np.float64))
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "max_abs_in_brain": float(d[brain].max()), "ref_range": [float(a.min()),
                                                                   float(a.max())]}

  res = {"grid": list(b.grid), "weights": "random (benchmarks.weights.random_variables)",
         "recon": diffs(f32.recon, bf16.recon), "seg_prob": diffs(f32.seg_prob, bf16.seg_prob),
         "anomaly_map": diffs(maps["float32"], maps["bfloat16"]),
         "threshold_f32_p97_in_brain": tau,
         "dice_bf16_vs_f32_binarised": metrics.dice(pred["bfloat16"], pred["float32"]),
         "dice_vs_synthetic_lesion": {d: metrics.dice(pred[d], b.lesion) for d in pred}}
  print(f"  eval_precision: max|Δ recon| {res['recon']['max_abs']:.3g}, max|Δ seg prob| "
        f"{res['seg_prob']['max_abs']:.3g}, Dice(bf16 map, f32 map) "
        f"{res['dice_bf16_vs_f32_binarised']:.4f}", flush=True)
  return res


# --------------------------------------------------------------------------- data pipeline


def data_rows(args) -> list[dict]:
  import tempfile
  from benchmarks import data_pipeline as dp
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    table = dp.prepare_table(args.data_dir, tmp)
    prepare_s = time.perf_counter() - t0
    for draem in (False, True):
      for w in args.data_workers:
        r = dp.measure(table, w, True, 32, args.data_batches, draem=draem)
        rows.append({**r, "what": "data_draem" if draem else "data_ixi",
                     "prepare_s": prepare_s, "volumes": len(table)})
        print(f"  data draem={draem} workers={w}: {r['slices_per_s']} slices/s", flush=True)
  return rows


# --------------------------------------------------------------------------- report


def set_norm_act(choice: str) -> str:
  """Sets `norm_act.RECOMPUTE_BACKENDS` for `--norm_act` (in this process); returns the
  formulation the backend in use then takes ('plain' or 'recompute')."""
  import jax
  from sadm_jax.models import norm_act
  if choice == "plain":
    norm_act.RECOMPUTE_BACKENDS = ()
  elif choice == "recompute":
    norm_act.RECOMPUTE_BACKENDS = (jax.default_backend(),)
  return "recompute" if jax.default_backend() in norm_act.RECOMPUTE_BACKENDS else "plain"


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.fake_devices:
    ts.set_fake_devices(args.fake_devices)
  import jax
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  from sadm_jax.utils.io import write_json

  backend, visible = jax.default_backend(), len(jax.devices())
  args.norm_act_taken = set_norm_act(args.norm_act)
  print(f"suite: {args.what}, config {args.config}, dtypes {args.dtype}, "
        f"GroupNorm-SiLU backward {args.norm_act_taken}, {backend} "
        f"({jax.devices()[0].device_kind}), {visible} visible device(s), jax {jax.__version__}",
        flush=True)
  needs_peak = any(w != "data" and w != "eval_precision" for w in args.what)
  n = args.matmul_size or (2048 if backend == "cpu" else 8192)
  peaks_info = {d: machine.matmul_peak(d, n) for d in args.dtype} if needs_peak else {}
  peaks = {d: p["peak_flops_per_s"] for d, p in peaks_info.items()}
  for d, p in peaks_info.items():
    print(f"  matmul peak {d} ({n}²): {p['peak_flops_per_s'] / 1e12:.2f} TFLOP/s "
          f"(median {p['median_flops_per_s'] / 1e12:.2f})", flush=True)
  load_before = os.getloadavg()
  rows, benches, precision = [], {}, None
  errors = {}
  tag = f"_{args.tag}" if args.tag else ""
  out = args.out or f"benchmarks/results/suite_{args.config}_{backend}{tag}.json"
  import signal

  def _terminated(signum, frame):  # `timeout` sends SIGTERM: save what was measured
    write_json(out, suite_report.record(args, argv, peaks_info, load_before, rows, precision,
                            {**errors, "terminated": f"signal {signum}"}))
    raise SystemExit(f"terminated by signal {signum}; partial results in {out}")

  signal.signal(signal.SIGTERM, _terminated)
  for what in args.what:
    t0 = time.perf_counter()
    try:
      if what in ("cddpm_train", "sadm_train"):
        train_rows(what, args, peaks, visible, rows)
      elif what == "eval":
        eval_rows(args, peaks, benches, rows)
      elif what == "eval_precision":
        precision = precision_check(args, benches)
      elif what == "data":
        rows += data_rows(args)
    except Exception as e:  # noqa: BLE001 — keep the other parts' results
      import traceback
      traceback.print_exc()
      errors[what] = f"{type(e).__name__}: {e}"
    print(f"  ({what}: {time.perf_counter() - t0:.0f} s)", flush=True)
    # written after every part, so a run cut short keeps what it measured
    write_json(out, suite_report.record(args, argv, peaks_info, load_before, rows, precision,
                                        errors))

  print(f"\nsuite ({args.config}) on {backend}, {jax.devices()[0].device_kind}; train rows per "
        "step, eval rows per volume (TFLOP: conv+dot FLOPs of the jaxpr, as MFU uses); "
        "mem GB: the program's argument+output+temp; peak GB: device allocator peak so far "
        "(host RSS on CPU)")
  print(suite_report.table(rows))
  if precision:
    print(f"bf16 vs f32 inference: max|Δ recon| {precision['recon']['max_abs']:.4g}, "
          f"max|Δ seg prob| {precision['seg_prob']['max_abs']:.4g}, "
          f"Dice(bf16 vs f32 binarised map) {precision['dice_bf16_vs_f32_binarised']:.4f}")
  result = suite_report.record(args, argv, peaks_info, load_before, rows, precision, errors)
  write_json(out, result)
  print(f"wrote {out}")
  if errors:
    raise SystemExit(f"failed parts: {errors}")
  return result


if __name__ == "__main__":
  main()
