"""SADM training task (METHOD §3.8): the SegUnet trained on (x_ano, x̂) against a frozen, referenced cDDPM."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sadm_jax import config as config_lib
from sadm_jax.anomaly import pipeline as anomaly_pipeline
from sadm_jax.data import augment as augment_lib
from sadm_jax.data import cache as cache_lib, pipeline
from sadm_jax.diffusion import reconstruct as reconstruct_lib, schedule as schedule_lib
from sadm_jax.models import cddpm as cddpm_lib, factory, seg_losses
from sadm_jax.models.segnet import SegUnet
from sadm_jax.train import cddpm as cddpm_task_lib, ixi, loop
from sadm_jax.train.state import make_optimizer

# Layout of a SADM run (METHOD §3.8):
#   params:      the SegUnet's parameters, the only optimised variables;
#   model_state: {} — or, with `sadm.frozen_train_mode` (faithful Q6), {'cddpm_batch_stats': …}:
#                the frozen encoder's BatchNorm statistics as they drift during training;
#   frozen:      the cDDPM's {'params', 'batch_stats'}, opened from `sadm.cddpm_workdir` through
#                `runs.open_run`, passed to every step as an argument (never a constant of the
#                program, never re-saved). The run metadata records its workdir, step and weight
#                fingerprint; reopening the SADM run refuses when those weights changed or are gone.

TASK_NAME = "sadm"
# mode -> (split, reference train rows [start, stop), reference validation rows) (METHOD §2.2)
WEAK_SPLITS = {"brats": ("Brats21_val", (10, 100), (0, 10)),
               "atlas": ("ATLAS_v2_val", (6, 175), (0, 6))}
MODES = ("draem",) + tuple(WEAK_SPLITS)
LOSSES = ("bce", "dice")


uses_residual = factory.uses_residual


def effective_seed(seed: int, repeat: int) -> int:
  """Seed of repeat `repeat` (Q18: weakly supervised "folds" are repeats); repeat 0 = `seed`."""
  if not repeat:
    return int(seed)
  return int(np.random.SeedSequence([int(seed), int(repeat)]).generate_state(1)[0] >> 1)


# ---- data ----

def weak_row_ranges(mode: str, num_rows: int, train_rows=None, val_rows=None
                    ) -> tuple[tuple[int, int], tuple[int, int]]:
  """[start, stop) row ranges (train, val) of `<set>_val.csv` for weak supervision.

  Explicit `train_rows` / `val_rows` (config `sadm.weak_train_rows` / `weak_val_rows`) are used
  as given and must lie within the split. Otherwise the reference rows (BraTS: train 10–99,
  val 0–9; ATLAS: train 6–174, val 0–5) are clipped to the `num_rows` available; when the split
  is too short to keep any reference training row (e.g. the demo cohort), the first
  max(1, round(num_rows · val/train fraction of the reference)) rows (at most num_rows − 1) are
  held out for validation and the rest train. Train and val must be non-empty and disjoint.
  """
  if mode not in WEAK_SPLITS:
    raise ValueError(f"sadm.mode={mode!r} is not a weak-supervision mode {tuple(WEAK_SPLITS)}")
  split, (t0, t1), (v0, v1) = WEAK_SPLITS[mode]
  if num_rows < 2:
    raise ValueError(f"{split}: {num_rows} row(s); weak supervision needs >= 2 (train + val)")
  if train_rows is None and val_rows is None and num_rows <= t0:
    n_val = min(num_rows - 1, max(1, round(num_rows * (v1 - v0) / t1)))
    train, val = (n_val, num_rows), (0, n_val)
  else:
    train = tuple(int(r) for r in train_rows) if train_rows is not None else (t0, min(t1, num_rows))
    val = tuple(int(r) for r in val_rows) if val_rows is not None else (v0, min(v1, num_rows))
  for name, (a, b) in (("weak_train_rows", train), ("weak_val_rows", val)):
    if not 0 <= a < b <= num_rows:
      raise ValueError(f"sadm.{name}={(a, b)}: not a non-empty [start, stop) range within the "
                       f"{num_rows} rows of {split}")
  if train[0] < val[1] and val[0] < train[1]:
    raise ValueError(f"sadm.weak_train_rows={train} and weak_val_rows={val} overlap ({split})")
  return train, val


def sadm_tables(config: ml_collections.ConfigDict
                ) -> tuple[pipeline.SliceTable, pipeline.SliceTable]:
  """Cached (train, val) slice tables of `sadm.mode` (METHOD §2.2)."""
  mode = config.sadm.mode
  if mode == "draem":
    return ixi.ixi_tables(config)
  split = WEAK_SPLITS[mode][0]
  _, splits, _, _ = config_lib.load_valid_splits(config, [split])
  rows = splits[split]
  train, val = weak_row_ranges(mode, len(rows), config.sadm.weak_train_rows,
                               config.sadm.weak_val_rows)
  train_rows, val_rows = rows[slice(*train)], rows[slice(*val)]
  logging.info("%s: training on rows %s, validating on rows %s", split, train, val)
  cfg = config_lib.preprocess_config(config)
  cache_dir = config_lib.cache_dir(config)
  cache_lib.ensure_cached(train_rows + val_rows, cache_dir, cfg,
                          num_workers=config.data.num_workers)
  cache = cache_lib.VolumeCache(cache_dir, cfg)
  return (pipeline.SliceTable.from_rows(cache, train_rows),
          pipeline.SliceTable.from_rows(cache, val_rows))


def _loaders(config, train_table, val_table, seed: int):
  """(train_loader, val_batches) for the loop: anomalous IXI slices, or real lesions (seg > 0)."""
  aug = augment_lib.IntensityAugConfig() if config.data.augment else None
  draem = anomaly_pipeline.draem_config(config) if config.sadm.mode == "draem" else None

  def train_loader(local_bs, shard_index, shard_count):
    kw = ixi.train_loader_kwargs(config, aug, seed, local_bs, shard_index, shard_count)
    if draem is not None:
      return anomaly_pipeline.draem_train_loader(train_table, draem, **kw)
    return pipeline.train_loader(train_table, **kw)

  def val_batches(local_bs, shard_index, shard_count):
    kw = dict(batch_size=local_bs, slices_per_volume=config.data.val_slices_per_volume,
              shard_index=shard_index, shard_count=shard_count)
    if draem is not None:
      return list(anomaly_pipeline.draem_validation_loader(val_table, draem, seed=seed,
                                                           **kw))
    return list(pipeline.validation_loader(val_table, **kw))

  return train_loader, val_batches


# ---- the frozen cDDPM ----

def open_cddpm(config: ml_collections.ConfigDict):
  """The stage-I cDDPM run of `sadm.cddpm_workdir` (`runs.Run`), opened once."""
  from sadm_jax.train.runs import open_run
  workdir = config.sadm.cddpm_workdir
  if not workdir:
    raise ValueError("sadm.cddpm_workdir is not set: stage II needs the workdir of a trained "
                     "cDDPM (stage=cddpm), or sadm.use_cddpm=False for the plain-UNet ablation")
  return open_run(workdir, expect="cddpm", setting="sadm.cddpm_workdir")


# The diffusion fields that describe the noise and schedule a cDDPM was trained with: a SADM run
# reconstructs with its frozen cDDPM's own (read from the cDDPM's saved config, as evaluation
# reads them: `evaluate.inference.NoiseSpec`); noise sharing and the ensemble are the SADM's own.
CDDPM_DIFFUSION = ("num_timesteps", "cosine_s", "max_beta", "noise", "octaves", "persistence",
                   "frequency", "aligned_octaves", "float16_noise")
_ABSENT_FALSE = ("aligned_octaves", "float16_noise")  # fields older runs lack: they trained without


def with_cddpm_diffusion(config: ml_collections.ConfigDict, cddpm_config: ml_collections.ConfigDict
                         ) -> ml_collections.ConfigDict:
  """A copy of the (resolved) SADM `config` whose `CDDPM_DIFFUSION` fields are those the frozen
  cDDPM was trained with (`cddpm_config`: its saved config, faithful placeholders resolved as its
  training resolved them)."""
  c = ml_collections.ConfigDict(config.to_dict())
  for field in CDDPM_DIFFUSION:
    value = config_lib.saved_value(cddpm_config, "diffusion", field,
                                   False if field in _ABSENT_FALSE else None)
    if value is not None:
      c.diffusion[field] = value
  return c


def _warn_mismatch(config, cddpm_config) -> None:
  """Logs settings where the SADM run differs from the cDDPM it reuses (diffusion, slice grid,
  IXI fold)."""
  fold = config_lib.saved_value(cddpm_config, "data", "fold")
  if fold is not None and int(fold) != int(config.data.fold):
    # Q17: the reference's SADM-DRAEM folds 1-4 reused the fold-0 cDDPM.
    logging.warning("data.fold=%d differs from the cDDPM's %d (%s): IXI_val_fold%d (this run's "
                    "%s set) may hold images the cDDPM trained on (Q17); train one cDDPM per "
                    "fold to avoid it", config.data.fold, fold, config.sadm.cddpm_workdir,
                    config.data.fold, "validation and evaluation" if config.sadm.mode == "draem"
                    else "evaluation")
  for section in ("diffusion", "data.preprocess"):
    for key, value in config_lib.at(config, section).items():
      other = config_lib.saved_value(cddpm_config, section, key)  # None: the cDDPM lacks it
      if other is not None and np.asarray(other).tolist() != np.asarray(value).tolist():
        used = (": the cDDPM's is used, as evaluation does" if section == "diffusion"
                and key in CDDPM_DIFFUSION else "")
        logging.warning("%s.%s=%r differs from the cDDPM's %r (%s)%s", section, key, value, other,
                        config.sadm.cddpm_workdir, used)


def cddpm_model_config(config: ml_collections.ConfigDict, cddpm_model: dict
                       ) -> ml_collections.ConfigDict:
  """`config` with `model` replaced by the frozen cDDPM's model section (compute dtype kept)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.model = ml_collections.ConfigDict(dict(cddpm_model))
  c.model.dtype = config.model.dtype
  return c


