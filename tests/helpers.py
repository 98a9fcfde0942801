"""Small helpers shared by test modules and fixtures (no fixtures here: see conftest.py)."""

from __future__ import annotations

import os


def with_data(c, data_dir: str):
  """`c` reading the fake data under `data_dir` (its own cache), synchronous checkpoints."""
  c.data.data_dir = data_dir
  c.data.cache_dir = os.path.join(data_dir, "cache")
  c.train.async_checkpoints = False
  return c
