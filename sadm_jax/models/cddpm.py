"""Conditioned DDPM (cDDPM): ResNet-50 conditioning encoder E + denoising UNet, composed as one Flax module."""

from __future__ import annotations

import jax
from flax import linen as nn


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
