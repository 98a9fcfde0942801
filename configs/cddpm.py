"""Stage I-b: conditioned DDPM (ResNet-50 encoder + ADM UNet) on healthy IXI T1 slices (METHOD §3.2–3.5).

    python -m sadm_jax.main --config=configs/cddpm.py --workdir=W --config.data.data_dir=D
    python -m sadm_jax.main --config=configs/cddpm.py:tiny --workdir=W --config.data.data_dir=D
Initialise E from SparK with --config.model.encoder.pretrained_workdir=<spark workdir>.
"""

from configs import default


def apply_tiny(c):
  """Shrinks data, models and schedule so a run takes a minute or two on a laptop CPU, mostly
  compiling (used by the tests)."""
  c.data.preprocess.crop_size = (128, 128, 16)  # -> 64×64×8 working grid (SparK needs 2×2 patches)
  c.data.num_workers = 0
  c.data.val_slices_per_volume = 2
  c.model.unet.model_channels = 16
  c.model.unet.channel_mult = (1, 2)
  c.model.unet.num_res_blocks = 1
  c.model.unet.num_head_channels = 16
  c.model.unet.num_groups = 8
  c.model.encoder.stage_sizes = (1, 1, 1, 1)
  c.model.encoder.width = 8
  c.model.encoder.cond_dim = 32
  c.model.spark.decoder_width = 64
  c.diffusion.octaves = 3
  c.diffusion.frequency = 16.0
  c.train.batch_size = 8
  c.train.num_steps = 12
  c.train.log_every = 1
  c.train.eval_every = 6
  c.train.checkpoint_every = 3
  c.train.tensorboard = False
  return c


def get_config(arg: str | None = None):
  c = default.get_config()
  c.stage = "cddpm"
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-4
  c.train.batch_size = 32
  c.train.num_epochs = 1200
  if arg == "tiny":
    apply_tiny(c)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected 'tiny' or nothing")
  return c
