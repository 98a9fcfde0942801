"""SADM segmentation network (SegUnet): siamese weight-standardised UNet on (x − x̂, x) → logits."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sadm_jax.models import layers, staged
from sadm_jax.models.layers import (Conv, ConvTranspose, GroupNorm32, standardize_weight,
                                    torch_bias_init, torch_kernel_init)

Dtype = Any


def middle_divisor_groups(channels: int) -> int:
  """GroupNorm group count of the DAE UNet: the middle element of the sorted divisors.

  (For an even number of divisors the upper-middle one.) 64→8, 128→16, 256→16, 512→32.
  """
  divisors = sorted(d for d in range(1, channels + 1) if channels % d == 0)
  return divisors[len(divisors) // 2]


class WSConv(nn.Module):
  """Conv with bias whose kernel is weight-standardised (`standardize_weight`) at every call."""
  features: int
  kernel_size: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C_in] -> [B, H', W', features]
    k, c_in = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", torch_kernel_init(), (k, k, c_in, self.features), jnp.float32)
    bias = self.param("bias", torch_bias_init(k * k * c_in), (self.features,), jnp.float32)
    w = standardize_weight(kernel).astype(self.dtype)
    y = jax.lax.conv_general_dilated(x.astype(self.dtype), w, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return staged.add_bias(y, bias.astype(self.dtype))


def _reflect_pad1(x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, H+2, W+2, C]
  return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")


class ConvBlock(nn.Module):
  """[reflection pad 1 → WS conv3×3 → SiLU → GroupNorm(middle-divisor groups)] × 2."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C_in] -> [B, H, W, features]
    groups = middle_divisor_groups(self.features)
    for i in range(2):
      x = layers.silu(WSConv(self.features, 3, self.dtype, name=f"conv_{i}")(_reflect_pad1(x)))
      x = GroupNorm32(groups, name=f"norm_{i}")(x)
    return x


class Encoder(nn.Module):
  """Contracting path: ConvBlock per level (widths 2^(wf+i)), avg-pool 2 between levels."""
  depth: int = 4
  wf: int = 6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    # x: [B, H, W, C] -> per level [B, H/2^i, W/2^i, 2^(wf+i)], finest first
    features = []
    for i in range(self.depth):
      if i:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
      x = ConvBlock(2 ** (self.wf + i), self.dtype, name=f"down_{i}")(x)
      features.append(x)
    return features


class UpBlock(nn.Module):
  """ConvTranspose k2 s2 → concat [up, skip] → ConvBlock."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
    # x: [B, h, w, C], skip: [B, 2h, 2w, C_s] -> [B, 2h, 2w, features]
    up = ConvTranspose(self.features, (2, 2), strides=(2, 2), padding="VALID",
                       dtype=self.dtype, param_dtype=jnp.float32, name="upconv",
                       kernel_init=torch_kernel_init(transposed=True),
                       bias_init=torch_bias_init(4 * self.features))(x)
    h = jnp.concatenate([up, skip.astype(up.dtype)], axis=-1)
    return ConvBlock(self.features, self.dtype, name="conv_block")(h)


def _head(features: int, dtype: Dtype, name: str | None = None) -> Conv:
  """1×1 conv features → 1 logit channel."""
  return Conv(1, (1, 1), dtype=dtype, param_dtype=jnp.float32, name=name,
              kernel_init=torch_kernel_init(), bias_init=torch_bias_init(features))


class SegUnet(nn.Module):
  """SegUnet of METHOD §3.7; defaults are the paper configuration (16,736,705 parameters).

  With `use_residual=True` one shared-weight `encoder` runs on the residual r = x_in − recon and
  on x_in (both branches in one batched call); their features are concatenated (residual first)
  at every scale, so the decoder is twice as wide (up-blocks 1024→512→256→128, head 128→1).
  With `use_residual=False` it is the paper's "Unet (input only)" ablation: the plain DAE UNet on
  x_in (decoder 512→256→128→64, head 64→1); `recon` is ignored.
  Returns logits [B, H, W, 1] float32, or (logits, [3 deep-supervision logits, coarsest first])
  when `deep_supervision`. Submodules: encoder, up_{0,1,2}, head, deep_sup_{0,1,2}.
  """
  depth: int = 4
  wf: int = 6
  use_residual: bool = True
  deep_supervision: bool = False
  dtype: Dtype = jnp.float32

  def setup(self):
    fac = 2 if self.use_residual else 1
    widths = [2 ** (self.wf + i) * fac for i in reversed(range(self.depth - 1))]
    self.encoder = Encoder(self.depth, self.wf, self.dtype)
    self.ups = [UpBlock(w, self.dtype, name=f"up_{j}") for j, w in enumerate(widths)]
    self.head = _head(widths[-1], self.dtype)
    if self.deep_supervision:
      self.deep_sup = [_head(w, self.dtype, name=f"deep_sup_{j}") for j, w in enumerate(widths)]

  def encode(self, x: jax.Array) -> list[jax.Array]:
    """Encoder features of one branch: per level [B, H/2^i, W/2^i, 2^(wf+i)], finest first."""
    return self.encoder(x)

  def __call__(self, x_in: jax.Array, recon: jax.Array | None = None
               ) -> jax.Array | tuple[jax.Array, list[jax.Array]]:
    # x_in, recon: [B, H, W, 1] -> logits [B, H, W, 1] float32 (+ deep-supervision logits)
    factor = 2 ** (self.depth - 1)
    if x_in.shape[1] % factor or x_in.shape[2] % factor:
      raise ValueError(f"spatial size {x_in.shape[1:3]} must be divisible by {factor}")
    if self.use_residual:
      if recon is None:
        raise ValueError("SegUnet(use_residual=True) needs the reconstruction")
      b = x_in.shape[0]
      both = self.encoder(jnp.concatenate([x_in - recon, x_in], axis=0))  # one shared encoder
      feats = [jnp.concatenate([f[:b], f[b:]], axis=-1) for f in both]  # [residual, input]
    else:
      feats = self.encoder(x_in)

    h, aux = feats[-1], []
    for j, up in enumerate(self.ups):
      h = up(h, feats[self.depth - 2 - j])
      if self.deep_supervision:
        aux.append(self.deep_sup[j](h).astype(jnp.float32))
    logits = self.head(h).astype(jnp.float32)
    return (logits, aux) if self.deep_supervision else logits
