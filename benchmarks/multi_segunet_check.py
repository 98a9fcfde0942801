"""Check: wrong SegUnet values in a per-volume program with two SegUnets, per XLA:CPU setting.

Not a timing: it counts wrong volume results. Each variant runs in a fresh process (XLA flags are
read when the backend starts) on --devices CPU devices: a tiny random cDDPM and two SegUnets of one
architecture in one `scoring.VolumeProgram`; each SegUnet's own `CDDPMInference.reconstruct` +
`SegmentationInference.probability` per volume is the reference; the program is dispatched
--dispatches times over --devices volumes (per-model inference calls in between) and a volume
result is wrong when it differs from the reference by more than --atol.

    python -m benchmarks.multi_segunet_check                     # package vs no program option
    python -m benchmarks.multi_segunet_check --variants package,package_no_option,ynn_conv \
        --dispatches 20 --out /tmp/check.json

Variants: `package` = the package's flags and `VolumeProgram.compiler_options` (the fix);
`package_no_option` = the package's flags, the program compiled without its option (as before the
fix); `ynn_conv` / `ynn_reduce` = the process flags with YNNPACK convolutions / reductions (no
program option); `no_defaults` = JAX's own XLA:CPU defaults. Writes
benchmarks/results/multi_segunet_check_cpu.json unless --out is given. BENCHMARKS.md "Fixed:
programs with two or more SegUnets".
"""

from __future__ import annotations

import argparse
import json
import os

from sadm_jax.utils import xla_flags  # imports no JAX

YNN = f"--{xla_flags.YNN_FLAG}="
VARIANTS = {  # name -> (process XLA flags besides the device count, keep the program's option)
    "package": ("", True),
    "package_no_option": ("", False),
    "ynn_conv": (YNN + "-reduce,-individual_dot", False),
    "ynn_reduce": (YNN + "-individual_convolution,-individual_dot", False),
    "no_defaults": (None, False),
}


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--variants", default="package,package_no_option",
                  help=f"comma-separated, of {', '.join(VARIANTS)}")
  ap.add_argument("--devices", type=int, default=8,
                  help="CPU devices = volumes per dispatch (>= 2)")
  ap.add_argument("--dispatches", type=int, default=10, help="dispatches per variant (>= 1)")
  ap.add_argument("--atol", type=float, default=1e-4)
  ap.add_argument("--out", default="")
  ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  names = [v.strip() for v in args.variants.split(",") if v.strip()]
  bad = [v for v in names if v not in VARIANTS]
  if bad or not names:
    ap.error(f"--variants: unknown {', '.join(bad) or '(none given)'}; "
             f"choose from {', '.join(VARIANTS)}")
  if args.devices < 2 or args.dispatches < 1:
    ap.error("--devices must be >= 2 and --dispatches >= 1")
  args.variant_list = names
  return args


def _worker(args) -> dict:
  """In the variant's process: counts wrong volume results (see the module docstring)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from benchmarks.evaluation import build
  from benchmarks.weights import random_variables
  from sadm_jax.evaluate import inference, scoring

  if not VARIANTS[args.worker][1]:
    xla_flags.inference_compiler_options = lambda *a, **k: None
  b = build("tiny", "float32")
  seg = b.segnet
  x1 = jnp.zeros((1,) + b.image.shape[1:] + (1,))
  other = inference.SegmentationInference(
      seg.module, random_variables(seg.module.init, x1, x1, seed=7))
  n = args.devices
  rng = np.random.default_rng(0)
  images = np.stack([np.clip(b.image + 0.1 * rng.standard_normal(b.image.shape), 0, 1)
                     for _ in range(n)]).astype(np.float32)
  masks = np.stack([np.transpose(b.brain, (2, 0, 1))] * n)
  indices = np.arange(1, n + 1, dtype=np.uint32)
  settings = {"lam": 0.5, "median_size": 1, "erode_mask": 0, "min_component_size": 0,
              "residual_mode": "ssim"}
  prog = scoring.VolumeProgram(b.cddpm, [seg, other], [("a", "sum", 0), ("b", "sum", 1)],
                               settings, scoring.local_mesh(n), False)
  want = {}
  for v in range(n):
    rec = b.cddpm.reconstruct(images[v], int(indices[v]))
    for k, s in enumerate((seg, other)):
      want[v, k] = np.asarray(s.probability(images[v], rec))
  wrong, worst = 0, 0.0
  for _ in range(args.dispatches):
    prob = np.asarray(prog.dispatch(images, masks, indices)["prob"])
    for (v, k), w in want.items():
      d = float(np.abs(prob[v, k] - w).max())
      worst = max(worst, d)
      wrong += d > args.atol
    for v in range(n):  # other work between dispatches, as an evaluation has
      seg.probability(images[v], b.cddpm.reconstruct(images[v], int(indices[v])))
  return {"wrong": wrong, "results": args.dispatches * n * 2, "max_abs_diff": worst,
          "program_options": prog.compiler_options, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.worker:  # (benchmarks/__init__.py applied the package's XLA:CPU defaults, unless off)
    print(json.dumps(_worker(args)), flush=True)
    return {}
  from benchmarks.ab import run_worker
  from sadm_jax.utils.io import write_json
  rows = {}
  for name in args.variant_list:
    flags, _ = VARIANTS[name]
    env = {"JAX_PLATFORMS": "cpu", "SADM_XLA_CPU_DEFAULTS": "0" if flags is None else "1",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={args.devices} {flags or ''}"}
    rows[name] = r = run_worker("benchmarks.multi_segunet_check", name,
                                [f"--devices={args.devices}", f"--dispatches={args.dispatches}",
                                 f"--atol={args.atol}"], env)
    print(f"{name:20s} wrong {r['wrong']:4d} of {r['results']:4d} volume results, "
          f"max |diff| {r['max_abs_diff']:.3g}", flush=True)
  import jax
  entry = {"devices": args.devices, "dispatches": args.dispatches, "atol": args.atol,
           "variants": rows, "jax": jax.__version__, "cpu_count": os.cpu_count()}
  path = args.out or os.path.join("benchmarks", "results", "multi_segunet_check_cpu.json")
  write_json(path, entry)
  print("wrote", path)
  return entry


if __name__ == "__main__":
  main()
