"""Conditioned denoising UNet (OpenAI/ADM style) that predicts x0 from (x_t, t, encoder vector)."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sadm_jax.models import layers
from sadm_jax.models.layers import Conv, GroupNorm32, torch_bias_init, torch_kernel_init, zeros_init
from sadm_jax.models.norm_act import GroupNormSiLU

Dtype = Any


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal embedding of integer timesteps, cos half first then sin (ADM convention).

  t: [B] int; returns [B, dim] float32 with freqs exp(-ln(max_period)·k/(dim/2)), k < dim/2.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]  # [B, half]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


def _dense(features: int, fan_in: int, dtype: Dtype, name: str, zero: bool = False) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name,
                  kernel_init=zeros_init if zero else torch_kernel_init(),
                  bias_init=zeros_init if zero else torch_bias_init(fan_in))


def _conv(features: int, fan_in: int, kernel: int, dtype: Dtype, name: str,
          zero: bool = False) -> Conv:
  """Conv with 'SAME' padding (= PyTorch padding k//2 for odd k) and PyTorch-default init."""
  return Conv(features, (kernel, kernel), padding="SAME", dtype=dtype,
              param_dtype=jnp.float32, name=name,
              kernel_init=zeros_init if zero else torch_kernel_init(),
              bias_init=zeros_init if zero else torch_bias_init(fan_in * kernel * kernel))


def _avg_pool2(x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, H/2, W/2, C]
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _nearest_up2(x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, 2H, 2W, C]
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResBlock(nn.Module):
  """ADM residual block with FiLM (scale-shift) conditioning and optional up/down sampling.

  GN→SiLU→[resample]→conv3×3 → GN·(1+scale)+shift → SiLU → zero-init conv3×3, plus a skip
  (identity, or 1×1 conv when the width changes). With `resample`, the same avg-pool 2 /
  nearest ×2 is applied to the skip input. Dropout is 0 in the reference and omitted.
  """
  out_channels: int
  resample: str | None = None  # None | "down" | "up"
  num_groups: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
    # x: [B, H, W, C_in], emb: [B, E] -> [B, H', W', C_out]
    c_in, c_out = x.shape[-1], self.out_channels
    h = GroupNormSiLU(self.num_groups, name="in_norm")(x)
    if self.resample == "down":
      h, x = _avg_pool2(h), _avg_pool2(x)
    elif self.resample == "up":
      h, x = _nearest_up2(h), _nearest_up2(x)
    elif self.resample is not None:
      raise ValueError(f"resample must be None, 'down' or 'up', got {self.resample!r}")
    h = _conv(c_out, c_in, 3, self.dtype, "in_conv")(h)

    emb_out = _dense(2 * c_out, emb.shape[-1], self.dtype, "emb_proj")(layers.silu(emb))
    scale, shift = jnp.split(emb_out[:, None, None, :], 2, axis=-1)  # [B, 1, 1, C_out] each
    h = GroupNormSiLU(self.num_groups, name="out_norm")(h, film=(scale, shift))
    h = _conv(c_out, c_out, 3, self.dtype, "out_conv", zero=True)(h)

    if c_in != c_out:
      x = _conv(c_out, c_in, 1, self.dtype, "skip")(x)
    return x + h


class AttentionBlock(nn.Module):
  """Spatial self-attention, ADM "new order": q, k, v split before the heads.

  q and k are each scaled by ch^(-1/4) (ch = head width); softmax in float32; zero-init
  output projection, residual added to the un-normalised input.
  """
  num_head_channels: int = 64
  num_groups: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, H, W, C]
    b, hgt, wid, c = x.shape
    if c % self.num_head_channels:
      raise ValueError(f"{c} channels not divisible by head width {self.num_head_channels}")
    heads, ch = c // self.num_head_channels, self.num_head_channels
    h = GroupNorm32(self.num_groups, name="norm")(x).reshape(b, hgt * wid, c)
    qkv = _dense(3 * c, c, self.dtype, "qkv")(h)  # [B, T, 3C]
    q, k, v = (a.reshape(b, hgt * wid, heads, ch) for a in jnp.split(qkv, 3, axis=-1))
    scale = ch ** -0.25
    logits = jnp.einsum("bthc,bshc->bhts", q * scale, k * scale)  # [B, heads, T, T]
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    a = jnp.einsum("bhts,bshc->bthc", weights, v).reshape(b, hgt * wid, c)
    out = _dense(c, c, self.dtype, "proj_out", zero=True)(a)
    return x + out.reshape(b, hgt, wid, c)


class EmbedBlock(nn.Module):
  """One entry of the input/output block lists: `res` [+ `attn`] [+ `up` (ResBlock ×2)]."""
  out_channels: int
  resample: str | None = None  # "down": a single down-sampling ResBlock; "up": res + up-ResBlock
  attention: bool = False
  num_head_channels: int = 64
  num_groups: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, H', W', C']
    if self.resample == "down":
      return ResBlock(self.out_channels, "down", self.num_groups, self.dtype, name="res")(x, emb)
    h = ResBlock(self.out_channels, None, self.num_groups, self.dtype, name="res")(x, emb)
    if self.attention:
      h = AttentionBlock(self.num_head_channels, self.num_groups, self.dtype, name="attn")(h)
    if self.resample == "up":
      h = ResBlock(self.out_channels, "up", self.num_groups, self.dtype, name="up")(h, emb)
    return h


