"""Stage II: SADM weakly supervised on ATLAS v2 (SADM_ATLAS): rows 6–174 of ATLAS_v2_val train, 0–5 validate.

    python -m sadm_jax.main --config=configs/sadm_atlas.py --workdir=W --config.data.data_dir=D \
        --config.sadm.cddpm_workdir=<cDDPM workdir> [--config.sadm.repeat=r]
Repeats, not folds (Q18): `sadm.repeat` changes only the seed. The reference keeps the last
partial batch (drop_last=False: 6 steps per 169-volume epoch); the loop drops it, so an epoch is
5 full batches and 600 epochs are 3,000 steps (train.num_steps=3600 matches the step count).
Shorter splits are clipped, see `sadm_jax.train.sadm.weak_row_ranges`.
"""

from configs import sadm_draem


def get_config(arg: str | None = None):
  return sadm_draem.sadm_config("atlas", arg)
