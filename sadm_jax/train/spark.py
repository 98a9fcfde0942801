"""SparK masked-image pretraining task for the conditioning encoder's ResNet-50 backbone (METHOD §3.1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from sadm_jax import config as config_lib
from sadm_jax.models import factory, spark as spark_lib
from sadm_jax.train import ixi, loop

TASK_NAME = "spark"


def spark_loss_fn(config: ml_collections.ConfigDict, model: spark_lib.SparK):
  """Per-sample masked reconstruction loss with a random active-patch mask per sample; the
  visible patch count is round(h·w·(1 − mask_ratio)) of the slices' own h×w grid (3 of 3×3 at
  96 px)."""
  mask_ratio = float(config.model.spark.mask_ratio)

  def loss_fn(params, batch_stats, batch, key, train, frozen=None):
    del frozen
    x = batch["image"]  # [B, H, W, 1]
    k_mask, k_drop = jax.random.split(key)
    grid = spark_lib.spark_grid(x.shape[1], x.shape[2])
    keep = spark_lib.keep_count(grid, mask_ratio)
    active = spark_lib.random_active_mask(k_mask, x.shape[0], grid=grid, keep=keep)
    variables = {"params": params, "batch_stats": batch_stats}
    if train:
      recon, updates = model.apply(variables, x, active, train=True, rngs={"dropout": k_drop},
                                   mutable=["batch_stats"])
      new_stats = updates["batch_stats"]
    else:
      recon, new_stats = model.apply(variables, x, active, train=False), batch_stats
    per_sample = jax.vmap(lambda a, b, m: spark_lib.spark_loss(a[None], b[None], m[None]))(
        x, recon.astype(jnp.float32), active)
    return per_sample, (new_stats, {})

  return loss_fn


def spark_task(config: ml_collections.ConfigDict, tables=None, data: bool = True) -> loop.Task:
  """The SparK task; `data=False` builds only model/optimiser (for restoring a checkpoint)."""
  config = config_lib.resolve(config)
  model = factory.build_spark(config)
  res = factory.slice_size(config)
  grid = res // 32

  def init(key):
    x = jnp.zeros((1, res, res, 1), jnp.float32)
    active = jnp.ones((1, grid, grid), bool)
    v = model.init({"params": key, "dropout": key}, x, active, train=False)
    return {"params": v["params"], "model_state": v.get("batch_stats", {})}

  return ixi.ixi_task(TASK_NAME, config, init, spark_loss_fn(config, model), tables, data)


def run_spark(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`stage=spark`: pretrains the encoder backbone (resuming from `workdir` if possible)."""
  result = loop.train(config, workdir, lambda: spark_task(config))  # built once claimed
  if jax.process_index() == 0:
    print(f"SparK pretraining done: {result}")
  return result
