"""Tests for SparK (counts, shapes, sparse invariance, masks, loss) and the strict transfer to E."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from sadm_jax.models.resnet import ResNet50Encoder, mask_at
from sadm_jax.models.spark import (SparK, keep_count, mask_token_init, patchify,
                                   random_active_mask, spark_loss)
from sadm_jax.models.transfer import load_spark_backbone_into_encoder
from tests.helpers import abstract_variables, compiled_apply, on_device
from tests.helpers import he_random_variables as random_variables
from tests.helpers import param_count as count
from tests.helpers import uniform_data


# [2, 2, 2]: the 2x2 patch grid of a 64x64 input
ACTIVE_64 = jnp.array([[[True, False], [False, False]], [[False, True], [True, False]]])


@pytest.fixture(scope="module")
def spark_variables():
  return random_variables(SparK(), jnp.zeros((2, 64, 64, 1)), ACTIVE_64, False)


@pytest.fixture(scope="module")
def encoder_variables():
  abstract = abstract_variables(ResNet50Encoder(), jnp.zeros((2, 64, 64, 1)), False)
  return jax.tree_util.tree_map(lambda s: on_device(np.full(s.shape, 0.5), s.dtype), abstract)


def test_parameter_counts_at_paper_config():
  x, active = jnp.zeros((2, 96, 96, 1)), jnp.ones((2, 3, 3), bool)
  params = abstract_variables(SparK(), x, active, False)["params"]

  def total(prefix: str) -> int:
    return sum(count(v) for k, v in params.items() if k.startswith(prefix))

  assert count(params) == 37_964_305
  assert count(params["backbone"]) == 23_501_760
  assert count(params["decoder"]) == 10_304_913
  assert total("densify_proj") == 4_146_112
  assert total("densify_norm") == 7_680
  assert total("mask_token") == 3_840
  assert params["mask_token0"].shape == (1, 1, 1, 2048)
  assert params["densify_proj0"]["kernel"].shape == (1, 1, 2048, 512)
  assert params["densify_proj3"]["kernel"].shape == (3, 3, 256, 64)
  assert "head" not in params["backbone"]


def test_output_shape_at_paper_size():
  x, active = jnp.zeros((2, 96, 96, 1)), jnp.ones((2, 3, 3), bool)
  model = SparK()
  variables = abstract_variables(model, x, active, False)
  recon, _ = jax.eval_shape(lambda v: model.apply(v, x, active, True, mutable=["batch_stats"],
                                                  rngs={"dropout": jax.random.key(0)}), variables)
  assert recon.shape == (2, 96, 96, 1)


def test_real_forward_ignores_masked_pixels(spark_variables):
  model = SparK()
  x1 = uniform_data(1, (2, 64, 64, 1))
  m = mask_at(ACTIVE_64, (64, 64))
  x2 = x1 * m + (1 - m) * uniform_data(2, x1.shape)

  def run(x):
    return model.apply(spark_variables, x, ACTIVE_64, True, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(3)})

  (r1, s1), (r2, s2) = run(x1), run(x2)
  assert r1.shape == (2, 64, 64, 1) and bool(jnp.all(jnp.isfinite(r1)))
  np.testing.assert_array_equal(np.asarray(r1), np.asarray(r2))
  jax.tree_util.tree_map(np.testing.assert_array_equal, s1, s2)
  changed = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b),
                                   s1["batch_stats"], spark_variables["batch_stats"])
  assert all(jax.tree_util.tree_leaves(changed))


def test_random_active_mask_keeps_exactly_three_and_is_deterministic():
  assert keep_count((3, 3), 0.65) == 3
  key = jax.random.key(7)
  mask = np.asarray(random_active_mask(key, 256))
  assert mask.shape == (256, 3, 3) and mask.dtype == np.bool_
  np.testing.assert_array_equal(mask.sum(axis=(1, 2)), 3)
  np.testing.assert_array_equal(mask, random_active_mask(key, 256))
  assert not np.array_equal(mask, random_active_mask(jax.random.key(8), 256))
  assert len({tuple(m.ravel()) for m in mask}) > 20  # per-sample permutations
  freq = mask.mean(axis=0)
  assert np.all(np.abs(freq - 1 / 3) < 0.12)  # every patch roughly equally likely


def test_patchify_order():
  x = jnp.arange(2 * 6 * 6).reshape(2, 6, 6, 1).astype(jnp.float32)
  patches = patchify(x, (3, 3))  # [2, 9, 4]
  assert patches.shape == (2, 9, 4)
  np.testing.assert_array_equal(patches[1, 5], np.asarray(x[1, 2:4, 4:6, 0]).ravel())


def test_spark_loss_known_answers():
  x = uniform_data(0, (2, 96, 96, 1))
  active = jnp.array([[[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 0], [1, 1, 1], [0, 0, 0]]], bool)
  m = mask_at(active, (96, 96))
  recon = x + (1 - m) * 1.0 + m * 5.0  # error 1 on masked patches, 5 on visible ones (ignored)
  assert float(spark_loss(x, recon, active)) == pytest.approx(1.0, rel=1e-6)
  # squared error 4 on one masked 32x32 patch of sample 0 only: 4 / 12 masked patches in the batch
  recon = x.at[0, 0:32, 32:64, 0].add(2.0)
  assert float(spark_loss(x, recon, active)) == pytest.approx(4.0 / 12, rel=1e-6)
  # error on half the pixels of that patch: per-patch MSE is the mean over its pixels
  recon = x.at[0, 0:16, 32:64, 0].add(2.0)
  assert float(spark_loss(x, recon, active)) == pytest.approx(2.0 / 12, rel=1e-6)
  assert float(spark_loss(x, x + 3.0, jnp.ones_like(active))) == 0.0  # nothing masked


def test_mask_token_init_is_clipped():
  values = np.asarray(mask_token_init(jax.random.key(0), (1, 1, 1, 4096)))
  assert values.min() >= -0.02 and values.max() <= 0.02
  assert 0.005 < values.std() < 0.02


def _flat(tree):
  return traverse_util.flatten_dict(tree)


def test_transfer_round_trip_loads_exactly_the_backbone(spark_variables, encoder_variables):
  loaded = load_spark_backbone_into_encoder(encoder_variables, spark_variables)
  before, after = _flat(encoder_variables), _flat(loaded)
  spark = _flat(spark_variables)
  assert set(before) == set(after)
  copied = [k for k in after if after[k] is not before[k]]
  assert len(copied) == 265  # 53 conv kernels + 53 x (scale, bias) + 53 x (mean, var)
  for key in copied:
    assert key[1] == "backbone"
    assert after[key] is spark[(key[0], "backbone") + key[2:]]
  assert after[("params", "head", "kernel")] is before[("params", "head", "kernel")]
  assert after[("params", "head", "bias")] is before[("params", "head", "bias")]
  np.testing.assert_array_equal(encoder_variables["params"]["backbone"]["conv1"]["kernel"], 0.5)
  out = compiled_apply(ResNet50Encoder(), static_argnums=2)(  # consumable
      loaded, jnp.full((2, 32, 32, 1), 0.5), False)
  assert out.shape == (2, 512) and bool(jnp.all(jnp.isfinite(out)))


def _tampered(tree, drop=(), add=None):
  flat = dict(_flat(tree))
  for key in drop:
    del flat[key]
  flat.update(add or {})
  return traverse_util.unflatten_dict(flat)


@pytest.mark.parametrize("case, message", [
    ("extra", "params/backbone/layer1_0/conv9/kernel"),
    ("missing", "batch_stats/backbone/layer4_2/bn3/var"),
    ("shape", "params/backbone/conv1/kernel"),
    ("encoder_extra", "params/pool/scale"),
])
def test_transfer_strict_key_check(spark_variables, encoder_variables, case, message):
  spark, encoder = spark_variables, encoder_variables
  if case == "extra":
    spark = _tampered(spark, add={("params", "backbone", "layer1_0", "conv9", "kernel"):
                                  jnp.zeros((1, 1, 4, 4))})
  elif case == "missing":
    spark = _tampered(spark, drop=[("batch_stats", "backbone", "layer4_2", "bn3", "var")])
  elif case == "shape":
    spark = _tampered(spark, add={("params", "backbone", "conv1", "kernel"):
                                  jnp.zeros((7, 7, 3, 64))})
  else:
    encoder = _tampered(encoder, add={("params", "pool", "scale"): jnp.zeros((3,))})
  with pytest.raises(ValueError, match=message):
    load_spark_backbone_into_encoder(encoder, spark)


def test_small_variant_transfers_and_mismatched_sizes_are_refused():
  small = dict(stage_sizes=(1, 1, 1, 1), width=8)
  x, active = jnp.zeros((2, 64, 64, 1)), ACTIVE_64
  spark = SparK(decoder_width=64, **small)
  spark_vars = abstract_variables(spark, x, active, False)
  recon, _ = jax.eval_shape(lambda v: spark.apply(v, x, active, True, mutable=["batch_stats"],
                                                  rngs={"dropout": jax.random.key(0)}), spark_vars)
  assert recon.shape == (2, 64, 64, 1)
  encoder_vars = abstract_variables(ResNet50Encoder(cond_dim=32, **small), x, False)
  loaded = load_spark_backbone_into_encoder(encoder_vars, spark_vars)
  conv1 = ("params", "backbone", "conv1", "kernel")
  assert _flat(loaded)[conv1] is _flat(spark_vars)[conv1]
  full_encoder_vars = abstract_variables(ResNet50Encoder(), x, False)
  with pytest.raises(ValueError, match="params/backbone/layer1_1/conv1/kernel"):
    load_spark_backbone_into_encoder(full_encoder_vars, spark_vars)
