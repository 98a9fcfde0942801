"""Stage III: evaluation of the threshold baseline, the cDDPM and SADM runs (METHOD §3.9, §4).

    python -m sadm_jax.main --config=configs/evaluate.py --workdir=W --config.data.data_dir=D \
        --config.evaluate.cddpm_workdir=C --config.evaluate.sadm_workdirs="('S0','S1')"
Arguments (comma-separated): `tiny` (the tiny working grid of configs/cddpm.py:tiny), `faithful`
(the reference's protocol: shared noise, bisection threshold search on the whole grid, whole-grid
metrics). Results are cached per volume under W/eval/ (a rerun resumes); tables under W/report/.
"""

from configs import cddpm as cddpm_config
from configs import default


def get_config(arg: str | None = None):
  c = default.get_config()
  c.stage = "evaluate"
  c.evaluate.test_sets = ("Brats21", "ATLAS_v2", "DRAEM", "MSLUB", "WMH")
  for a in [a for a in (arg or "").split(",") if a]:
    if a == "tiny":
      cddpm_config.apply_tiny(c)
    elif a == "faithful":
      c.faithful = True
    else:
      raise ValueError(f"unknown config argument {a!r}; expected 'tiny' and/or 'faithful'")
  return c
