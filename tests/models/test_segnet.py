"""Tests for the SegUnet: parameter counts, weight standardisation, siamese sharing, losses."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sadm_jax.models.layers import standardize_weight
from sadm_jax.models.seg_losses import (bce_with_logits, deep_supervision_bce,
                                        nearest_downsample, soft_dice_loss)
from sadm_jax.models.segnet import Encoder, SegUnet, WSConv, middle_divisor_groups
from tests.helpers import normal_data, uniform_data

B, H = 2, 96
TINY = dict(wf=3)  # widths 8/16/32/64


def _count(tree) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _abstract(model: SegUnet, size: int = H, with_recon: bool = True):
  x = jax.ShapeDtypeStruct((B, size, size, 1), jnp.float32)
  recon = x if with_recon else None
  return jax.eval_shape(model.init, jax.random.key(0), x, recon)["params"], (x, recon)


def _random_params(abstract, seed: int = 0):
  """Host-side random parameters shaped like `abstract` (cheaper than compiling an XLA init)."""
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    name = path[-1].key
    if name == "kernel":
      return (rng.normal(size=a.shape) / np.sqrt(np.prod(a.shape[:-1]))).astype(np.float32)
    return ((name == "scale") + 0.1 * rng.normal(size=a.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, abstract)


def test_paper_config_parameter_count():
  params, _ = _abstract(SegUnet())
  assert _count(params) == 16_736_705
  assert {k: _count(v) for k, v in params.items()} == {
      "encoder": 4_688_064, "up_0": 9_178_624, "up_1": 2_295_552, "up_2": 574_336, "head": 129}
  assert params["up_0"]["upconv"]["kernel"].shape == (2, 2, 1024, 512)
  assert params["up_0"]["conv_block"]["conv_0"]["kernel"].shape == (3, 3, 1024, 512)


def test_variant_parameter_counts():
  input_only, _ = _abstract(SegUnet(use_residual=False), with_recon=False)
  assert _count(input_only) == 7_701_825  # plain DAE UNet: decoder 512→256→128→64, head 64→1
  assert input_only["up_0"]["upconv"]["kernel"].shape == (2, 2, 512, 256)
  deep, _ = _abstract(SegUnet(deep_supervision=True))
  assert _count(deep) == 16_736_705 + 513 + 257 + 129


@pytest.mark.parametrize("kwargs,with_recon", [
    ({}, True), ({"use_residual": False}, False), ({"dtype": jnp.bfloat16}, True)])
def test_output_shape_at_96(kwargs, with_recon):
  model = SegUnet(**kwargs)
  params, (x, recon) = _abstract(model, with_recon=with_recon)
  out = jax.eval_shape(model.apply, {"params": params}, x, recon)
  assert out.shape == (B, H, H, 1) and out.dtype == jnp.float32


def test_deep_supervision_shapes_at_96():
  model = SegUnet(deep_supervision=True)
  params, (x, recon) = _abstract(model)
  logits, aux = jax.eval_shape(model.apply, {"params": params}, x, recon)
  assert logits.shape == (B, H, H, 1)
  assert [a.shape for a in aux] == [(B, 24, 24, 1), (B, 48, 48, 1), (B, 96, 96, 1)]


def test_middle_divisor_groups():
  assert [middle_divisor_groups(c) for c in (64, 128, 256, 512)] == [8, 16, 16, 32]
  assert [middle_divisor_groups(c) for c in (1, 12, 16)] == [1, 4, 4]


def test_standardize_weight_known_answer():
  kernel = np.zeros((2, 2, 1, 2), np.float32)
  kernel[..., 0, 0] = [[1, 2], [3, 4]]
  kernel[..., 0, 1] = [[-5, 5], [-5, 5]]
  w = np.asarray(standardize_weight(jnp.asarray(kernel)))
  std0, std1 = math.sqrt(5 / 3), math.sqrt(100 / 3)  # unbiased (ddof=1) std of each filter
  np.testing.assert_allclose(w[..., 0, 0], (kernel[..., 0, 0] - 2.5) / (std0 + 1e-5), rtol=1e-6)
  np.testing.assert_allclose(w[..., 0, 1], kernel[..., 0, 1] / (std1 + 1e-5), rtol=1e-6)
  kernel = np.random.default_rng(0).normal(size=(3, 3, 4, 5)) * 7 + 3
  random = np.asarray(standardize_weight(jnp.asarray(kernel, jnp.float32)))
  np.testing.assert_allclose(random.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
  np.testing.assert_allclose(random.reshape(-1, 5).std(axis=0, ddof=1), 1.0, atol=1e-5)


def test_ws_conv_is_invariant_to_per_filter_affine_kernel_changes():
  conv = WSConv(4)
  x = normal_data(1, (1, 5, 5, 3))
  params = _random_params(jax.eval_shape(conv.init, jax.random.key(0), x)["params"])
  out = conv.apply({"params": params}, x)
  assert out.shape == (1, 3, 3, 4)  # VALID: the block pads by reflection beforehand
  moved = {**params, "kernel": params["kernel"] * np.array([2.0, 3.0, 0.5, 9.0]) + 0.7}
  np.testing.assert_allclose(conv.apply({"params": moved}, x), out, rtol=1e-3, atol=1e-3)


def _tiny_inputs(size: int = 32):
  x = uniform_data(0, (B, size, size, 1))
  recon = uniform_data(1, (B, size, size, 1))
  return x, recon


def _apply_capturing_encoder(model, variables, x, recon):
  logits, state = model.apply(variables, x, recon, mutable=["intermediates"],
                              capture_intermediates=lambda mdl, _: isinstance(mdl, Encoder))
  (features,) = state["intermediates"]["encoder"]["__call__"]  # encoder called once, batched
  return logits, features


@pytest.fixture(scope="module")
def tiny():
  model = SegUnet(**TINY)
  x, recon = _tiny_inputs()
  params = _random_params(_abstract(model, 32)[0])
  apply = jax.jit(lambda v, a, b: _apply_capturing_encoder(model, v, a, b))
  return model, {"params": params}, (x, recon), apply


def test_siamese_branches_share_encoder_weights(tiny):
  model, variables, (x, recon), apply = tiny
  # recon = 0: both branches see x, so shared weights must give the same features (to rounding:
  # on a CPU without AVX-512, an AMD Zen 1, XLA's convolutions round some batch rows differently,
  # up to 5e-7 here; branches with weights of their own would differ by O(1)).
  _, features = apply(variables, x, jnp.zeros_like(x))
  assert [f.shape[-1] for f in features] == [8, 16, 32, 64]
  for f in features:
    np.testing.assert_allclose(np.asarray(f[:B]), np.asarray(f[B:]), rtol=0, atol=1e-5)
  # In general: first half = encode(x − recon), second half = encode(x), with the same params.
  _, features = apply(variables, x, recon)
  encode = jax.jit(lambda v, a: model.apply(v, a, method=SegUnet.encode))
  for f, fr, fx in zip(features, encode(variables, x - recon), encode(variables, x)):
    np.testing.assert_allclose(np.asarray(f[:B]), np.asarray(fr), atol=1e-5)
    np.testing.assert_allclose(np.asarray(f[B:]), np.asarray(fx), atol=1e-5)


def test_tiny_forward_and_bfloat16(tiny):
  _, variables, (x, recon), apply = tiny
  out = np.asarray(apply(variables, x, recon)[0])
  assert out.shape == (B, 32, 32, 1) and out.dtype == np.float32 and np.all(np.isfinite(out))
  out16 = jax.jit(SegUnet(**TINY, dtype=jnp.bfloat16).apply)(variables, x, recon)
  assert out16.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out16)))
  np.testing.assert_allclose(np.asarray(out16), out, atol=0.1 * np.abs(out).max())


def test_input_only_variant_ignores_recon():
  model = SegUnet(**TINY, use_residual=False)
  x, recon = _tiny_inputs()
  variables = {"params": _random_params(_abstract(model, 32, with_recon=False)[0])}
  apply = jax.jit(model.apply)
  out = np.asarray(apply(variables, x, None))
  assert out.shape == (B, 32, 32, 1) and np.all(np.isfinite(out))
  np.testing.assert_array_equal(np.asarray(apply(variables, x, recon)), out)
  with pytest.raises(ValueError, match="reconstruction"):
    jax.eval_shape(SegUnet(**TINY).apply, variables, x, None)


def test_bce_and_dice_known_values():
  zeros = jnp.zeros((2, 4, 4, 1))
  np.testing.assert_allclose(bce_with_logits(zeros, zeros + 1), math.log(2), rtol=1e-6)
  logits = jnp.array([[-100.0, 100.0, 2.0]]).reshape(1, 1, 3, 1)
  target = jnp.array([[0.0, 1.0, 0.0]]).reshape(1, 1, 3, 1)
  np.testing.assert_allclose(bce_with_logits(logits, target), math.log1p(math.exp(2)) / 3,
                             rtol=1e-6)
  perfect = jnp.where(target > 0, 50.0, -50.0)
  np.testing.assert_allclose(soft_dice_loss(perfect, target), 0.0, atol=1e-6)
  p = 1 / (1 + math.exp(-2.0))  # dice of logits vs target: 2·1 / (1 + p + 1)
  np.testing.assert_allclose(soft_dice_loss(logits, target),
                             1 - (2 + 1e-5) / (2 + p + 1e-5), rtol=1e-5)


def test_deep_supervision_loss_uses_nearest_downsampled_target():
  target = (jnp.arange(64.0).reshape(1, 8, 8, 1) % 3 == 0).astype(jnp.float32)
  np.testing.assert_array_equal(nearest_downsample(target, (4, 4)), target[:, ::2, ::2])
  logits = jnp.zeros((1, 8, 8, 1))
  aux = [jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 4, 4, 1))]
  np.testing.assert_allclose(deep_supervision_bce(logits, aux, target), 3 * math.log(2),
                             rtol=1e-6)


def test_every_silu_goes_through_tanh():
  # layers.silu in the conv blocks: no logistic left in the traced network (logits out)
  model = SegUnet(**TINY)
  params, (x, recon) = _abstract(model, size=32)
  jaxpr = str(jax.make_jaxpr(model.apply)({"params": params}, x, recon))
  assert "logistic" not in jaxpr and "tanh" in jaxpr
