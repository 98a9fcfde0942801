"""Session fixtures of the evaluation tests: one evaluation of the session's tiny runs (tests/conftest.py)."""

from __future__ import annotations

import pytest

from configs import evaluate as evaluate_config
from sadm_jax import main as main_lib
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


@pytest.fixture(scope="session")
def evaluation(eval_data_dir, tiny_cddpm_dir, tiny_sadm_dir, tmp_path_factory):
  """(workdir, summary) of one full evaluation: threshold + cDDPM + SADM on every fake data set."""
  workdir = str(tmp_path_factory.mktemp("evaluation"))
  c = evaluate_tiny_config(eval_data_dir, tiny_cddpm_dir, [tiny_sadm_dir])
  summary = main_lib.run_stage(c, workdir)
  return workdir, summary
