"""Healthy IXI slice tables and loaders shared by the SparK and cDDPM training tasks (METHOD §2.2)."""

from __future__ import annotations

import ml_collections

from sadm_jax import config as config_lib
from sadm_jax.data import augment as augment_lib
from sadm_jax.data import cache as cache_lib, pipeline, prepare
from sadm_jax.data.errors import DataError
from sadm_jax.train import loop
from sadm_jax.train.state import make_optimizer


def ixi_tables(config: ml_collections.ConfigDict) -> tuple[pipeline.SliceTable, pipeline.SliceTable]:
  """Validated, cached IXI train/val tables of `data.fold`."""
  fold = config.data.fold
  names = [f"IXI_train_fold{fold}", f"IXI_val_fold{fold}"]
  root, splits, hygiene, skipped = config_lib.load_valid_splits(config, names)
  for n in names:  # grain's "Invalid number of records in Sampler" named neither split nor why
    if not splits[n]:
      use = "validate" if "_val_" in n else "train"
      raise DataError(f"{root.split_csv(n)}: no volume left to {use} on: "
                      f"{prepare.why_empty(n, hygiene, skipped)}")
  cfg = config_lib.preprocess_config(config)
  cache_dir = config_lib.cache_dir(config)
  for n in names:
    cache_lib.ensure_cached(splits[n], cache_dir, cfg, num_workers=config.data.num_workers)
  cache = cache_lib.VolumeCache(cache_dir, cfg)
  return tuple(pipeline.SliceTable.from_rows(cache, splits[n]) for n in names)


def train_loader_kwargs(config, augment, seed: int, local_bs: int, shard_index: int,
                        shard_count: int) -> dict:
  """`pipeline.train_loader` keyword arguments of a stage's training batches, from `config.data`
  (sampling, augmentation, grain workers, reader threads and read-ahead) and the loop's shard."""
  d = config.data
  return dict(batch_size=local_bs, seed=seed, sampling=d.slice_sampling, augment=augment,
              augment_3d=bool(d.augment_3d), worker_count=d.loader_workers,
              shard_index=shard_index, shard_count=shard_count, read_threads=d.loader_threads,
              prefetch=d.prefetch_batches * local_bs)


def loaders(config, train_table, val_table, augment: bool, seed: int):
  """(train_loader, val_batches) callables of the loop's `Task` over IXI slice tables."""
  aug = augment_lib.IntensityAugConfig() if augment else None

  def train_loader(local_bs, shard_index, shard_count):
    return pipeline.train_loader(train_table, **train_loader_kwargs(
        config, aug, seed, local_bs, shard_index, shard_count))

  def val_batches(local_bs, shard_index, shard_count):
    return list(pipeline.validation_loader(val_table, batch_size=local_bs,
                                           slices_per_volume=config.data.val_slices_per_volume,
                                           shard_index=shard_index, shard_count=shard_count))

  return train_loader, val_batches


def ixi_task(name, config, init, loss_fn, tables, data: bool,
             init_inputs: tuple = ()) -> loop.Task:
  """A task on healthy IXI slices; without `data` only model/loss/optimiser (for restoring).

  init_inputs: arrays `init` reads after the key (`loop.Task.init_inputs`)."""
  train_table, val_table = (tables or ixi_tables(config)) if data else (None, None)
  train_loader, val_batches = (loaders(config, train_table, val_table, config.data.augment,
                                       int(config.seed)) if data else (None, None))
  meta = {"orientation": train_table.orientation(),
          "data": pipeline.data_identity(train_table, val_table)} if data else {}
  return loop.Task(name=name, init_variables=init, loss_fn=loss_fn,
                   tx=make_optimizer(config.optimizer), train_loader=train_loader,
                   val_batches=val_batches, num_train_volumes=len(train_table) if data else 0,
                   init_inputs=init_inputs, meta=meta)
