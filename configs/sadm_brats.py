"""Stage II: SADM weakly supervised on BraTS21 (SADM_BRATS): rows 10–99 of Brats21_val train, 0–9 validate.

    python -m sadm_jax.main --config=configs/sadm_brats.py --workdir=W --config.data.data_dir=D \
        --config.sadm.cddpm_workdir=<cDDPM workdir> [--config.sadm.repeat=r]
The reference's 5 "folds" ignore the fold index: they are repeats that differ only by seed (Q18),
here `sadm.repeat`. The reference keeps the last partial batch (drop_last=False: 3 steps of
32+32+26 per 90-volume epoch); here an epoch is as many steps, ⌈90/32⌉ = 3, each a full batch of
the shuffled stream (static shapes), so 600 epochs are the reference's 1,800 steps.
Shorter splits (the demo cohort) are clipped, see `sadm_jax.train.sadm.weak_row_ranges`; override the rows
with --config.sadm.weak_train_rows='(a, b)' --config.sadm.weak_val_rows='(c, d)'.
"""

from configs import sadm_draem


def get_config(arg: str | None = None):
  return sadm_draem.sadm_config("brats", arg)
