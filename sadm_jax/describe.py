"""`stage=describe`: parameter counts and forward GFLOPs per slice of the config's models, without training."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections

from sadm_jax import config as config_lib
from sadm_jax.models import factory
from sadm_jax.utils import cost, io


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def model_specs(config: ml_collections.ConfigDict) -> dict:
  """name -> (module, example inputs (batch 1), apply kwargs) for every model in `model.names`."""
  res = factory.slice_size(config)
  x = jnp.zeros((1, res, res, 1), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  cond = jnp.zeros((1, config.model.encoder.cond_dim), jnp.float32)
  specs = {}
  for name in config.model.names:
    if name == "encoder":
      specs[name] = (factory.build_encoder(config), (x,), {"train": False})
    elif name == "unet":
      specs[name] = (factory.build_unet(config), (x, t, cond), {})
    elif name == "spark":
      active = jnp.ones((1, res // 32, res // 32), bool)
      specs[name] = (factory.build_spark(config), (x, active), {"train": False})
    elif name == "segnet":
      x2 = x if factory.uses_residual(config) else None
      specs[name] = (factory.build_segnet(config), (x, x2), {})
    else:
      raise ValueError(f"unknown model name {name!r} in model.names")
  return specs


def describe(config: ml_collections.ConfigDict) -> dict:
  out = {}
  for name, (module, args, kwargs) in model_specs(config).items():
    key = jax.random.key(0)
    variables = jax.eval_shape(lambda k: module.init({"params": k, "dropout": k}, *args, **kwargs),
                               key)
    # Shapes are all the FLOP count needs: no initialisation is run (or compiled).
    flops = cost.forward_flops(lambda v, *a: module.apply(v, *a, **kwargs), variables, *args)
    out[name] = {"params": count_params(variables["params"]), "gflops_per_slice": flops / 1e9}
  return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  config = config_lib.resolve(config)
  table = describe(config)
  os.makedirs(workdir, exist_ok=True)
  io.write_json(os.path.join(workdir, "describe.json"), table)
  print(f"{'model':<10}{'parameters':>14}{'GFLOPs/slice':>14}")
  for name, row in table.items():
    print(f"{name:<10}{row['params']:>14,}{row['gflops_per_slice']:>14.2f}")
  return table
