"""Stage II: SADM weakly supervised on ATLAS v2 (SADM_ATLAS): rows 6–174 of ATLAS_v2_val train, 0–5 validate.

    python -m sadm_jax.main --config=configs/sadm_atlas.py --workdir=W --config.data.data_dir=D \
        --config.sadm.cddpm_workdir=<cDDPM workdir> [--config.sadm.repeat=r]
Repeats, not folds (Q18): `sadm.repeat` changes only the seed. The reference keeps the last
partial batch (drop_last=False: 6 steps per 169-volume epoch); here an epoch is as many steps,
each a full batch of the shuffled stream, so 600 epochs are the reference's 3,600 steps.
Shorter splits are clipped, see `sadm_jax.train.sadm.weak_row_ranges`.
"""

from configs import sadm_draem


def get_config(arg: str | None = None):
  return sadm_draem.sadm_config("atlas", arg)
