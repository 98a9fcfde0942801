"""Evaluation test helpers; the session's evaluation of its tiny runs is `evaluation` (tests/conftest.py)."""

from __future__ import annotations

import pytest

from configs import evaluate as evaluate_config
from tests.helpers import with_data


@pytest.fixture(scope="session")
def eval_data_dir(tiny_data_dir) -> str:
  """The session's fake data (tests/conftest.py)."""
  return tiny_data_dir


def evaluate_tiny_config(data_dir: str, cddpm_dir: str, sadm_dirs=()):
  c = with_data(evaluate_config.get_config("tiny"), data_dir)
  c.evaluate.cddpm_workdir = cddpm_dir
  c.evaluate.sadm_workdirs = tuple(sadm_dirs)
  return c


def copy_data(data_dir: str, dest: str, edits: dict | None = None) -> str:
  """A copy of the fake data's Data/ under `dest` (its own preprocessing cache), with each split
  CSV named in `edits` (file name -> function of its text) edited; returns the new data dir."""
  import os
  import shutil
  shutil.copytree(os.path.join(data_dir, "Data"), os.path.join(dest, "Data"))
  for name, edit in (edits or {}).items():
    edit_split(dest, name, edit)
  return dest


def edit_split(data_dir: str, name: str, edit) -> str:
  """Rewrites split CSV `name` of `data_dir` as `edit(text)`; returns its path."""
  import os
  path = os.path.join(data_dir, "Data", "splits", name)
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(edit(text))
  return path


def threshold_only(data_dir: str, test_sets=("Brats21",)):
  """The intensity-threshold baseline alone (no model) on `test_sets`, no healthy IXI passes."""
  c = evaluate_tiny_config(data_dir, "")
  c.evaluate.methods, c.evaluate.test_sets = ("threshold",), tuple(test_sets)
  c.evaluate.include_ixi = False
  return c
