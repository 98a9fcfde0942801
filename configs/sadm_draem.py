"""Stage II: SADM trained on IXI slices with DRAEM synthetic anomalies (METHOD §3.7–3.8, SADM_DRAEM).

    python -m sadm_jax.main --config=configs/sadm_draem.py --workdir=W --config.data.data_dir=D \
        --config.sadm.cddpm_workdir=<cDDPM workdir> [--config.data.fold=k]
    python -m sadm_jax.main --config=configs/sadm_draem.py:tiny ...   (laptop-sized, as the tests)
Ablations: --config.sadm.use_residual=False (input-only SegUnet), --config.sadm.use_cddpm=False
(plain UNet, no cDDPM needed), --config.sadm.frozen_train_mode=True (reference BN drift, Q6).
"""

from configs import cddpm, default


def sadm_config(mode: str, arg: str | None = None):
  """The SADM experiment of `mode` ('draem' | 'brats' | 'atlas'); arg 'tiny' shrinks everything."""
  c = default.get_config()
  c.stage = "sadm"
  c.sadm.mode = mode
  c.model.names = ("encoder", "unet", "segnet")
  c.data.modality = "t1"
  c.data.augment = True  # aug_intensity=True in every SADM experiment
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 5e-5
  c.train.batch_size = 32
  c.train.num_epochs = 600
  if arg == "tiny":
    cddpm.apply_tiny(c)
    c.sadm.segnet_wf = 3  # widths 8..64
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected 'tiny' or nothing")
  return c


def get_config(arg: str | None = None):
  return sadm_config("draem", arg)