def _check_mode(config) -> None:
  if config.sadm.mode not in MODES:
    raise ValueError(f"unknown sadm.mode {config.sadm.mode!r}; expected one of {MODES}")
  if config.sadm.loss not in LOSSES:
    raise ValueError(f"unknown sadm.loss {config.sadm.loss!r}; expected one of {LOSSES}")


def frozen_reconstruction(cddpm: cddpm_lib.CDDPM, variables: dict, x: jax.Array, key: jax.Array,
                          schedule: schedule_lib.Schedule, sample_noise, num_timesteps: int,
                          train_mode: bool, x_clean: jax.Array | None = None
                          ) -> tuple[jax.Array, dict]:
  """x̂ of x [B, H, W, 1]: c = E(x) once (Q7), t ~ U{0..T−1} per sample, one pred-x0 step.

  `train_mode` runs E with batch statistics and drop path and returns its updated BatchNorm
  statistics (faithful Q6); otherwise E uses its running averages and `variables` come back
  unchanged. With `train_mode`, `x_clean` [B, H, W, 1] (DRAEM: the slices before the anomaly)
  first gives E's statistics one update of its own, as the reference's discarded E(x) call did,
  then x's. Nothing here is differentiated. Returns (x̂ [B, H, W, 1] float32, variables).
  """
  variables = jax.lax.stop_gradient(variables)
  k_t, k_noise, k_drop = jax.random.split(key, 3)
  t = jax.random.randint(k_t, (x.shape[0],), 0, num_timesteps)
  if train_mode and x_clean is not None:
    _, updates = cddpm.apply(variables, x_clean, True, method=cddpm_lib.CDDPM.encode,
                             rngs={"dropout": jax.random.fold_in(k_drop, 1)},
                             mutable=["batch_stats"])
    variables = {**variables, "batch_stats": jax.lax.stop_gradient(updates["batch_stats"])}
  if train_mode:
    cond, updates = cddpm.apply(variables, x, True, method=cddpm_lib.CDDPM.encode,
                                rngs={"dropout": k_drop}, mutable=["batch_stats"])
    new_variables = {**variables, "batch_stats": updates["batch_stats"]}
  else:
    cond, new_variables = cddpm.apply(variables, x, False, method=cddpm_lib.CDDPM.encode), variables

  def denoise(x_t, t_, c):
    return cddpm.apply(variables, x_t, t_, c, method=cddpm_lib.CDDPM.denoise).astype(jnp.float32)

  recon = reconstruct_lib.reconstruct(denoise, x, cond, t, sample_noise(k_noise, x.shape),
                                      schedule)
  return jax.lax.stop_gradient(recon), new_variables


