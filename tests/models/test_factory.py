"""The network factory honours the config as given (Q1 conditioning width, Q2 attention, Q9 drop
path): nothing is overwritten, and the config is not mutated."""

from __future__ import annotations

import jax.numpy as jnp

from configs import cddpm as cddpm_config
from sadm_jax import config as config_lib
from sadm_jax.models import factory
from tests.helpers import abstract_variables


def _tiny(**encoder):
  c = config_lib.resolve(cddpm_config.get_config("tiny"))
  for k, v in encoder.items():
    c.model.encoder[k] = v
  return c


def test_cond_dim_is_used_as_given_and_config_untouched():
  # Q1: the reference replaced a requested 128-d condition by 4 x UNet width and mutated the config.
  c = _tiny(cond_dim=128)
  before = c.to_json()
  model = factory.build_cddpm(c)
  assert model.encoder.cond_dim == 128 and model.unet.cond_dim == 128
  x = jnp.zeros((2, 32, 32, 1))
  v = abstract_variables(model, x, x, jnp.zeros((2,), jnp.int32), False)
  assert v["params"]["encoder"]["head"]["kernel"].shape[-1] == 128
  assert c.to_json() == before


def test_drop_path_rate_and_attention_reach_the_modules():
  # Q9: 0 really reaches the encoder and SparK (the reference could not switch 0.05 off);
  # Q2: attention_resolutions is passed through as given (default () = middle block only).
  c = _tiny(drop_path_rate=0.0)
  assert factory.build_encoder(c).drop_path_rate == 0.0
  assert factory.build_spark(c).drop_path_rate == 0.0
  assert factory.build_unet(c).attention_resolutions == ()
  assert config_lib.resolve(cddpm_config.get_config()).model.encoder.drop_path_rate == 0.05
  c.model.unet.attention_resolutions = (2, 4)
  assert factory.build_unet(c).attention_resolutions == (2, 4)


def test_compute_dtype_keeps_float32_parameters_and_has_no_float16():
  # Q3: an explicit compute dtype; parameters (and batch statistics) stay float32; no float16 mode.
  import jax
  import pytest
  c = _tiny()
  c.model.dtype = "bfloat16"
  model = factory.build_cddpm(c)
  assert model.encoder.dtype == model.unet.dtype == jnp.bfloat16
  x = jnp.zeros((2, 32, 32, 1))
  v = abstract_variables(model, x, x, jnp.zeros((2,), jnp.int32), False)
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(v)} == {jnp.dtype(jnp.float32)}
  c.model.dtype = "float16"
  with pytest.raises(ValueError, match="unknown model.dtype"):
    factory.build_cddpm(c)
