"""Single-step reconstruction and the noise ensemble with stand-in denoisers (no network)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sadm_jax.diffusion.noise import sample_noise
from sadm_jax.diffusion.reconstruct import ensemble_reconstruct, reconstruct
from sadm_jax.diffusion.schedule import cosine_schedule

SHAPE = (3, 24, 24, 1)


@pytest.fixture(scope="module")
def schedule():
  return cosine_schedule()


def _images(key: int = 0, grid: bool = False) -> jax.Array:
  x = jax.random.uniform(jax.random.key(key), SHAPE)
  return jnp.round(x * 256) / 256 if grid else x  # grid values make 2x − 1 exact


def _identity_denoiser(x_t, t, cond):
  """Returns x_t itself, so the reconstruction reveals the noise that was used."""
  del t, cond
  return x_t


def _recover_noise(schedule, x, per_t, timesteps):
  """Inverts x̂ = (x_t + 1)/2 with x_t = a·x̃ + b·ε -> ε [K, B, H, W, 1] (identity denoiser)."""
  a = np.asarray(schedule.sqrt_alphas_cumprod)[list(timesteps)][:, None, None, None, None]
  b = np.asarray(schedule.sqrt_one_minus_alphas_cumprod)[list(timesteps)][:, None, None, None, None]
  x_t = 2.0 * np.asarray(per_t) - 1.0
  return (x_t - a * (2.0 * np.asarray(x) - 1.0)[None]) / b


def test_perfect_denoiser_gives_input_back(schedule):
  for grid in (True, False):
    x = _images(grid=grid)
    perfect = lambda x_t, t, cond, x=x: 2.0 * x - 1.0
    noise = sample_noise(jax.random.key(1), SHAPE)
    x_hat = reconstruct(perfect, x, None, jnp.asarray([10, 500, 999]), noise, schedule)
    assert x_hat.shape == SHAPE
    if grid:
      np.testing.assert_array_equal(np.asarray(x_hat), np.asarray(x))
    else:
      np.testing.assert_allclose(np.asarray(x_hat), np.asarray(x), rtol=0, atol=1e-7)


def test_reconstruct_passes_t_and_cond_and_forms_x_t(schedule):
  x = _images()
  cond = jnp.arange(3.0)[:, None] * jnp.ones((3, 5))
  noise = sample_noise(jax.random.key(2), SHAPE, kind="gaussian")
  seen = {}

  def spy(x_t, t, c):
    seen["t"], seen["cond"] = t, c
    return x_t

  x_hat = reconstruct(spy, x, cond, 499, noise, schedule)  # scalar t -> [B]
  np.testing.assert_array_equal(np.asarray(seen["t"]), [499, 499, 499])
  assert seen["t"].dtype == jnp.int32
  assert seen["cond"] is cond
  a, b = schedule.sqrt_alphas_cumprod[499], schedule.sqrt_one_minus_alphas_cumprod[499]
  expected = (a * (2 * x - 1) + b * noise + 1) / 2  # unclipped
  np.testing.assert_allclose(np.asarray(x_hat), np.asarray(expected), atol=1e-6)
  assert float(x_hat.max()) > 1.0 or float(x_hat.min()) < 0.0


def test_ensemble_uses_fresh_noise_per_timestep(schedule):
  x = _images()
  key = jax.random.key(42)
  timesteps = (249, 499, 749)
  mean, per_t = ensemble_reconstruct(_identity_denoiser, x, None, key, schedule)
  assert mean.shape == SHAPE and per_t.shape == (3,) + SHAPE
  np.testing.assert_allclose(np.asarray(mean), np.asarray(per_t).mean(axis=0), atol=1e-6)
  eps = _recover_noise(schedule, x, per_t, timesteps)
  for i in range(3):
    expected = np.asarray(sample_noise(jax.random.fold_in(key, i), SHAPE))
    np.testing.assert_allclose(eps[i], expected, atol=2e-4)
  assert np.abs(eps[0] - eps[1]).mean() > 0.1 and np.abs(eps[1] - eps[2]).mean() > 0.1
  # Independent mode: different fields per sample too.
  assert np.abs(eps[0, 0] - eps[0, 1]).mean() > 0.1


def test_ensemble_shared_noise_and_perfect_denoiser(schedule):
  x = _images()
  timesteps = (100, 900)
  _, per_t = ensemble_reconstruct(_identity_denoiser, x, None, jax.random.key(0), schedule,
                                  timesteps=timesteps, shared_noise=True)
  eps = _recover_noise(schedule, x, per_t, timesteps)
  np.testing.assert_allclose(eps[:, 1], eps[:, 0], atol=2e-4)  # one field for the whole batch
  perfect = lambda x_t, t, cond: 2.0 * x - 1.0
  mean, per_t = ensemble_reconstruct(perfect, x, None, jax.random.key(0), schedule)
  np.testing.assert_allclose(np.asarray(mean), np.asarray(x), atol=1e-6)


def test_ensemble_jit_and_vectorised_agree(schedule):
  x = _images()
  cond = jnp.ones((3, 4))

  def denoiser(x_t, t, c):  # depends on t and cond so both paths are exercised
    return jnp.tanh(x_t) * (t[:, None, None, None] / 1000.0) + c.sum(axis=1)[:, None, None, None]

  run = functools.partial(ensemble_reconstruct, denoiser, noise_kind="gaussian")
  eager = run(x, cond, jax.random.key(3), schedule)
  jitted = jax.jit(run)(x, cond, jax.random.key(3), schedule)
  vectorised = jax.jit(functools.partial(run, vectorise=True))(x, cond, jax.random.key(3), schedule)
  for other in (jitted, vectorised):
    np.testing.assert_allclose(np.asarray(other[0]), np.asarray(eager[0]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(other[1]), np.asarray(eager[1]), atol=1e-5)
