"""The SparK task hides `model.spark.mask_ratio` of the patch grid the slices actually have (not of a 3×3 grid)."""

import jax
import jax.numpy as jnp
import pytest

from configs import spark_pretrain
from sadm_jax import config as config_lib
from sadm_jax.models import spark as spark_lib
from sadm_jax.train import spark as spark_train


class _Identity:
  """Stands in for the SparK model: returns its input, so only the mask draw is exercised."""

  def apply(self, variables, x, active, train, **kwargs):
    del variables, active, train
    return (x, {"batch_stats": {}}) if kwargs.get("mutable") else x


@pytest.mark.parametrize("side,ratio,visible", [(96, 0.65, 3), (64, 0.65, 1), (128, 0.65, 6),
                                                (64, 0.25, 3)])
def test_visible_patches_follow_the_grid_of_the_slices(monkeypatch, side, ratio, visible):
  # round(h·w·(1 − mask_ratio)) patches stay visible per image: 3 of 3×3 at the paper's 96 px,
  # 1 of 2×2 at 64 px (the tiny and demo grids), 6 of 4×4 at 128 px.
  c = config_lib.resolve(spark_pretrain.get_config())
  c.model.spark.mask_ratio = ratio
  seen = {}
  draw = spark_lib.random_active_mask

  def spy(key, batch, grid=(3, 3), keep=3):
    seen.update(grid=grid, keep=keep)
    return draw(key, batch, grid=grid, keep=keep)

  monkeypatch.setattr(spark_lib, "random_active_mask", spy)
  loss_fn = spark_train.spark_loss_fn(c, _Identity())
  x = jnp.zeros((2, side, side, 1))
  loss_fn({}, {}, {"image": x}, jax.random.key(0), False)
  assert seen == {"grid": (side // 32, side // 32), "keep": visible}
  assert spark_lib.keep_count((side // 32, side // 32), ratio) == visible
