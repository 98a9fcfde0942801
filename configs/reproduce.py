"""Table 1 of the SADM paper on the demo cohort: cDDPM, SADM and input-only UNet × (DRAEM, BraTS-, ATLAS-like labels), one evaluation, the three claims.

    python -m sadm_jax.main --config=configs/reproduce.py --workdir=W
    python -m sadm_jax.main --config=configs/reproduce.py:tiny --workdir=W   # the end-to-end test

Runs `sadm_jax/reproduce.py`: builds the demo cohort, then the sweep prepare → cDDPM → six
stage-II runs (SADM and the plain UNet, `sadm.use_cddpm=False`, each with DRAEM anomalies and with
the BraTS- and ATLAS-like labels) → one evaluation of them plus the intensity threshold and the
cDDPM on the tumour-, stroke- and WMH-like test sets and on IXI with DRAEM anomalies; writes
W/report/{table.md,metrics.csv} and W/claims.json. Everything but the stage is the demo's
(configs/demo.py): grid, networks, budgets (`demo.cddpm_*`; all six stage-II runs use
`demo.sadm_*`; `:tiny` trains 2 steps per run instead of the demo's 4). `reproduce.repeats` =
n > 1 trains every model n times (IXI folds 0..n-1; the weakly supervised runs as repeats,
`sadm.repeat`) and the table shows mean ± std.
"""

from configs import demo


def get_config(arg: str | None = None):
  c = demo.get_config(arg)  # 'tiny' or nothing, as the demo
  c.stage = "reproduce"
  if arg == "tiny":  # 2 steps per training (one validation and checkpoint each): 7 trainings
    c.demo.cddpm_steps = c.demo.sadm_steps = 2  # in the test suite's background, ~12 s less
  c.evaluate.test_sets = ("Brats21", "ATLAS_v2", "WMH", "DRAEM")
  c.evaluate.methods = ("threshold", "cddpm", "sadm")
  return c
