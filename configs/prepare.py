"""Prepare stage: validate every split under DATA_DIR, preprocess and cache all volumes, summarise.

    python -m sadm_jax.main --config=configs/prepare.py --workdir=W --config.data.data_dir=D
"""

from configs import default


def get_config(arg: str | None = None):
  c = default.get_config()
  c.stage = "prepare"
  if arg == "tiny":
    c.data.num_workers = 0
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected 'tiny' or nothing")
  return c
