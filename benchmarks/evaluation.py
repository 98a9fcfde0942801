"""Benchmark: per-volume evaluation (cDDPM-only and SADM inference, anomaly map, metrics)."""

from __future__ import annotations

# Usage (repository root):
#   python -m benchmarks.evaluation                       # tiny config (64×64×8 grid), CPU friendly
#   python -m benchmarks.evaluation --paper --dtype bfloat16  # paper sizes: 96×96×50, 50 slices
#   python -m benchmarks.evaluation --end_to_end [--runs_dir=DIR]  # the whole tiny evaluation stage
#   python -m benchmarks.evaluation --end_to_end --demo_workdir=runs/demo --devices=1,2 \
#       [--baseline_repo=/tmp/old --baseline_workdir=/tmp/old_demo]  # before/after in one run
# --end_to_end: the demo job's evaluation stage (threshold, cDDPM, SADM; maps, metrics, NIfTI/PNG,
# report) on a finished demo workdir (default: `configs/demo.py:tiny` built once in --runs_dir),
# each timing a fresh process and evaluation workdir, repeats interleaved over the CPU device
# counts (and the baseline checkout); volumes/s = volume results computed / wall s of the stage.
# Random weights (timings do not depend on values), a synthetic brain-like volume; each timing is
# the median over --repeats calls after one warm-up (compilation) call. Writes
# benchmarks/results/evaluation_<backend>.json (one entry per size) unless --out is given.

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from benchmarks.weights import random_variables
from configs import cddpm as cddpm_config
from configs import evaluate as evaluate_config
from sadm_jax import config as config_lib
from sadm_jax.evaluate import anomaly_map as am
from sadm_jax.evaluate import inference, metrics
from sadm_jax.models import factory
from sadm_jax.models.segnet import SegUnet
from sadm_jax.utils.io import write_json

PAPER_SEGNET_WF, TINY_SEGNET_WF = 6, 3  # configs/sadm_draem.py (paper / tiny)


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--paper", action="store_true", help="paper model sizes and the 96×96×50 grid")
  ap.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up (>= 1)")
  ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  ap.add_argument("--out", default="")
  ap.add_argument("--end_to_end", action="store_true",
                  help="time the demo job's whole evaluation stage (default: configs/demo.py:tiny)")
  ap.add_argument("--demo_workdir", default="",
                  help="--end_to_end: a finished `configs/demo.py` workdir to evaluate again")
  ap.add_argument("--devices", default="1,8", help="--end_to_end: CPU device counts, e.g. 1,2")
  ap.add_argument("--baseline_repo", default="",
                  help="--end_to_end: another checkout (e.g. a worktree of an older commit) "
                       "timed in the same run on 1 device")
  ap.add_argument("--baseline_devices", default="1",
                  help="--end_to_end: CPU device counts for the --baseline_repo checkout")
  ap.add_argument("--baseline_workdir", default="",
                  help="--end_to_end: the demo workdir that checkout trained (its checkpoints)")
  ap.add_argument("--runs_dir", default="", help="--end_to_end: scratch dir (tiny demo reused)")
  return ap.parse_args(argv)


def synthetic_volume(shape: tuple[int, int, int], seed: int = 0):
  """(image [D, H, W] in [0, 1], brain [H, W, D], lesion [H, W, D]): textured ellipsoid + blob."""
  d, h, w = shape
  rng = np.random.default_rng(seed)
  grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in (h, w, d)], indexing="ij"))
  brain = (grid ** 2).sum(0) < 0.8
  lesion = ((grid - np.array([0.3, -0.2, 0.1])[:, None, None, None]) ** 2).sum(0) < 0.05
  texture = ndimage.gaussian_filter(rng.random((h, w, d)), 1.5)
  x = np.where(brain, 0.3 + 0.5 * (texture - texture.min()) / np.ptp(texture), 0.0)
  x = np.where(lesion & brain, 0.95, x).astype(np.float32)
  return np.ascontiguousarray(np.transpose(x, (2, 0, 1))), brain, lesion & brain


