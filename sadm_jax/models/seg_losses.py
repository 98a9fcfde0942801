"""Pure SegUnet losses: BCE-with-logits, soft Dice (MONAI-style) and the deep-supervision sum."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bce_with_logits(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Mean binary cross-entropy over all elements. logits, target: [B, H, W, 1] -> scalar f32."""
  z = logits.astype(jnp.float32)
  y = target.astype(jnp.float32)
  return jnp.mean(jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z))))


def soft_dice_loss(logits: jax.Array, target: jax.Array, smooth_nr: float = 1e-5,
                   smooth_dr: float = 1e-5) -> jax.Array:
  """1 − (2Σpy + smooth_nr)/(Σp + Σy + smooth_dr) with p = σ(logits), per sample and channel
  (sums over H, W), averaged — MONAI DiceLoss(sigmoid=True) defaults. [B, H, W, C] -> scalar."""
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  y = target.astype(jnp.float32)
  inter = jnp.sum(p * y, axis=(1, 2))  # [B, C]
  denom = jnp.sum(p, axis=(1, 2)) + jnp.sum(y, axis=(1, 2))
  return jnp.mean(1.0 - (2.0 * inter + smooth_nr) / (denom + smooth_dr))


def nearest_downsample(target: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Nearest resize to a smaller (h, w) by an integer factor, picking index floor(i·H/h)
  as PyTorch's `interpolate(mode='nearest')`. [B, H, W, C] -> [B, h, w, C]."""
  fh, fw = target.shape[1] // size[0], target.shape[2] // size[1]
  if fh * size[0] != target.shape[1] or fw * size[1] != target.shape[2]:
    raise ValueError(f"{target.shape[1:3]} is not an integer multiple of {size}")
  return target[:, ::fh, ::fw]


def deep_supervision_bce(logits: jax.Array, aux_logits: list[jax.Array],
                         target: jax.Array) -> jax.Array:
  """BCE of the final logits plus, unweighted, the BCE of every auxiliary head against the
  nearest-downsampled target (the reference's `deepsup=True` loss). -> scalar f32."""
  loss = bce_with_logits(logits, target)
  for aux in aux_logits:
    loss = loss + bce_with_logits(aux, nearest_downsample(target, aux.shape[1:3]))
  return loss
