"""Stage I tasks for the generic loop: SparK masked pretraining and cDDPM training on healthy IXI slices."""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections

from sadm_jax import config as config_lib
from sadm_jax.data import augment as augment_lib
from sadm_jax.data import cache as cache_lib, pipeline, prepare
from sadm_jax.diffusion import noise as noise_lib, schedule as schedule_lib
from sadm_jax.models import cddpm as cddpm_lib, spark as spark_lib, transfer
from sadm_jax.train import loop
from sadm_jax.train.state import make_optimizer


def ixi_tables(config: ml_collections.ConfigDict) -> tuple[pipeline.SliceTable, pipeline.SliceTable]:
  """Validated, cached IXI train/val tables of `data.fold` (METHOD §2.2)."""
  fold = config.data.fold
  names = [f"IXI_train_fold{fold}", f"IXI_val_fold{fold}"]
  _, splits, _, _ = prepare.load_valid_splits(config, names)
  cfg = config_lib.preprocess_config(config)
  cache_dir = config_lib.cache_dir(config)
  for n in names:
    cache_lib.ensure_cached(splits[n], cache_dir, cfg, num_workers=config.data.num_workers)
  cache = cache_lib.VolumeCache(cache_dir, cfg)
  return tuple(pipeline.SliceTable.from_rows(cache, splits[n]) for n in names)


def _loaders(config, train_table, val_table, augment: bool):
  aug = augment_lib.IntensityAugConfig() if augment else None

  def train_loader(local_bs, shard_index, shard_count):
    return pipeline.train_loader(train_table, batch_size=local_bs, seed=config.seed,
                                 sampling=config.data.slice_sampling, augment=aug,
                                 augment_3d=bool(config.data.augment_3d),
                                 worker_count=config.data.loader_workers,
                                 shard_index=shard_index, shard_count=shard_count)

  def val_batches(local_bs, shard_index, shard_count):
    return list(pipeline.validation_loader(val_table, batch_size=local_bs,
                                           slices_per_volume=config.data.val_slices_per_volume,
                                           shard_index=shard_index, shard_count=shard_count))

  return train_loader, val_batches


def _ixi_task(name, config, init, loss_fn, tables, data: bool) -> loop.Task:
  """A stage-I task on IXI slices; without `data` only model/loss/optimiser (for restoring)."""
  train_table, val_table = (tables or ixi_tables(config)) if data else (None, None)
  train_loader, val_batches = (_loaders(config, train_table, val_table, config.data.augment)
                               if data else (None, None))
  return loop.Task(name=name, init_variables=init, loss_fn=loss_fn,
                   tx=make_optimizer(config.optimizer), train_loader=train_loader,
                   val_batches=val_batches, num_train_volumes=len(train_table) if data else 0)


def make_schedule(config: ml_collections.ConfigDict) -> schedule_lib.Schedule:
  d = config.diffusion
  return schedule_lib.cosine_schedule(d.num_timesteps, s=d.cosine_s, max_beta=d.max_beta)


def noise_fn(config: ml_collections.ConfigDict):
  """key, shape -> noise field(s) per `config.diffusion` (independent per sample unless shared)."""
  d = config.diffusion

  def sample(key, shape):
    return noise_lib.sample_noise(key, shape, **noise_lib.config_kwargs(d))

  return sample


def cddpm_loss_fn(config: ml_collections.ConfigDict, model: cddpm_lib.CDDPM):
  """Pred-x0 L1 loss with random t per sample and (simplex) noise generated on device."""
  sched = make_schedule(config)
  sample_noise = noise_fn(config)
  num_t = config.diffusion.num_timesteps

  def loss_fn(params, batch_stats, batch, key, train):
    x = batch["image"]  # [B, H, W, 1] in [0, 1]
    k_t, k_noise, k_drop = jax.random.split(key, 3)
    t = jax.random.randint(k_t, (x.shape[0],), 0, num_t)
    x0 = schedule_lib.to_model_space(x)
    x_t = schedule_lib.q_sample(sched, x0, t, sample_noise(k_noise, x.shape))
    variables = {"params": params, "batch_stats": batch_stats}
    if train:
      pred, updates = model.apply(variables, x, x_t, t, train=True, rngs={"dropout": k_drop},
                                  mutable=["batch_stats"])
      new_stats = updates["batch_stats"]
    else:
      pred, new_stats = model.apply(variables, x, x_t, t, train=False), batch_stats
    _, per_sample = schedule_lib.pred_x0_l1_loss(pred.astype(jnp.float32), x0, t, sched,
                                                 p2_gamma=config.diffusion.p2_gamma)
    return per_sample, (new_stats, {})

  return loss_fn


