"""Conditioned DDPM (cDDPM): ResNet-50 conditioning encoder E + denoising UNet, composed as one Flax module."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from sadm_jax.models.resnet import ResNet50Encoder
from sadm_jax.models.unet import DiffusionUNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class CDDPM(nn.Module):
  """x̂0 = UNet(x_t, t, E(x)). Variables: params/{encoder, unet}, batch_stats/{encoder}.

  encoder: the conditioning encoder (BatchNorm; `train` selects batch vs running statistics).
  unet: the denoising UNet (no BatchNorm).
  """
  encoder: nn.Module
  unet: nn.Module

  def __call__(self, x: jax.Array, x_t: jax.Array, t: jax.Array, train: bool) -> jax.Array:
    """x: clean slice [B, H, W, 1] in [0, 1]; x_t: noised [B, H, W, 1] in model space; t: [B]."""
    return self.unet(x_t, t, self.encoder(x, train))

  def encode(self, x: jax.Array, train: bool = False) -> jax.Array:  # [B, H, W, 1] -> [B, cond_dim]
    return self.encoder(x, train)

  def denoise(self, x_t: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
    return self.unet(x_t, t, cond)


def dtype_of(config: ml_collections.ConfigDict):
  if config.model.dtype not in DTYPES:
    raise ValueError(f"unknown model.dtype {config.model.dtype!r}; expected {sorted(DTYPES)}")
  return DTYPES[config.model.dtype]


def build_encoder(config: ml_collections.ConfigDict) -> ResNet50Encoder:
  e = config.model.encoder
  return ResNet50Encoder(cond_dim=e.cond_dim, drop_path_rate=e.drop_path_rate,
                         stage_sizes=tuple(e.stage_sizes), width=e.width, dtype=dtype_of(config))


def build_unet(config: ml_collections.ConfigDict) -> DiffusionUNet:
  u = config.model.unet
  return DiffusionUNet(model_channels=u.model_channels, channel_mult=tuple(u.channel_mult),
                       num_res_blocks=u.num_res_blocks,
                       attention_resolutions=tuple(u.attention_resolutions),
                       num_head_channels=u.num_head_channels, cond_dim=config.model.encoder.cond_dim,
                       num_groups=u.num_groups, dtype=dtype_of(config))


def build_cddpm(config: ml_collections.ConfigDict) -> CDDPM:
  return CDDPM(encoder=build_encoder(config), unet=build_unet(config))
