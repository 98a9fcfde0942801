"""SparK masked-image pretraining: sparse ResNet-50, densifying layers, light UNet decoder, loss."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sadm_jax.models import layers
from sadm_jax.models.resnet import (DOWNSAMPLE_RATIO, RESNET50_STAGE_SIZES, BatchNorm, Initializer,
                                    ResNet50Backbone, he_normal_fan_out, mask_at,
                                    torch_default_bias, torch_default_kernel)

Array = jax.Array

MASK_RATIO = 0.65  # fraction of the patch grid hidden from the encoder


def trunc_normal(std: float, lower: float, upper: float) -> Initializer:
  """timm/PyTorch `trunc_normal_`: N(0, std^2) restricted to the ABSOLUTE interval [lower, upper].

  (Unlike `flax.linen.initializers.truncated_normal`, no rescaling of the standard deviation.)
  """

  def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    return std * jax.random.truncated_normal(key, lower / std, upper / std, shape, dtype)

  return init


decoder_conv_init = trunc_normal(0.02, -2.0, 2.0)  # timm default bounds: effectively N(0, 0.02^2)
mask_token_init = trunc_normal(0.02, -0.02, 0.02)


def keep_count(grid: tuple[int, int] = (3, 3), mask_ratio: float = MASK_RATIO) -> int:
  """Number of visible patches per image: round(h * w * (1 - mask_ratio)) (= 3 for 3x3 and 0.65)."""
  return round(grid[0] * grid[1] * (1.0 - mask_ratio))


def random_active_mask(key: Array, batch: int, grid: tuple[int, int] = (3, 3),
                       keep: int = 3) -> Array:
  """Draws which patches stay visible: an independent uniform random permutation per sample.

  Returns a bool mask [batch, h, w] with exactly `keep` True entries per sample, deterministic in
  `key`.
  """
  h, w = grid
  if not 0 <= keep <= h * w:
    raise ValueError(f"keep={keep} must lie in [0, {h * w}]")
  noise = jax.random.uniform(key, (batch, h * w))  # [B, L]
  rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)  # each patch's place in the permutation
  return (rank < keep).reshape(batch, h, w)


def patchify(x: Array, grid: tuple[int, int]) -> Array:
  """[B, H, W, C] -> [B, h * w, (H / h) * (W / w) * C], patches in row-major grid order."""
  b, height, width, c = x.shape
  h, w = grid
  ph, pw = height // h, width // w
  x = x.reshape(b, h, ph, w, pw, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * w, ph * pw * c)


def spark_loss(x: Array, recon: Array, active: Array) -> Array:
  """SparK reconstruction loss: per-patch MSE averaged over the MASKED (inactive) patches only.

  x, recon: [B, H, W, C]; active: [B, h, w] bool (True = visible to the encoder).
  Like the reference, the sum over all masked patches of the batch is divided by their total count
  (+1e-8); with the same number of masked patches per sample this is the batch mean of the
  per-sample means.
  No pixel normalisation (`pix_norm=0`). Returns a float32 scalar.
  """
  if x.shape != recon.shape:
    raise ValueError(f"x {x.shape} and recon {recon.shape} differ")
  grid = active.shape[1:3]
  if x.shape[1] % grid[0] or x.shape[2] % grid[1] or active.shape[0] != x.shape[0]:
    raise ValueError(f"active mask {active.shape} does not tile input {x.shape}")
  diff = patchify(recon, grid).astype(jnp.float32) - patchify(x, grid).astype(jnp.float32)
  err = jnp.square(diff)  # [B, L, N]
  per_patch = jnp.mean(err, axis=-1)  # [B, L]
  masked = jnp.logical_not(active).reshape(active.shape[0], -1).astype(jnp.float32)  # [B, L]
  return jnp.sum(per_patch * masked) / (jnp.sum(masked) + 1e-8)


class UpBlock(nn.Module):
  """SparK UNetBlock: ConvT(C, C, 4, s2, p1) -> conv3x3 -> BN -> ReLU6 -> conv3x3 (C->out) -> BN."""
  out_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    # x: [B, H, W, C] -> [B, 2H, 2W, out_channels]
    c = x.shape[-1]
    # transpose_kernel=True: the gradient of a strided conv, as PyTorch's ConvTranspose2d; padding
    # k - 1 - p = 2 on each side gives exactly 2H outputs.
    x = layers.ConvTranspose(c, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                             transpose_kernel=True, kernel_init=he_normal_fan_out,
                             bias_init=nn.initializers.zeros, dtype=self.dtype, name="up_sample")(x)
    x = nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, kernel_init=decoder_conv_init,
                dtype=self.dtype, name="conv1")(x)
    x = jnp.clip(BatchNorm(name="bn1")(x, train), 0.0, 6.0)  # ReLU6
    x = nn.Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                kernel_init=decoder_conv_init, dtype=self.dtype, name="conv2")(x)
    return BatchNorm(name="bn2")(x, train)


class LightDecoder(nn.Module):
  """SparK light decoder: `num_stages` UpBlocks halving the width from `width`, then a 1x1 conv.

  `to_dec[i]` (smallest scale first, `width / 2^i` channels) is added before stage i.
  """
  width: int = 512
  num_stages: int = 5
  out_channels: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, to_dec: Sequence[Array], train: bool) -> Array:
    # to_dec[0]: [B, h, w, width] -> [B, h * 2^num_stages, w * 2^num_stages, out_channels]
    x = jnp.zeros_like(to_dec[0])
    c = self.width
    for i in range(self.num_stages):
      if i < len(to_dec):
        x = x + to_dec[i]
      x = UpBlock(c // 2, self.dtype, name=f"stage{i}")(x, train)
      c //= 2
    return nn.Conv(self.out_channels, (1, 1), kernel_init=decoder_conv_init,
                   bias_init=nn.initializers.zeros, dtype=self.dtype, name="proj")(x)


class SparK(nn.Module):
  """SparK masked pretraining model (no classifier head); `backbone` is the sparse ResNet-50.

  __call__(x [B, H, W, 1] in [0, 1], active [B, H/32, W/32] bool, train) -> recon [B, H, W, 1].
  The encoder sees x * upsampled(active) in sparse mode. Per scale (smallest first): BN over active
  positions -> inactive positions filled with a learnable mask token [1, 1, 1, C] -> projection
  conv (1x1 at the smallest scale, else 3x3) to decoder_width / 2^i channels; the decoder adds them
  stage by stage (its fifth stage has no skip input). `decoder_width` is SparK's `dec_dim` (512);
  `stage_sizes`/`width` configure the backbone as in ResNet50Backbone (defaults: ResNet-50).
  """
  drop_path_rate: float = 0.05
  decoder_width: int = 512
  in_channels: int = 1
  stage_sizes: Sequence[int] = RESNET50_STAGE_SIZES
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, active: Array, train: bool) -> Array:
    backbone = ResNet50Backbone(self.drop_path_rate, self.in_channels, tuple(self.stage_sizes),
                                self.width, self.dtype, name="backbone")
    masked = x * mask_at(active, x.shape[1:3], x.dtype)
    features = backbone(masked, train, active)  # ResNet-50: 256@H/4 ... 2048@H/32
    to_dec = []
    d_width = self.decoder_width
    for i, feat in enumerate(reversed(features)):  # smallest scale first
      e_width = feat.shape[-1]
      m = mask_at(active, feat.shape[1:3], jnp.float32)  # active map dilated x2 per scale
      y = BatchNorm(name=f"densify_norm{i}")(feat, train, m)
      token = self.param(f"mask_token{i}", mask_token_init, (1, 1, 1, e_width), jnp.float32)
      y = jnp.where(m > 0, y, token.astype(y.dtype))
      if not (i == 0 and e_width == d_width):
        k = 1 if i == 0 else 3
        y = nn.Conv(d_width, (k, k), padding=((k // 2, k // 2), (k // 2, k // 2)),
                    kernel_init=torch_default_kernel, bias_init=torch_default_bias(e_width * k * k),
                    dtype=self.dtype, name=f"densify_proj{i}")(y)
      to_dec.append(y)
      d_width //= 2
    return LightDecoder(self.decoder_width, len(features) + 1, self.in_channels, self.dtype,
                        name="decoder")(to_dec, train)


def spark_grid(height: int, width: int) -> tuple[int, int]:
  """Patch grid for an input size: (H / 32, W / 32) -> (3, 3) at 96x96."""
  if height % DOWNSAMPLE_RATIO or width % DOWNSAMPLE_RATIO:
    raise ValueError(f"input {height}x{width} is not a multiple of {DOWNSAMPLE_RATIO}")
  return height // DOWNSAMPLE_RATIO, width // DOWNSAMPLE_RATIO
