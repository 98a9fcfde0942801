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
