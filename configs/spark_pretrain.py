"""Stage I-a: SparK masked-image pretraining of the 1-channel ResNet-50 encoder (METHOD §3.1).

    python -m sadm_jax.main --config=configs/spark_pretrain.py --workdir=W --config.data.data_dir=D
"""

from configs import cddpm, default


def get_config(arg: str | None = None):
  c = default.get_config()
  c.stage = "spark"
  c.model.names = ("spark",)
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.weight_decay = 0.05
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.95
  c.data.augment = False  # SparK pretraining uses no augmentation
  c.train.batch_size = 32
  c.train.num_epochs = 1200
  if arg == "tiny":
    cddpm.apply_tiny(c)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected 'tiny' or nothing")
  return c