def timed(fn, repeats: int) -> dict:
  """First call (compile + run) and the median/min of `repeats` further calls, in seconds."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  runs = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    runs.append(time.perf_counter() - t0)
  return {"first_call_s": first, "median_s": statistics.median(runs), "min_s": min(runs),
          "repeats": repeats}


@dataclasses.dataclass
class Bench:
  """Random-weight inference models and one synthetic volume, as the evaluation builds them."""
  size: str  # 'paper' | 'tiny'
  eval_cfg: Any
  model_cfg: Any
  grid: tuple[int, int, int]  # (H, W, D)
  image: np.ndarray  # [D, H, W]
  brain: np.ndarray  # [H, W, D] bool
  lesion: np.ndarray  # [H, W, D] bool
  cddpm: inference.CDDPMInference
  segnet: inference.SegmentationInference
  n_params: dict


def build(size: str, dtype: str) -> Bench:
  """cDDPM and SegUnet inference (random weights: keys 0 and 1, so equal for every `dtype`).

  size: 'tiny', 'paper' or 'demo' (configs/demo.py's networks and grid).
  """
  if size not in ("tiny", "demo", "paper"):
    raise ValueError(f"size {size!r}: expected 'tiny', 'demo' or 'paper'")
  paper = size == "paper"
  if size == "demo":
    from configs import demo
    eval_cfg = config_lib.resolve(demo.get_config())
    model_cfg = config_lib.resolve(demo.get_config())
    wf = int(model_cfg.sadm.segnet_wf)
  else:
    eval_cfg = config_lib.resolve(evaluate_config.get_config(None if paper else "tiny"))
    model_cfg = config_lib.resolve(cddpm_config.get_config(None if paper else "tiny"))
    wf = PAPER_SEGNET_WF if paper else TINY_SEGNET_WF
  eval_cfg.evaluate.dtype = dtype
  p = model_cfg.data.preprocess
  hw = -(-p.crop_size[0] // p.downsample)
  depth = -(-p.crop_size[2] // p.downsample)
  image, brain, lesion = synthetic_volume((depth, hw, hw))

  model = factory.build_cddpm(model_cfg)
  x1 = jnp.zeros((1, hw, hw, 1))
  cvars = random_variables(lambda k: model.init({"params": k, "dropout": k}, x1, x1,
                                                jnp.zeros((1,), jnp.int32), train=False), seed=0)
  cddpm = inference.cddpm_inference(model_cfg, cvars, eval_cfg, fingerprint="bench")
  seg_module = SegUnet(wf=wf, dtype=factory.DTYPES[dtype])
  svars = random_variables(seg_module.init, x1, x1, seed=1)
  segnet = inference.SegmentationInference(seg_module, svars)
  n_params = {"cddpm": int(sum(a.size for a in jax.tree.leaves(cvars["params"]))),
              "segnet": int(sum(a.size for a in jax.tree.leaves(svars["params"])))}
  return Bench(size, eval_cfg, model_cfg, (hw, hw, depth), image, brain,
               lesion, cddpm, segnet, n_params)


def single_step_inference(size: str, slices: int):
  """Issue 13's inference workload: the encoder once, the UNet at t = 499 and the SegUnet.

  The models, random weights and synthetic volume of `build(size, "float32")`, the cDDPM's
  ensemble reduced to the single timestep 499, and the middle `slices` slices of the volume.
  Returns (cddpm, segnet, image [slices, H, W] float32); one call is
  `segnet.probability(image, cddpm.reconstruct(image, 1))` (the programs: `cddpm.program`,
  `segnet.program`).
  """
  if slices < 1:
    raise ValueError(f"slices must be at least 1, got {slices}")
  b = build(size, "float32")
  noise = dataclasses.replace(b.cddpm.noise, timesteps=(499,))
  cddpm = inference.CDDPMInference(b.model_cfg, b.cddpm.variables, noise, fingerprint="bench")
  mid = max(0, (b.image.shape[0] - slices) // 2)
  return cddpm, b.segnet, np.ascontiguousarray(b.image[mid:mid + slices], np.float32)


# Run in a fresh interpreter per timing (its own device count): the demo job's evaluation stage
# (demo_job.stage_config + main.run_stage, the package's public functions) on a finished demo
# workdir, into a fresh evaluation workdir. Works on older checkouts too (--baseline_repo).
_STAGE_SNIPPET = r"""
import json, os, sys, time
try:
  from sadm_jax.utils import xla_flags
  xla_flags.apply()
except ImportError:  # an older checkout without package XLA defaults
  pass
from configs import demo
from sadm_jax import config as config_lib, demo_job, main as main_lib
src, arg, work = sys.argv[1:4]
c = config_lib.resolve(demo.get_config(arg or None))
c.data.data_dir = os.path.join(src, "demo_data")
ec = demo_job.stage_config(c, "evaluate", src)
t0 = time.perf_counter()
s = main_lib.run_stage(ec, work)
print("RESULT " + json.dumps({"seconds": time.perf_counter() - t0,
                              "volumes": (s or {}).get("volumes_computed")}))
"""


def _time_stage(repo: str, demo_workdir: str, arg: str, work: str, devices: int) -> dict:
  """Wall seconds of one evaluation stage (a subprocess with `devices` CPU devices)."""
  import re
  import subprocess
  import sys
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": repo,
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  out = subprocess.run([sys.executable, "-c", _STAGE_SNIPPET, os.path.abspath(demo_workdir), arg,
                        work], cwd=repo, env=env, capture_output=True, text=True)
  found = re.findall(r"^RESULT (.*)$", out.stdout, re.M)
  if out.returncode != 0 or not found:
    raise RuntimeError(f"evaluation in {repo} failed:\n{(out.stdout + out.stderr)[-3000:]}")
  return json.loads(found[-1])


def end_to_end(args) -> dict:
  """The demo job's evaluation stage, timed whole (maps, metrics, files, report included).

  Interleaved repeats over the device counts (and the baseline checkout, when given), each in a
  fresh evaluation workdir; volumes/s = volume results computed / wall seconds of the stage.
  """
  import shutil
  import subprocess
  import sys
  import tempfile
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  root = args.runs_dir or tempfile.mkdtemp(prefix="bench_eval_")
  os.makedirs(root, exist_ok=True)
  arg = "" if args.demo_workdir else "tiny"
  demo_dir = args.demo_workdir or os.path.join(root, "demo_tiny")
  if not args.demo_workdir and not os.path.isfile(os.path.join(demo_dir, "demo_summary.json")):
    subprocess.run([sys.executable, "-m", "sadm_jax.main", "--config=configs/demo.py:tiny",
                    f"--workdir={demo_dir}"], cwd=repo, check=True, capture_output=True)
  codes = [("current", repo, demo_dir)]
  if args.baseline_repo:
    codes.append(("baseline", os.path.abspath(args.baseline_repo),
                  args.baseline_workdir or demo_dir))
  counts = [int(n) for n in args.devices.split(",") if n.strip()]
  baseline_counts = [int(n) for n in args.baseline_devices.split(",") if n.strip()]
  timings: dict[str, list] = {}
  for rep in range(args.repeats):
    for label, code_repo, src in codes:
      for n in (counts if label == "current" else baseline_counts):
        work = tempfile.mkdtemp(prefix=f"eval_{label}{n}_", dir=root)
        r = _time_stage(code_repo, src, arg, work, n)
        shutil.rmtree(work, ignore_errors=True)
        r.update(load_average=list(os.getloadavg()),
                 volumes_per_s=(r["volumes"] or 0) / r["seconds"])
        timings.setdefault(f"{label}, {n} device(s)", []).append(r)
        print(f"repeat {rep} {label:8s} devices {n}: {r['volumes']} results in "
              f"{r['seconds']:.1f} s ({r['volumes_per_s']:.2f} /s), load {r['load_average'][0]:.1f}",
              flush=True)
  table = {k: {"median_s": statistics.median(x["seconds"] for x in v),
               "volumes": v[0]["volumes"],
               "volumes_per_s": statistics.median(x["volumes_per_s"] for x in v)}
           for k, v in timings.items()}
  print(f"{'code, devices':28s} {'median s':>9s} {'volumes':>8s} {'volumes/s':>10s}")
  for k, t in table.items():
    print(f"{k:28s} {t['median_s']:9.1f} {str(t['volumes']):>8s} {t['volumes_per_s']:10.2f}")
  entry = {"demo_workdir": os.path.abspath(demo_dir), "config": f"configs/demo.py{':' + arg if arg else ''}",
           "baseline_repo": args.baseline_repo, "table": table, "runs": timings,
           "jax": jax.__version__, "cpu_count": os.cpu_count(),
           "machine": platform.processor() or platform.machine()}
  out = args.out or os.path.join("benchmarks", "results",
                                 f"evaluation_end_to_end_{'demo' if args.demo_workdir else 'tiny'}_cpu.json")
  write_json(out, entry)
  print("wrote", out)
  return entry


def main(argv=None) -> dict:
  args = parse_args(argv)
  args.repeats = max(1, args.repeats)
  if args.end_to_end:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    return end_to_end(args)
  b = build("paper" if args.paper else "tiny", args.dtype)
  size, eval_cfg, image, brain, lesion = b.size, b.eval_cfg, b.image, b.brain, b.lesion
  hw, _, depth = b.grid
  cddpm, segnet, n_params = b.cddpm, b.segnet, b.n_params

  def cddpm_only():
    jax.block_until_ready(cddpm.reconstruct(image, 1).mean)

  def sadm():
    rec = cddpm.reconstruct(image, 1)
    jax.block_until_ready(segnet.probability(image, rec))

  r = args.repeats
  results = {"cddpm_inference": timed(cddpm_only, r), "sadm_inference": timed(sadm, r)}
  inf = inference.infer_volume(image, 1, cddpm, segnet)
  x = np.transpose(image, (1, 2, 0))
  a = am.anomaly_map(inf.recon, x, brain, inf.seg_prob)
  tau = float(np.quantile(a[brain], 0.97))
  results["anomaly_map_sum"] = timed(lambda: am.anomaly_map(inf.recon, x, brain, inf.seg_prob), r)
  results["volume_metrics"] = timed(lambda: metrics.volume_metrics(a, lesion, brain, tau), r)
  per_volume = {k: 1.0 / v["median_s"] for k, v in results.items()}
  per_volume_s = sum(results[k]["median_s"] for k in ("sadm_inference", "anomaly_map_sum",
                                                     "volume_metrics"))
  entry = {
      "grid": [hw, hw, depth], "slices_per_batch": depth,
      "timesteps": list(eval_cfg.diffusion.ensemble_timesteps), "dtype": args.dtype,
      "params": n_params, "timings": results, "volumes_per_s": per_volume,
      "sadm_end_to_end_volumes_per_s": 1.0 / per_volume_s,
      "traces": {"cddpm": cddpm.traces, "segnet": segnet.traces},
      "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
      "jax": jax.__version__, "cpu_count": os.cpu_count(),
      "machine": platform.processor() or platform.machine(),
      "load_average": list(os.getloadavg()),
  }
  print(f"evaluation benchmark ({size}: grid {hw}×{hw}×{depth}, {depth} slices per batch, "
        f"K={len(eval_cfg.diffusion.ensemble_timesteps)}, {args.dtype}, {entry['device']}, "
        f"load {entry['load_average'][0]:.1f})")
  print(f"{'what':18s} {'first call s':>13s} {'median s':>10s} {'min s':>9s} {'volumes/s':>10s}")
  for name, t in results.items():
    print(f"{name:18s} {t['first_call_s']:13.3f} {t['median_s']:10.4f} {t['min_s']:9.4f} "
          f"{per_volume[name]:10.3f}")
  print(f"SADM end to end (inference + map + metrics): "
        f"{entry['sadm_end_to_end_volumes_per_s']:.3f} volumes/s; traces {entry['traces']}")
  out = args.out or os.path.join("benchmarks", "results",
                                 f"evaluation_{jax.default_backend()}.json")
  saved = {}
  if os.path.isfile(out):
    with open(out) as f:
      saved = json.load(f)
  saved[size] = entry
  write_json(out, saved)
  print("wrote", out)
  return entry


if __name__ == "__main__":
  main()
