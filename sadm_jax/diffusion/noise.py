"""Diffusion noise ε for a batch: simplex fields (per sample, or shared as in Q4) or Gaussian."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from sadm_jax.diffusion.simplex import fractal_std, simplex_fields

NOISE_KINDS = ("simplex", "gaussian")


def sample_noise(key: jax.Array, shape: tuple[int, int, int, int], kind: str = "simplex",
                 shared: bool = False, octaves: int = 6, persistence: float = 0.8,
                 frequency: float = 64.0, normalise: bool = False,
                 aligned_octaves: bool = False, float16: bool = False) -> jax.Array:
  """Noise for a batch of images -> [B, H, W, C] float32, deterministic given `key`; jitted.

  shape: (B, H, W, C). kind='simplex': fractal OpenSimplex fields (`simplex_fractal`, raw std
  ≈ 0.57, not unit variance) — by default an independent field per sample and channel (field
  b·C + c comes from `split(key, B·C)[b·C + c]`); with `shared=True` one field per channel
  (keys `split(key, C)`) broadcast over the batch (the reference's behaviour, Q4 faithful
  mode). kind='gaussian': standard normal (also per sample, or shared if asked).
  `normalise=True` divides simplex fields by `fractal_std(octaves, persistence)`, giving
  approximately unit pooled variance (a no-op for Gaussian noise). `aligned_octaves` selects the
  reference octave layout (see `simplex_fractal`). `float16=True` rounds the noise to the nearest
  float16 value (kept in a float32 array), as the reference returned its fields (Q4); applied last,
  to either kind.
  """
  if kind not in NOISE_KINDS:
    raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")
  if len(shape) != 4:
    raise ValueError(f"shape must be (B, H, W, C), got {shape}")
  return _sample_noise(key, tuple(int(n) for n in shape), kind, bool(shared), int(octaves),
                       float(persistence), float(frequency), bool(normalise),
                       bool(aligned_octaves), bool(float16))


def config_kwargs(diffusion: Any) -> dict:
  """`sample_noise` keyword arguments from a resolved `config.diffusion` section.

  Fields absent from an older saved config (`aligned_octaves`, `float16_noise`) or still None
  mean False: what such a run was trained with.
  """
  def flag(name: str) -> bool:
    return bool(diffusion.get(name) or False)

  return {"kind": str(diffusion.noise), "shared": bool(diffusion.shared_noise),
          "octaves": int(diffusion.octaves), "persistence": float(diffusion.persistence),
          "frequency": float(diffusion.frequency), "aligned_octaves": flag("aligned_octaves"),
          "float16": flag("float16_noise")}


def round_to_float16(noise: jax.Array) -> jax.Array:
  """[...] float -> the same shape in float32, each value rounded to the nearest float16."""
  return noise.astype(jnp.float16).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("shape", "kind", "shared", "octaves", "persistence",
                                             "frequency", "normalise", "aligned_octaves",
                                             "float16"))
def _sample_noise(key: jax.Array, shape: tuple[int, int, int, int], kind: str, shared: bool,
                  octaves: int, persistence: float, frequency: float, normalise: bool,
                  aligned_octaves: bool, float16: bool) -> jax.Array:
  """Jitted body of `sample_noise` -> [B, H, W, C] float32."""
  noise = _draw(key, shape, kind, shared, octaves, persistence, frequency, normalise,
                aligned_octaves)
  return round_to_float16(noise) if float16 else noise


def _draw(key: jax.Array, shape: tuple[int, int, int, int], kind: str, shared: bool,
          octaves: int, persistence: float, frequency: float, normalise: bool,
          aligned_octaves: bool) -> jax.Array:
  """The noise in float32 -> [B, H, W, C] (traced inside `_sample_noise`)."""
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