# ---- loss ----

def _head_loss(name: str):
  return seg_losses.bce_with_logits if name == "bce" else seg_losses.soft_dice_loss


def segmentation_loss(logits: jax.Array, aux: list[jax.Array], target: jax.Array,
                      loss: str = "bce") -> jax.Array:
  """Per-sample loss [B] of logits [B, H, W, 1] against target [B, H, W, 1] in {0, 1}.

  Deep supervision adds, unweighted, the same loss of every auxiliary head against the
  nearest-downsampled target (the reference's `deepsup`, defined there for BCE).
  """
  head = _head_loss(loss)

  def one(l, a, y):  # one sample, kept 4-D with a batch of 1
    total = head(l[None], y[None])
    for q in a:
      total = total + head(q[None], seg_losses.nearest_downsample(y[None], q.shape[:2]))
    return total

  return jax.vmap(one)(logits, aux, target)


def sadm_loss_fn(config: ml_collections.ConfigDict, segnet: SegUnet,
                 cddpm: cddpm_lib.CDDPM | None):
  """loss_fn(params, model_state, batch, key, train) for the loop (METHOD §3.8).

  batch['image'] [B, H, W, 1] is x_ano (DRAEM) or the real slice (weak supervision);
  batch['seg'] [B, H, W, 1] the target (> 0 = anomalous).
  """
  s = config.sadm
  run_cddpm = cddpm is not None and uses_residual(config)
  sched = cddpm_task_lib.make_schedule(config)
  sample_noise = cddpm_task_lib.noise_fn(config)
  num_t = int(config.diffusion.num_timesteps)
  frozen_train = bool(s.frozen_train_mode)
  drift_clean = frozen_train and s.mode == "draem"  # the reference's discarded E(x) (Q6, Q7)
  deep_sup, loss_name = bool(s.deep_supervision), s.loss

  def loss_fn(params, model_state, batch, key, train, frozen=None):
    x = batch["image"].astype(jnp.float32)  # [B, H, W, 1]
    y = (batch["seg"] > 0).astype(jnp.float32)  # [B, H, W, 1]
    recon, new_state = None, model_state
    if run_cddpm:
      variables = frozen
      if "cddpm_batch_stats" in model_state:  # the drifting statistics (faithful Q6)
        variables = {**frozen, "batch_stats": model_state["cddpm_batch_stats"]}
      drift = train and frozen_train
      x_clean = batch["clean"].astype(jnp.float32) if drift and drift_clean else None
      recon, used = frozen_reconstruction(cddpm, variables, x, key, sched, sample_noise, num_t,
                                          drift, x_clean)
      if drift:
        new_state = {**model_state, "cddpm_batch_stats": used["batch_stats"]}
    out = segnet.apply({"params": params}, x, recon)
    logits, aux = out if deep_sup else (out, [])
    return segmentation_loss(logits, aux, y, loss_name), (new_state, {})

  return loss_fn


