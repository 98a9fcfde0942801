"""Single-step pred-x0 reconstruction and the noise ensemble over timesteps (network-agnostic)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from sadm_jax.diffusion.noise import sample_noise
from sadm_jax.diffusion.schedule import Schedule, from_model_space, q_sample, to_model_space

# denoise_fn(x_t [B,H,W,C] in model space, t [B] int32, cond) -> predicted x̃0 [B,H,W,C] in [−1, 1].
DenoiseFn = Callable[[jax.Array, jax.Array, Any], jax.Array]

ENSEMBLE_TIMESTEPS = (249, 499, 749)


def reconstruct(denoise_fn: DenoiseFn, x: jax.Array, cond: Any, t: jax.Array, noise: jax.Array,
                schedule: Schedule) -> jax.Array:
  """One-step reconstruction x̂ = (denoise_fn(q_sample(2x − 1, t, ε), t, cond) + 1)/2, unclipped.

  x: [B, H, W, 1] in [0, 1]; t: [B] int or a scalar (broadcast to [B]); noise ε: [B, H, W, 1];
  cond: anything `denoise_fn` accepts (e.g. the encoder features [B, D]). Returns x̂ [B, H, W, 1].
  """
  t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x.shape[0],))
  x_t = q_sample(schedule, to_model_space(x), t, noise)
  return from_model_space(denoise_fn(x_t, t, cond))


def ensemble_reconstruct(denoise_fn: DenoiseFn, x: jax.Array, cond: Any, key: jax.Array,
                         schedule: Schedule, timesteps: Sequence[int] = ENSEMBLE_TIMESTEPS,
                         noise_kind: str = "simplex", shared_noise: bool = False,
                         octaves: int = 6, persistence: float = 0.8, frequency: float = 64.0,
                         normalise_noise: bool = False, aligned_octaves: bool = False,
                         vectorise: bool = False,
                         float16_noise: bool = False) -> tuple[jax.Array, jax.Array]:
  """Noise-ensemble reconstruction: one fresh noise draw per timestep, then the mean.

  x: [B, H, W, 1] in [0, 1]. Timestep i (0-based position in `timesteps`) uses noise
  `sample_noise(fold_in(key, i), x.shape, noise_kind, shared_noise, …)`; `shared_noise=True` is the
  reference's one-field-per-step-for-all-slices mode (Q4); `aligned_octaves` and `float16_noise`
  are its octave layout and float16 rounding (`sample_noise`'s `float16`). The K = len(timesteps)
  forwards run sequentially with `lax.map` (one compiled forward, memory of one batch) or, with
  `vectorise=True`, as one vmapped forward over K·B images. Jit-friendly (`timesteps` etc. static).
  Returns (mean reconstruction [B, H, W, 1], per-timestep reconstructions [K, B, H, W, 1]).
  """
  ts = jnp.asarray(tuple(timesteps), jnp.int32)  # [K]
  indices = jnp.arange(len(timesteps), dtype=jnp.int32)  # [K]

  def one_step(args: tuple[jax.Array, jax.Array]) -> jax.Array:
    index, t = args
    noise = sample_noise(jax.random.fold_in(key, index), x.shape, noise_kind, shared_noise,
                         octaves, persistence, frequency, normalise_noise, aligned_octaves,
                         float16_noise)
    return reconstruct(denoise_fn, x, cond, t, noise, schedule)

  if vectorise:
    per_t = jax.vmap(lambda i, t: one_step((i, t)))(indices, ts)
  else:
    per_t = jax.lax.map(one_step, (indices, ts))
  return per_t.mean(axis=0), per_t
