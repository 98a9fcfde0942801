"""Sweep test helpers: the shipped tiny sweep, a tiny member spec, and writing a sweep file."""

import os

from tests.helpers import REPO

TINY = os.path.join(REPO, "configs", "sweeps", "tiny_demo.py")
CDDPM = "configs/cddpm.py:tiny"


def write_sweep(path, members_src):
  """Writes a sweep file at `path` whose get_sweep() returns [members_src]; its path."""
  path.write_text("from sadm_jax.sweeps import Member\n\n\ndef get_sweep():\n"
                  f"  return [{members_src}]\n")
  return str(path)