# ---- task ----

def _check_frozen(cddpm, frozen: dict, res: int) -> None:
  """The loaded cDDPM variables must match the module exactly (Q5: no silent partial load)."""
  x = jnp.zeros((1, res, res, 1), jnp.float32)
  want = jax.eval_shape(lambda k: cddpm.init({"params": k, "dropout": k}, x, x,
                                             jnp.zeros((1,), jnp.int32), train=False),
                        jax.random.key(0))
  want = {"params": want["params"], "batch_stats": want.get("batch_stats", {})}
  shapes = lambda tree: jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)
  if jax.tree.structure(want) != jax.tree.structure(frozen) or shapes(want) != shapes(frozen):
    raise ValueError("the loaded cDDPM variables do not match the cDDPM built from its config")


def sadm_task(config: ml_collections.ConfigDict, tables=None, data: bool = True,
              cddpm_run=None, workdir: str | None = None) -> loop.Task:
  """The SADM task of the user's `config` (never modified).

  With `sadm.use_cddpm` the frozen cDDPM comes from `cddpm_run` (a `runs.Run`), else it is
  opened from `sadm.cddpm_workdir`; with `data=False` (restoring a run, AOT checks) and no
  `cddpm_run`, the cDDPM is taken to have this config's model section and only its shapes are
  built. The repeat's effective seed and the cDDPM reference are recorded in `Task.meta` (with
  the path from `workdir`, the run's own, when given: the pair may be moved together).
  """
  config = config_lib.resolve(config)
  _check_mode(config)
  seed = effective_seed(config.seed, config.sadm.repeat)
  meta = {"seed": seed}
  segnet = factory.build_segnet(config)
  res = factory.slice_size(config)
  cddpm, frozen, cddpm_model = None, {}, config.model.to_dict()
  if config.sadm.use_cddpm:
    if cddpm_run is None and data:
      cddpm_run = open_cddpm(config)
    if cddpm_run is not None:
      _warn_mismatch(config, cddpm_run.config)
      cddpm_model = cddpm_run.config.model.to_dict()
      frozen = {"params": cddpm_run.variables["params"],
                "batch_stats": cddpm_run.variables["model_state"]}
      meta["cddpm"] = cddpm_run.reference(relative_to=workdir)
    cddpm = factory.build_cddpm(cddpm_model_config(config, cddpm_model))
    if not frozen:  # shapes only (restoring / AOT): zeros of the right structure
      frozen = _abstract_cddpm(cddpm, res)
    _check_frozen(cddpm, frozen, res)
  drift = cddpm is not None and uses_residual(config) and bool(config.sadm.frozen_train_mode)
  # Drift (Q6): the state's statistics start as the cDDPM's, an argument of the init program.
  init_inputs = (frozen["batch_stats"],) if drift else ()
  # DRAEM drift also updates them on the clean slices, which the step then needs.
  batch_keys = ("image", "seg", "clean") if drift and config.sadm.mode == "draem" else \
      ("image", "seg")

  def init(key, initial_stats=None):
    x = jnp.zeros((1, res, res, 1), jnp.float32)
    # The SegUnet draws its initial weights from an RBG key derived from `key`: XLA compiles one
    # unrolled threefry per parameter, which makes this init 4x slower to compile on CPU.
    init_key = jax.random.key(jax.random.bits(key, (), jnp.uint32), impl="rbg")
    params = segnet.init(init_key, x, x if uses_residual(config) else None)["params"]
    if initial_stats is None:
      return {"params": params, "model_state": {}}
    return {"params": params,
            "model_state": {"cddpm_batch_stats": initial_stats}}

  train_table, val_table = (tables or sadm_tables(config)) if data else (None, None)
  train_loader, val_batches = _loaders(config, train_table, val_table, seed) if data else (None, None)
  if data:
    meta["orientation"] = train_table.orientation()
    meta["data"] = pipeline.data_identity(train_table, val_table)
  # The frozen cDDPM reconstructs with the noise and schedule it was trained with.
  loss_config = with_cddpm_diffusion(config, cddpm_run.config) if cddpm_run is not None else config
  return loop.Task(name=TASK_NAME, init_variables=init,
                   loss_fn=sadm_loss_fn(loss_config, segnet, cddpm),
                   tx=make_optimizer(config.optimizer), train_loader=train_loader,
                   val_batches=val_batches, num_train_volumes=len(train_table) if data else 0,
                   batch_keys=batch_keys, seed=seed, frozen=frozen,
                   init_inputs=init_inputs, meta=meta,
                   keep_partial_batch=config.sadm.mode in WEAK_SPLITS)  # drop_last=False there


def _abstract_cddpm(cddpm, res: int) -> dict:
  x = jnp.zeros((1, res, res, 1), jnp.float32)
  shapes = jax.eval_shape(lambda k: cddpm.init({"params": k, "dropout": k}, x, x,
                                               jnp.zeros((1,), jnp.int32), train=False),
                          jax.random.key(0))
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)
  return {"params": zeros["params"], "batch_stats": zeros.get("batch_stats", {})}


def run_sadm(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`stage=sadm`: opens the frozen cDDPM once, then trains the SegUnet with the loop."""
  # The cDDPM is opened once the workdir is claimed.
  result = loop.train(config, workdir, lambda: sadm_task(config, workdir=workdir))
  if jax.process_index() == 0:
    print(f"SADM ({config.sadm.mode}) training done: {result}")
  return result
