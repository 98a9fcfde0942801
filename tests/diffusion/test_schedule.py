"""Cosine schedule values, forward process, P2 weights and the pred-x0 L1 loss on tiny arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sadm_jax.diffusion import schedule as sch


@pytest.fixture(scope="module")
def schedule() -> sch.Schedule:
  return sch.cosine_schedule()


def test_reference_values(schedule):
  # METHOD.md §3.4: √ᾱ / √(1−ᾱ) at the ensemble timesteps, to 3 decimals.
  for t, a, b in [(249, 0.920, 0.391), (499, 0.703, 0.711), (749, 0.380, 0.925)]:
    assert round(float(schedule.sqrt_alphas_cumprod[t]), 3) == a
    assert round(float(schedule.sqrt_one_minus_alphas_cumprod[t]), 3) == b
  assert float(schedule.sqrt_alphas_cumprod[999]) < 1e-3
  assert float(schedule.sqrt_one_minus_alphas_cumprod[999]) == pytest.approx(1.0, abs=1e-6)


def test_closed_form_alpha_bar(schedule):
  # Away from the clipped tail, ᾱ_t = cos²(((t+1)/T + s)/(1+s)·π/2) / cos²(s/(1+s)·π/2).
  f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
  t = np.arange(0, 990)
  np.testing.assert_allclose(np.asarray(schedule.alphas_cumprod[:990]), f((t + 1) / 1000) / f(0.0),
                             rtol=1e-5, atol=1e-7)


def test_shapes_dtypes_and_monotonicity(schedule):
  assert schedule.num_timesteps == 1000
  for name in ("betas", "alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):
    arr = getattr(schedule, name)
    assert arr.shape == (1000,) and arr.dtype == jnp.float32, name
  betas = np.asarray(schedule.betas)
  assert betas.min() > 0 and betas.max() <= 0.999 + 1e-7
  assert betas[-1] == pytest.approx(0.999)  # the last step is clipped
  assert np.all(np.diff(betas) >= 0)
  assert np.all(np.diff(np.asarray(schedule.alphas_cumprod)) < 0)
  np.testing.assert_allclose(np.asarray(schedule.sqrt_alphas_cumprod) ** 2
                             + np.asarray(schedule.sqrt_one_minus_alphas_cumprod) ** 2, 1.0,
                             atol=1e-6)


def test_schedule_is_a_pytree_with_static_length(schedule):
  leaves, treedef = jax.tree_util.tree_flatten(schedule)
  assert len(leaves) == 4
  rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
  assert rebuilt.num_timesteps == 1000
  assert jax.jit(lambda s: s.num_timesteps * s.betas[0])(schedule) > 0


def test_q_sample_known_answers(schedule):
  x0 = jnp.asarray([[[[0.5], [-1.0]], [[1.0], [0.0]]]] * 3, jnp.float32)  # [3, 2, 2, 1]
  noise = jnp.asarray([[[[1.0], [-0.5]], [[0.25], [2.0]]]] * 3, jnp.float32)
  t = jnp.asarray([0, 499, 999])
  x_t = np.asarray(sch.q_sample(schedule, x0, t, noise))
  assert x_t.shape == (3, 2, 2, 1)
  np.testing.assert_allclose(x_t[0], x0[0], atol=0.02)  # t=0: almost clean (√(1−ᾱ₀) ≈ 0.0064)
  np.testing.assert_allclose(x_t[2], noise[2], atol=1e-3)  # t=999: almost pure noise
  a = float(schedule.sqrt_alphas_cumprod[499])
  b = float(schedule.sqrt_one_minus_alphas_cumprod[499])
  np.testing.assert_allclose(x_t[1], a * np.asarray(x0[1]) + b * np.asarray(noise[1]), rtol=1e-6)
  # A scalar t applies to the whole batch.
  np.testing.assert_allclose(np.asarray(sch.q_sample(schedule, x0, 499, noise))[0], x_t[1],
                             rtol=1e-6)


def test_p2_weights(schedule):
  t = jnp.asarray([0, 10, 499, 999])
  np.testing.assert_array_equal(np.asarray(sch.p2_weights(schedule, t)), 1.0)
  # γ = 1, k = 1: 1/(1 + ᾱ/(1−ᾱ)) = 1 − ᾱ.
  np.testing.assert_allclose(np.asarray(sch.p2_weights(schedule, t, gamma=1.0, k=1.0)),
                             np.asarray(schedule.sqrt_one_minus_alphas_cumprod)[np.asarray(t)] ** 2,
                             rtol=1e-4)


def test_pred_x0_l1_loss_known_answer(schedule):
  target = jnp.zeros((2, 2, 2, 1), jnp.float32)
  pred = jnp.asarray([[[[1.0], [-1.0]], [[2.0], [0.0]]],
                      [[[0.5], [0.5]], [[-0.5], [0.5]]]], jnp.float32)
  t = jnp.asarray([3, 700])
  loss, per_sample = sch.pred_x0_l1_loss(pred, target, t, schedule)
  np.testing.assert_allclose(np.asarray(per_sample), [1.0, 0.5])
  assert float(loss) == pytest.approx(0.75)
  loss, per_sample = sch.pred_x0_l1_loss(pred, target, t, schedule, p2_gamma=1.0)
  w = np.asarray(schedule.sqrt_one_minus_alphas_cumprod)[[3, 700]] ** 2  # 1 − ᾱ_t
  np.testing.assert_allclose(np.asarray(per_sample), [1.0 * w[0], 0.5 * w[1]], rtol=1e-4)
  assert float(loss) == pytest.approx(float(np.mean(np.asarray(per_sample))), rel=1e-6)


def test_model_space_round_trip():
  x = jnp.asarray([0.0, 0.25, 0.5, 1.0])
  np.testing.assert_array_equal(np.asarray(sch.to_model_space(x)), [-1.0, -0.5, 0.0, 1.0])
  np.testing.assert_array_equal(np.asarray(sch.from_model_space(sch.to_model_space(x))), x)
  assert float(sch.from_model_space(jnp.asarray(1.5))) == 1.25  # not clipped
