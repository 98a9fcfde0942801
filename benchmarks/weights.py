"""Random network variables drawn on the host, for benchmarks and tests: nothing is compiled."""

from __future__ import annotations

import jax
import numpy as np


def random_variables(init, *args, seed: int = 0, scale: float = 0.05):
  """Variables shaped like `init(key, *args)` with nonzero random values, drawn with numpy.

  `jax.eval_shape` gives the tree; kernels are N(0, 1/fan_in), norm scales 1 + N(0, scale²),
  batch-stat means 0 and variances 1, every other leaf N(0, scale²) (so no zero-initialised output
  layer stays zero). A jitted `init` costs 10–30 s of XLA:CPU compilation (one threefry loop per
  parameter), and drawing leaf by leaf with `jax.random` one compilation per distinct shape; this
  costs neither (each leaf is cast by numpy and put on the device with `jax.device_put`:
  `jnp.asarray` would compile a one-op copy program per shape). `init` may be a module's `init` or
  any function of one PRNG key.
  """
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
    return jax.device_put(x.astype(leaf.dtype))

  return jax.tree_util.tree_map_with_path(fill, shapes)
