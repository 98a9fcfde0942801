"""Diffusion noise ε for a batch: simplex fields (per sample, or shared as in Q4) or Gaussian."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sadm_jax.diffusion.simplex import fractal_std, simplex_fields

NOISE_KINDS = ("simplex", "gaussian")


def sample_noise(key: jax.Array, shape: tuple[int, int, int, int], kind: str = "simplex",
                 shared: bool = False, octaves: int = 6, persistence: float = 0.8,
                 frequency: float = 64.0, normalise: bool = False,
                 aligned_octaves: bool = False) -> jax.Array:
  """Noise for a batch of images -> [B, H, W, C] float32, deterministic given `key`; jitted.

  shape: (B, H, W, C). kind='simplex': fractal OpenSimplex fields (`simplex_fractal`, raw std
  ≈ 0.57, not unit variance) — by default an independent field per sample and channel (field
  b·C + c comes from `split(key, B·C)[b·C + c]`); with `shared=True` one field per channel
  (keys `split(key, C)`) broadcast over the batch (the reference's behaviour, Q4 faithful
  mode). kind='gaussian': standard normal (also per sample, or shared if asked).
  `normalise=True` divides simplex fields by `fractal_std(octaves, persistence)`, giving
  approximately unit pooled variance (a no-op for Gaussian noise). `aligned_octaves` selects the
  reference octave layout (see `simplex_fractal`).
  """
  if kind not in NOISE_KINDS:
    raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")
  if len(shape) != 4:
    raise ValueError(f"shape must be (B, H, W, C), got {shape}")
  return _sample_noise(key, tuple(int(n) for n in shape), kind, bool(shared), int(octaves),
                       float(persistence), float(frequency), bool(normalise),
                       bool(aligned_octaves))


@functools.partial(jax.jit, static_argnames=("shape", "kind", "shared", "octaves", "persistence",
                                             "frequency", "normalise", "aligned_octaves"))
def _sample_noise(key: jax.Array, shape: tuple[int, int, int, int], kind: str, shared: bool,
                  octaves: int, persistence: float, frequency: float, normalise: bool,
                  aligned_octaves: bool) -> jax.Array:
  """Jitted body of `sample_noise` -> [B, H, W, C] float32."""
  batch, height, width, channels = shape
  if kind == "gaussian":
    if shared:
      field = jax.random.normal(key, (1, height, width, channels), jnp.float32)
      return jnp.broadcast_to(field, shape)
    return jax.random.normal(key, shape, jnp.float32)

  num_fields = channels if shared else batch * channels
  fields = simplex_fields(jax.random.split(key, num_fields), (height, width), octaves,
                          persistence, frequency, aligned_octaves)  # [N, H, W]
  if normalise:
    fields = fields / fractal_std(octaves, persistence)
  if shared:
    return jnp.broadcast_to(jnp.moveaxis(fields, 0, -1)[None], shape)  # [C,H,W] -> [B,H,W,C]
  return jnp.moveaxis(fields.reshape(batch, channels, height, width), 1, -1)
