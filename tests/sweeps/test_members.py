"""Sweep files that cannot run are refused in one line naming the file (sweeps.members.load_sweep)."""

import pytest

from sadm_jax.sweeps import members as members_lib


def test_a_sweep_with_no_members_is_refused(tmp_path):
  """An empty list (e.g. a filter that matched nothing) ran nothing and exited 0 without a word."""
  path = tmp_path / "empty.py"
  path.write_text("def get_sweep():\n  return [m for m in [] if m]\n")
  with pytest.raises(ValueError, match=rf"^{path}: get_sweep\(\) returned no members: nothing to "
                                       r"run$"):
    members_lib.load_sweep(str(path))
