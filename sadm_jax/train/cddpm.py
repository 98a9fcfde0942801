"""cDDPM training task (METHOD §3.4–3.5): pred-x0 L1 loss on healthy IXI slices with on-device noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sadm_jax import config as config_lib
from sadm_jax.diffusion import noise as noise_lib, schedule as schedule_lib
from sadm_jax.models import cddpm as cddpm_lib, factory, transfer
from sadm_jax.train import ixi, loop

TASK_NAME = "cddpm"


def make_schedule(config: ml_collections.ConfigDict) -> schedule_lib.Schedule:
  """The cosine schedule of `config.diffusion`."""
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

  def loss_fn(params, batch_stats, batch, key, train, frozen=None):
    del frozen  # nothing frozen in stage I
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
  res = factory.slice_size(config)

  def init(key):
    x = jnp.zeros((1, res, res, 1), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    variables = model.init({"params": key, "dropout": key}, x, x, t, train=False)
    return {"params": variables["params"], "model_state": variables.get("batch_stats", {})}

  return init


# The encoder settings that shape the ResNet-50 backbone SparK hands over (Q8: every leaf must fit).
BACKBONE_KEYS = ("width", "stage_sizes")


def check_spark_encoder(config: ml_collections.ConfigDict, spark_config: ml_collections.ConfigDict,
                        workdir: str) -> None:
  """ValueError (one line) when the SparK run's saved encoder settings would give backbone weights
  of other shapes than this cDDPM's encoder: refused before anything is compiled, not as a list of
  every mismatched leaf (85 lines for a width change)."""
  differ = []
  for key in BACKBONE_KEYS:
    theirs = config_lib.saved_value(spark_config, "model.encoder", key)
    ours = config.model.encoder[key]
    if theirs is not None and list(np.atleast_1d(theirs)) != list(np.atleast_1d(ours)):
      differ.append(f"model.encoder.{key} {_plain(theirs)} there, {_plain(ours)} here")
  if differ:
    raise ValueError(f"--config.model.encoder.pretrained_workdir={workdir}: its SparK encoder does "
                     f"not fit this cDDPM's ({'; '.join(differ)}); give the SparK run's encoder "
                     "settings, or another SparK run")


def _plain(value):
  return tuple(value) if isinstance(value, (list, tuple)) else value


def _with_pretrained_encoder(config, init):
  """Initialises E from a SparK workdir's best checkpoint (strict key check, Q8).

  Returns (init(key, spark_variables), (spark_variables,), run metadata): the SparK weights are an
  argument of the init program, not constants baked into it.
  """
  from sadm_jax.train.runs import open_run
  workdir = config.model.encoder.pretrained_workdir
  spark = open_run(workdir, expect="spark", setting="model.encoder.pretrained_workdir")
  check_spark_encoder(config, spark.config, workdir)
  spark_vars = {"params": spark.variables["params"], "batch_stats": spark.variables["model_state"]}

  def init_pretrained(key, spark_variables):
    v = init(key)
    enc = {"params": v["params"]["encoder"], "batch_stats": v["model_state"]["encoder"]}
    enc = transfer.load_spark_backbone_into_encoder(enc, spark_variables)
    return {"params": {**v["params"], "encoder": enc["params"]},
            "model_state": {**v["model_state"], "encoder": enc["batch_stats"]}}

  return init_pretrained, (spark_vars,), {"pretrained_encoder": {"workdir": spark.workdir,
                                                                 "step": spark.step}}


def cddpm_task(config: ml_collections.ConfigDict, tables=None, data: bool = True,
               fresh: bool = True) -> loop.Task:
  """The cDDPM task; `data=False` builds only model/optimiser (for restoring a checkpoint).

  fresh=False: the run resumes from a checkpoint, so its initial state is never built and the
  SparK run of `model.encoder.pretrained_workdir` is not opened (it may have moved or gone); the
  state's structure is the same, and the run keeps the `pretrained_encoder` its first start
  recorded (`loop.resumed_meta`).
  """
  config = config_lib.resolve(config)
  model = factory.build_cddpm(config)
  init, inputs, extra = _init_cddpm(config, model), (), {}
  if data and fresh and config.model.encoder.pretrained_workdir:
    init, inputs, extra = _with_pretrained_encoder(config, init)
  task = ixi.ixi_task(TASK_NAME, config, init, cddpm_loss_fn(config, model), tables, data,
                      init_inputs=inputs)
  task.meta.update(extra)
  return task


def run_cddpm(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`stage=cddpm`: trains E + UNet jointly (resuming from `workdir` if it holds a checkpoint)."""
  # Built once claimed; a run that resumes does not reopen its SparK encoder's run.
  result = loop.train(config, workdir,
                      lambda: cddpm_task(config, fresh=not loop.will_resume(workdir)))
  if jax.process_index() == 0:
    print(f"cDDPM training done: {result}")
  return result