def _init_cddpm(config, model):
  res = _slice_size(config)

  def init(key):
    x = jnp.zeros((1, res, res, 1), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    variables = model.init({"params": key, "dropout": key}, x, x, t, train=False)
    return {"params": variables["params"], "model_state": variables.get("batch_stats", {})}

  return init


def _slice_size(config) -> int:
  p = config.data.preprocess
  return -(-p.crop_size[0] // p.downsample)


def cddpm_task(config: ml_collections.ConfigDict, tables=None, data: bool = True) -> loop.Task:
  """The cDDPM task; `data=False` builds only model/optimiser (for restoring a checkpoint)."""
  model = cddpm_lib.build_cddpm(config)
  init = _init_cddpm(config, model)
  if data and config.model.encoder.pretrained_workdir:
    init = _with_pretrained_encoder(config, init)
  return _ixi_task("cddpm", config, init, cddpm_loss_fn(config, model), tables, data)


def _with_pretrained_encoder(config, init):
  """Initialises E from a SparK workdir's best checkpoint (strict key check, Q8)."""
  spark_vars = load_spark_variables(config, config.model.encoder.pretrained_workdir)

  def init_pretrained(key):
    v = init(key)
    enc = {"params": v["params"]["encoder"], "batch_stats": v["model_state"]["encoder"]}
    enc = transfer.load_spark_backbone_into_encoder(enc, spark_vars)
    return {"params": {**v["params"], "encoder": enc["params"]},
            "model_state": {**v["model_state"], "encoder": enc["batch_stats"]}}

  return init_pretrained


def load_best_variables(workdir: str, task_name: str, which: str = "best"
                        ) -> tuple[ml_collections.ConfigDict, dict]:
  """(saved config, {'params', 'batch_stats'}) of a stage-I run, as host arrays.

  The model is rebuilt from the config saved in the checkpoint, so the caller's config (other
  optimiser, other model names) need not match. `which`: 'best' (lowest validation loss) or
  'latest'. Raises FileNotFoundError / ValueError naming the workdir when it is not such a run.
  """
  from sadm_jax.train.checkpoint import restore_run
  builder = {"spark": spark_task, "cddpm": cddpm_task}[task_name]
  config, state = restore_run(workdir, task_name, builder, which)
  return config, {"params": state.params, "batch_stats": state.model_state}


def load_spark_variables(config, workdir: str) -> dict:
  """{'params', 'batch_stats'} of a SparK run's best checkpoint (for the encoder transfer)."""
  del config
  if not os.path.isdir(os.path.join(workdir, "best")):
    raise FileNotFoundError(f"model.encoder.pretrained_workdir={workdir}: no SparK best "
                            f"checkpoint ({workdir}/best) found")
  return load_best_variables(workdir, "spark")[1]


def spark_loss_fn(config: ml_collections.ConfigDict, model: spark_lib.SparK):
  keep = spark_lib.keep_count(mask_ratio=config.model.spark.mask_ratio)

  def loss_fn(params, batch_stats, batch, key, train):
    x = batch["image"]  # [B, H, W, 1]
    k_mask, k_drop = jax.random.split(key)
    grid = (x.shape[1] // 32, x.shape[2] // 32)
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


def build_spark(config) -> spark_lib.SparK:
  e = config.model.encoder
  return spark_lib.SparK(drop_path_rate=e.drop_path_rate, stage_sizes=tuple(e.stage_sizes),
                         width=e.width, decoder_width=config.model.spark.decoder_width,
                         dtype=cddpm_lib.dtype_of(config))


def spark_task(config: ml_collections.ConfigDict, tables=None, data: bool = True) -> loop.Task:
  """The SparK task; `data=False` builds only model/optimiser (for restoring a checkpoint)."""
  model = build_spark(config)
  res = _slice_size(config)
  grid = res // 32

  def init(key):
    x = jnp.zeros((1, res, res, 1), jnp.float32)
    active = jnp.ones((1, grid, grid), bool)
    v = model.init({"params": key, "dropout": key}, x, active, train=False)
    return {"params": v["params"], "model_state": v.get("batch_stats", {})}

  return _ixi_task("spark", config, init, spark_loss_fn(config, model), tables, data)


def run_cddpm(config: ml_collections.ConfigDict, workdir: str) -> dict:
  config = config_lib.resolve(config)
  result = loop.train(config, workdir, cddpm_task(config))
  if jax.process_index() == 0:
    print(f"cDDPM training done: {result}")
  return result


def run_spark(config: ml_collections.ConfigDict, workdir: str) -> dict:
  config = config_lib.resolve(config)
  result = loop.train(config, workdir, spark_task(config))
  if jax.process_index() == 0:
    print(f"SparK pretraining done: {result}")
  return result
