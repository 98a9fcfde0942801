"""Cosine noise schedule as a frozen pytree and stateless forward-process / loss functions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class Schedule:
  """Precomputed diffusion schedule; every array is [T] float32, T = `num_timesteps` (static)."""
  betas: jax.Array  # [T]
  alphas_cumprod: jax.Array  # [T]  ᾱ_t
  sqrt_alphas_cumprod: jax.Array  # [T]  √ᾱ_t
  sqrt_one_minus_alphas_cumprod: jax.Array  # [T]  √(1 − ᾱ_t)
  num_timesteps: int = struct.field(pytree_node=False)


def cosine_schedule(num_timesteps: int = 1000, s: float = 0.008,
                    max_beta: float = 0.999) -> Schedule:
  """Nichol & Dhariwal cosine schedule, computed in float64 and stored as float32.

  ᾱ(u) = cos²((u + s)/(1 + s) · π/2) on u = t/T; β_t = clip(1 − ᾱ((t+1)/T)/ᾱ(t/T), 0, max_beta);
  the stored ᾱ_t = Π_{i≤t}(1 − β_i) (index t = 0 … T−1 is the state after t+1 noising steps).
  """
  u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  alpha_bar = np.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2
  betas = np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, max_beta)
  alphas_cumprod = np.cumprod(1.0 - betas)
  return Schedule(
      betas=jnp.asarray(betas, jnp.float32),
      alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32),
      sqrt_alphas_cumprod=jnp.asarray(np.sqrt(alphas_cumprod), jnp.float32),
      sqrt_one_minus_alphas_cumprod=jnp.asarray(np.sqrt(1.0 - alphas_cumprod), jnp.float32),
      num_timesteps=num_timesteps)


def _per_sample(values: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  """Gathers values[t] for t [B] (or scalar) and reshapes to [B, 1, …, 1] with `ndim` axes."""
  t = jnp.asarray(t, jnp.int32)
  picked = values[t]
  if picked.ndim == 0:
    return picked
  return picked.reshape(picked.shape + (1,) * (ndim - picked.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Forward process x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε.

  x0, noise: [B, H, W, C] in model space ([−1, 1]); t: [B] int (or a scalar for the whole batch).
  Returns x_t [B, H, W, C] in x0's dtype.
  """
  a = _per_sample(schedule.sqrt_alphas_cumprod, t, x0.ndim)
  b = _per_sample(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim)
  return (a * x0 + b * noise).astype(x0.dtype)


def p2_weights(schedule: Schedule, t: jax.Array, gamma: float = 0.0, k: float = 1.0) -> jax.Array:
  """P2 loss weights 1/(k + SNR_t)^γ for t [B] -> [B] float32 (all ones for γ = 0).

  SNR_t = ᾱ_t/(1 − ᾱ_t), formed from the stored square roots to avoid cancellation near t = 0.
  """
  t = jnp.asarray(t, jnp.int32)
  snr = (schedule.sqrt_alphas_cumprod[t] / schedule.sqrt_one_minus_alphas_cumprod[t]) ** 2
  return jnp.power(k + snr, -gamma).astype(jnp.float32)


def pred_x0_l1_loss(pred: jax.Array, target: jax.Array, t: jax.Array, schedule: Schedule,
                    p2_gamma: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """L1 pred-x0 loss: per-sample mean |pred − target| times the P2 weight, then batch mean.

  pred, target: [B, H, W, C]; t: [B]. Returns (scalar loss, per-sample weighted loss [B]),
  both float32.
  """
  err = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))
  per_sample = err.reshape(err.shape[0], -1).mean(axis=1) * p2_weights(schedule, t, p2_gamma)
  return per_sample.mean(), per_sample


def to_model_space(x: jax.Array) -> jax.Array:
  """Maps images in [0, 1] to the diffusion model's range [−1, 1]: 2x − 1."""
  return 2.0 * x - 1.0


def from_model_space(y: jax.Array) -> jax.Array:
  """Maps model outputs in [−1, 1] back to image range: (y + 1)/2 (no clipping)."""
  return (y + 1.0) / 2.0
