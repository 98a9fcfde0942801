"""The one factory of every network from a config's `model` / `sadm` sections (plain ConfigDict reads).

Every place that builds a network from a config (training, restoring a run, evaluation, predict,
describe, benchmarks) calls these; nothing else constructs the modules from config fields.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from sadm_jax.models.cddpm import CDDPM
from sadm_jax.models.resnet import ResNet50Encoder
from sadm_jax.models.segnet import SegUnet
from sadm_jax.models.spark import SparK
from sadm_jax.models.unet import DiffusionUNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_of(config: Any, dtype: str | None = None):
  """The compute dtype: `dtype` if given, else `config.model.dtype` ('float32' | 'bfloat16')."""
  name = dtype or config.model.dtype
  if name not in DTYPES:
    raise ValueError(f"unknown model.dtype {name!r}; expected one of {sorted(DTYPES)}")
  return DTYPES[name]


def build_encoder(config: Any, dtype: str | None = None) -> ResNet50Encoder:
  """The conditioning encoder E of `config.model.encoder`."""
  e = config.model.encoder
  return ResNet50Encoder(cond_dim=e.cond_dim, drop_path_rate=e.drop_path_rate,
                         stage_sizes=tuple(e.stage_sizes), width=e.width,
                         dtype=dtype_of(config, dtype))


def build_unet(config: Any, dtype: str | None = None) -> DiffusionUNet:
  """The denoising UNet of `config.model.unet` (conditioned on E's `cond_dim` features)."""
  u = config.model.unet
  return DiffusionUNet(model_channels=u.model_channels, channel_mult=tuple(u.channel_mult),
                       num_res_blocks=u.num_res_blocks,
                       attention_resolutions=tuple(u.attention_resolutions),
                       num_head_channels=u.num_head_channels, cond_dim=config.model.encoder.cond_dim,
                       num_groups=u.num_groups, dtype=dtype_of(config, dtype))


def build_cddpm(config: Any, dtype: str | None = None) -> CDDPM:
  """E + UNet as one module (variables params/{encoder, unet}, batch_stats/{encoder})."""
  return CDDPM(encoder=build_encoder(config, dtype), unet=build_unet(config, dtype))


def build_spark(config: Any, dtype: str | None = None) -> SparK:
  """The SparK masked-image pretraining model around E's backbone."""
  e = config.model.encoder
  return SparK(drop_path_rate=e.drop_path_rate, stage_sizes=tuple(e.stage_sizes), width=e.width,
               decoder_width=config.model.spark.decoder_width, dtype=dtype_of(config, dtype))


def uses_residual(config: Any) -> bool:
  """Whether a SADM run's SegUnet sees the residual x − x̂ (needs the cDDPM) or the input only."""
  return bool(config.sadm.use_cddpm and config.sadm.use_residual)


def build_segnet(config: Any, dtype: str | None = None) -> SegUnet:
  """The SegUnet of `config.sadm` (paper size, 16,736,705 parameters, unless `sadm.segnet_wf`)."""
  s = config.sadm
  return SegUnet(wf=int(s.segnet_wf), use_residual=uses_residual(config),
                 deep_supervision=bool(s.deep_supervision), dtype=dtype_of(config, dtype))


def slice_size(config: Any) -> int:
  """Edge length of the 2-D slices the networks see: ceil(crop / downsample) (96 in the paper)."""
  p = config.data.preprocess
  return -(-int(p.crop_size[0]) // int(p.downsample))
