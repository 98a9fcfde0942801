"""Evaluation and predict test helpers; the session's evaluation of its tiny runs is `evaluation` (tests/conftest.py)."""

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


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
  """A fake pathological scan (1 mm, shifted origin) with its brain mask."""
  import numpy as np
  from tests.data import fake_data
  d = tmp_path_factory.mktemp("scan")
  image, mask, seg = fake_data.make_subject(np.random.default_rng(5), lesion=True)
  affine = np.diag([-1.0, 1.0, 1.0, 1.0])
  affine[:3, 3] = (20.0, -30.0, 12.0)
  paths = {"image": str(d / "sub-01_T1w.nii.gz"), "mask": str(d / "sub-01_mask.nii.gz"),
           "dir": str(d)}
  fake_data.save(paths["image"], image, affine)
  fake_data.save(paths["mask"], mask, affine)
  return paths


def scan_config(checkpoint_dir, scan_paths, out, **predict_fields):
  """The predict config of `checkpoint_dir` on `scan_paths` ('image', optional 'mask'), writing
  to `out`, with `predict_fields` set."""
  from configs import predict as predict_config
  c = predict_config.get_config()
  c.predict.checkpoint_dir = checkpoint_dir
  c.predict.input = scan_paths["image"]
  c.predict.mask = scan_paths.get("mask", "")
  c.predict.output = str(out)
  for k, v in predict_fields.items():
    c.predict[k] = v
  return c
