"""Small helpers shared by test modules and fixtures (no fixtures here: see conftest.py)."""

from __future__ import annotations

import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def with_data(c, data_dir: str):
  """`c` reading the fake data under `data_dir` (its own cache), synchronous checkpoints."""
  c.data.data_dir = data_dir
  c.data.cache_dir = os.path.join(data_dir, "cache")
  c.train.async_checkpoints = False
  return c


def metric_series(workdir: str, key: str = "train/loss") -> list[tuple[int, float]]:
  """[(step, value)] of `key` (e.g. 'train/loss', 'val/loss') in a run's metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], r[key]) for r in map(json.loads, f) if key in r]


def random_variables(init, *args, seed: int = 0, scale: float = 0.05):
  """Variables shaped like `init(key, *args)`, drawn on the host: nothing is compiled.

  `jax.eval_shape` gives the tree; kernels are N(0, 1/fan_in), norm scales 1 + N(0, scale²),
  batch-stat means 0 and variances 1, every other leaf N(0, scale²) (so no output layer is zero).
  A jitted `init` costs 10–30 s of XLA:CPU compilation (one threefry loop per parameter).
  """
  import jax
  import numpy as np
  shapes = jax.eval_shape(lambda k: init(k, *args), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "kernel":
      x = rng.normal(0, 1 / np.sqrt(max(1, int(np.prod(leaf.shape[:-1])))), leaf.shape)
    elif name == "scale":
      x = 1 + scale * rng.normal(size=leaf.shape)
    elif name == "var":
      x = np.ones(leaf.shape)
    elif name == "mean":
      x = np.zeros(leaf.shape)
    else:
      x = scale * rng.normal(size=leaf.shape)
    return jax.numpy.asarray(x.astype(leaf.dtype))

  return jax.tree_util.tree_map_with_path(fill, shapes)
