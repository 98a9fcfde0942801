"""The main job on the embedded demo cohort (built from the MNI152 template shipped with nilearn).

    python -m sadm_jax.main --config=configs/demo.py --workdir=runs/demo
    python -m sadm_jax.main --config=configs/demo.py:tiny --workdir=/tmp/demo   # seconds, for tests
"""

from configs import default


def get_config(arg: str | None = None):
  c = default.get_config()
  c.stage = "demo"
  if arg == "tiny":
    c.demo.size = "tiny"
    c.data.num_workers = 0
  return c