class EmbedMLP(nn.Module):
  """Linear → SiLU → Linear, used for the time and the conditioning embeddings."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, D] -> [B, features]
    h = _dense(self.features, x.shape[-1], self.dtype, "dense_0")(x.astype(self.dtype))
    return _dense(self.features, self.features, self.dtype, "dense_1")(layers.silu(h))


class OutputHead(nn.Module):
  """GN → SiLU → zero-init conv3×3: the UNet's last layer (exactly zero output at init)."""
  out_channels: int
  num_groups: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, H, W, out]
    h = GroupNormSiLU(self.num_groups, name="norm")(h)
    return _conv(self.out_channels, h.shape[-1], 3, self.dtype, "conv", zero=True)(h)


class DiffusionUNet(nn.Module):
  """ADM UNet of METHOD §3.3; the defaults are the paper configuration (44,068,481 parameters).

  `attention_resolutions` lists downsample factors (1 = full resolution) that get attention after
  every non-resampling ResBlock; the reference's (3, 6, 12) never matches, so only the middle block
  attends (faithful Q2, the default `()`). `(2, 4)` gives the intended 48²/24² attention.
  `cond_dim=None` builds an unconditional model (embedding = time only).
  Parameters are float32; `dtype` is the compute dtype; GroupNorm and softmax run in float32.
  Submodules: time_embed, cond_embed, input_blocks_{i}, middle_res_0, middle_attn, middle_res_1,
  output_blocks_{i}, out.
  """
  in_channels: int = 1
  out_channels: int = 1
  model_channels: int = 128
  channel_mult: tuple[int, ...] = (1, 2, 2)
  num_res_blocks: int = 3
  attention_resolutions: tuple[int, ...] = ()
  num_head_channels: int = 64
  cond_dim: int | None = 512
  num_groups: int = 32
  dtype: Dtype = jnp.float32

  def _block(self, out_channels: int, name: str, resample: str | None = None,
             attention: bool = False) -> EmbedBlock:
    return EmbedBlock(out_channels, resample, attention, self.num_head_channels,
                      self.num_groups, self.dtype, name=name)

  def _embedding(self, t: jax.Array, cond: jax.Array | None) -> jax.Array:  # -> [B, E]
    c, e = self.model_channels, 4 * self.model_channels
    emb = EmbedMLP(e, self.dtype, name="time_embed")(timestep_embedding(t, c))
    if self.cond_dim is None:
      if cond is not None:
        raise ValueError("cond given to an unconditional DiffusionUNet (cond_dim=None)")
      return emb
    if cond is None or cond.shape[-1] != self.cond_dim:
      raise ValueError(f"cond must have shape [B, {self.cond_dim}]")
    cond_emb = EmbedMLP(e, self.dtype, name="cond_embed")(cond)
    return jnp.concatenate([emb, cond_emb], axis=-1)  # [B, 2E]

  @nn.compact
  def __call__(self, x_t: jax.Array, t: jax.Array, cond: jax.Array | None = None) -> jax.Array:
    # x_t: [B, H, W, in], t: [B] int, cond: [B, cond_dim] -> predicted x0 [B, H, W, out] float32
    factor = 2 ** (len(self.channel_mult) - 1)
    if x_t.shape[1] % factor or x_t.shape[2] % factor:
      raise ValueError(f"spatial size {x_t.shape[1:3]} must be divisible by {factor}")
    emb = self._embedding(t, cond)

    h = _conv(self.model_channels, self.in_channels, 3, self.dtype, "input_blocks_0")(
        x_t.astype(self.dtype))
    skips, i, ds, ch = [h], 1, 1, self.model_channels
    for level, mult in enumerate(self.channel_mult):
      ch = mult * self.model_channels
      for _ in range(self.num_res_blocks):
        h = self._block(ch, f"input_blocks_{i}", attention=ds in self.attention_resolutions)(h, emb)
        skips.append(h)
        i += 1
      if level != len(self.channel_mult) - 1:
        h = self._block(ch, f"input_blocks_{i}", resample="down")(h, emb)
        skips.append(h)
        i, ds = i + 1, ds * 2

    h = ResBlock(ch, None, self.num_groups, self.dtype, name="middle_res_0")(h, emb)
    h = AttentionBlock(self.num_head_channels, self.num_groups, self.dtype, name="middle_attn")(h)
    h = ResBlock(ch, None, self.num_groups, self.dtype, name="middle_res_1")(h, emb)

    i = 0
    for level, mult in reversed(list(enumerate(self.channel_mult))):
      ch = mult * self.model_channels
      for j in range(self.num_res_blocks + 1):
        up = level > 0 and j == self.num_res_blocks
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = self._block(ch, f"output_blocks_{i}", resample="up" if up else None,
                        attention=ds in self.attention_resolutions)(h, emb)
        i, ds = i + 1, ds // 2 if up else ds

    h = OutputHead(self.out_channels, self.num_groups, self.dtype, name="out")(h)
    return h.astype(jnp.float32)
