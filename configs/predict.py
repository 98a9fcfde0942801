"""Anomaly maps and masks for new scans, each written back on the scan's own grid and affine.

    python -m sadm_jax.main --config=configs/predict.py --workdir=out/ \
        --config.predict.checkpoint_dir=W --config.predict.input=scan.nii.gz \
        [--config.predict.mask=mask.nii.gz] [--config.predict.output=out/] \
        [--config.predict.threshold=τ]
W is an evaluation workdir (models, settings and the validation-selected τ are taken from it), a
SADM workdir or a cDDPM workdir (then pass the threshold). `predict.input` may also be a comma-
separated list, a folder (every .nii/.nii.gz except `*_mask.nii[.gz]`; the mask of
`<base>[_<modality>].nii.gz` is `<base>_mask.nii.gz` in the folder or in `predict.mask`), a quoted
glob pattern ('bids/*/anat/*_T1w.nii.gz'; masks found next to each scan, as in a folder) or a CSV
with columns image[,mask]; then each scan's outputs go to `<output>/<scan name>/` (scans of the same
file name in different folders are named by those folders: `p1/T1.nii.gz` -> `p1_T1`). Every run writes
`<output>/predict_summary.json`; the exit code is 2 when any scan failed. Scans are reoriented to
the training data's orientation (recorded by the run; 'RAS' when not) before preprocessing. The
scans must be skull-stripped and registered like the training data; without a mask the brain is
`image > 0`.
"""

from configs import cddpm as cddpm_config
from configs import default


def get_config(arg: str | None = None):
  c = default.get_config()
  c.stage = "predict"
  if arg == "tiny":
    cddpm_config.apply_tiny(c)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected 'tiny' or nothing")
  return c
