"""Session fixtures of the evaluation tests: fake data, tiny cDDPM and SADM runs, one evaluation."""

from __future__ import annotations

import os

import pytest

from configs import cddpm as cddpm_config
from configs import evaluate as evaluate_config
from sadm_jax import main as main_lib
from tests.data import fake_data


def with_data(c, data_dir: str):
  c.data.data_dir = data_dir
  c.data.cache_dir = os.path.join(data_dir, "cache")
  c.train.async_checkpoints = False
  return c


@pytest.fixture(scope="session")
def eval_data_dir(tmp_path_factory) -> str:
  root = str(tmp_path_factory.mktemp("eval_data"))
  fake_data.write_data_dir(root, n_ixi=8, n_patho=3)
  return root


@pytest.fixture(scope="session")
def tiny_cddpm_dir(eval_data_dir, tmp_path_factory) -> str:
  """A tiny cDDPM trained for 2 steps (its weights only need to be a real stage-I checkpoint)."""
  workdir = str(tmp_path_factory.mktemp("cddpm"))
  c = with_data(cddpm_config.get_config("tiny"), eval_data_dir)
  c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = 2
  main_lib.run_stage(c, workdir)
  return workdir


@pytest.fixture(scope="session")
def tiny_sadm_dir(eval_data_dir, tiny_cddpm_dir, tmp_path_factory) -> str:
  """A tiny SADM-DRAEM run (stage II) on the tiny cDDPM, 2 steps."""
  pytest.importorskip("sadm_jax.train.sadm", reason="SADM training not available")
  sadm_draem = pytest.importorskip("configs.sadm_draem")
  workdir = str(tmp_path_factory.mktemp("sadm"))
  c = with_data(sadm_draem.get_config("tiny"), eval_data_dir)
  c.sadm.cddpm_workdir = tiny_cddpm_dir
  c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = 2
  main_lib.run_stage(c, workdir)
  return workdir


def evaluate_tiny_config(data_dir: str, cddpm_dir: str, sadm_dirs=()):
  c = with_data(evaluate_config.get_config("tiny"), data_dir)
  c.evaluate.cddpm_workdir = cddpm_dir
  c.evaluate.sadm_workdirs = tuple(sadm_dirs)
  return c


@pytest.fixture(scope="session")
def evaluation(eval_data_dir, tiny_cddpm_dir, tiny_sadm_dir, tmp_path_factory):
  """(workdir, summary) of one full evaluation: threshold + cDDPM + SADM on every fake data set."""
  workdir = str(tmp_path_factory.mktemp("evaluation"))
  c = evaluate_tiny_config(eval_data_dir, tiny_cddpm_dir, [tiny_sadm_dir])
  summary = main_lib.run_stage(c, workdir)
  return workdir, summary
