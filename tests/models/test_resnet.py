"""Tests for the ResNet-50 backbone/encoder: counts, shapes, BN modes, drop path, sparse mode."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sadm_jax.models.resnet import (BatchNorm, Bottleneck, DropPath, ResNet50Backbone,
                                    ResNet50Encoder, mask_at)
from tests.helpers import abstract_variables, compiled_init, uniform_data
from tests.helpers import he_random_variables as random_variables
from tests.helpers import param_count as count

FEATURE_SHAPES_96 = [(2, 24, 24, 256), (2, 12, 12, 512), (2, 6, 6, 1024), (2, 3, 3, 2048)]


def assert_trees_equal(a, b) -> None:
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                         a, b)


@pytest.fixture(scope="module")
def encoder_variables():
  return random_variables(ResNet50Encoder(), jnp.zeros((2, 64, 64, 1)), False)


@pytest.fixture(scope="module")
def abstract_encoder_variables():
  return abstract_variables(ResNet50Encoder(cond_dim=512), jnp.zeros((2, 96, 96, 1)), False)


def test_parameter_counts_at_paper_config(abstract_encoder_variables):
  variables = abstract_encoder_variables
  assert set(variables) == {"params", "batch_stats"}
  assert count(variables["params"]) == 24_550_848
  assert count(variables["params"]["backbone"]) == 23_501_760
  assert set(variables["params"]) == {"backbone", "head"}
  assert variables["params"]["head"]["kernel"].shape == (2048, 512)
  # 53 convs, 53 BNs: PyTorch's 318 backbone tensors minus 53 `num_batches_tracked`.
  assert len(jax.tree_util.tree_leaves(variables["params"]["backbone"])) == 53 * 3
  assert len(jax.tree_util.tree_leaves(variables["batch_stats"])) == 53 * 2


def test_shapes_at_paper_size(abstract_encoder_variables):
  x = jnp.zeros((2, 96, 96, 1))
  backbone = ResNet50Backbone()
  variables = {c: v["backbone"] for c, v in abstract_encoder_variables.items()}
  dense = jax.eval_shape(lambda v: backbone.apply(v, x, False), variables)
  assert [f.shape for f in dense] == FEATURE_SHAPES_96
  active = jnp.ones((2, 3, 3), bool)
  sparse, _ = jax.eval_shape(
      lambda v: backbone.apply(v, x, True, active, mutable=["batch_stats"],
                               rngs={"dropout": jax.random.key(0)}), variables)
  assert [f.shape for f in sparse] == FEATURE_SHAPES_96
  encoder = ResNet50Encoder(cond_dim=512)
  out = jax.eval_shape(lambda v: encoder.apply(v, x, False), abstract_encoder_variables)
  assert out.shape == (2, 512)


def test_bad_input_shapes_raise():
  backbone = ResNet50Backbone()
  with pytest.raises(ValueError, match="multiples of 32"):
    abstract_variables(backbone, jnp.zeros((2, 90, 90, 1)), False)
  with pytest.raises(ValueError, match="active mask"):
    abstract_variables(backbone, jnp.zeros((2, 96, 96, 1)), False, jnp.ones((2, 2, 2), bool))


def test_init_zero_last_bn_and_he_fan_out():
  block = Bottleneck(planes=16, downsample=True)
  variables = compiled_init(block, jax.random.key(0), jnp.zeros((1, 4, 4, 64)), train=False)
  params, stats = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(params["bn3"]["scale"], 0.0)
  for bn in ("bn1", "bn2", "downsample_bn"):
    np.testing.assert_array_equal(params[bn]["scale"], 1.0)
    np.testing.assert_array_equal(params[bn]["bias"], 0.0)
    np.testing.assert_array_equal(stats[bn]["mean"], 0.0)
    np.testing.assert_array_equal(stats[bn]["var"], 1.0)
  # conv1: 1x1, 64 -> 16: fan_out = 16 (std 0.354), fan_in would be 64 (std 0.177).
  assert np.std(params["conv1"]["kernel"]) == pytest.approx(math.sqrt(2.0 / 16), rel=0.12)
  assert np.std(params["conv2"]["kernel"]) == pytest.approx(math.sqrt(2.0 / (9 * 16)), rel=0.12)


def test_real_forward_eval_is_deterministic_and_does_not_touch_stats(encoder_variables):
  encoder = ResNet50Encoder()
  x = uniform_data(1, (2, 64, 64, 1))
  out1 = encoder.apply(encoder_variables, x, False)
  out2, updates = encoder.apply(encoder_variables, x, False, mutable=["batch_stats"])
  assert out1.shape == (2, 512) and bool(jnp.all(jnp.isfinite(out1)))
  np.testing.assert_array_equal(out1, out2)
  assert_trees_equal(updates["batch_stats"], encoder_variables["batch_stats"])


def test_train_mode_updates_batch_stats(encoder_variables):
  encoder = ResNet50Encoder()
  x = uniform_data(1, (2, 64, 64, 1))
  out, updates = encoder.apply(encoder_variables, x, True, mutable=["batch_stats"],
                               rngs={"dropout": jax.random.key(2)})
  assert out.shape == (2, 512)
  old = jax.tree_util.tree_leaves(encoder_variables["batch_stats"])
  new = jax.tree_util.tree_leaves(updates["batch_stats"])
  assert len(old) == len(new) == 106
  assert all(not np.allclose(a, b) for a, b in zip(old, new))


def test_drop_path_rate_zero_disables_stochastic_depth(encoder_variables):
  x = uniform_data(1, (2, 64, 64, 1))

  def train_forward(rate: float, key: int | None):
    rngs = {} if key is None else {"dropout": jax.random.key(key)}
    out, _ = ResNet50Encoder(drop_path_rate=rate).apply(encoder_variables, x, True,
                                                        mutable=["batch_stats"], rngs=rngs)
    return np.asarray(out)

  # With rate 0 no 'dropout' rng is even requested, so no key can change the output.
  np.testing.assert_array_equal(train_forward(0.0, 3), train_forward(0.0, None))
  assert not np.allclose(train_forward(0.9, 3), train_forward(0.9, 4))  # the rng does matter


def test_drop_path_drops_whole_samples_and_rescales():
  x = jnp.ones((4000, 2, 2, 1))
  y = np.asarray(DropPath(0.25).apply({}, x, deterministic=False,
                                      rngs={"dropout": jax.random.key(0)}))
  per_sample = y.reshape(4000, -1)
  assert np.all(per_sample == per_sample[:, :1])
  np.testing.assert_allclose(np.unique(y), [0.0, 1.0 / 0.75], rtol=1e-6)
  assert np.mean(per_sample[:, 0] == 0) == pytest.approx(0.25, abs=0.03)
  np.testing.assert_array_equal(DropPath(0.25).apply({}, x, deterministic=True), x)


def test_masked_batchnorm_hand_checked():
  bn = BatchNorm()
  x = jnp.array([1.0, 2.0, 6.0, 100.0]).reshape(1, 2, 2, 1)
  mask = jnp.array([1.0, 1.0, 1.0, 0.0]).reshape(1, 2, 2, 1)
  variables = bn.init(jax.random.key(0), x, False)
  y, updates = bn.apply(variables, x, True, mask, mutable=["batch_stats"])
  # active values 1, 2, 6: mean 3, biased var 14/3 (normalisation), unbiased var 7 (running stats)
  active = np.array([1.0, 1, 1, 0])
  expected = np.array([1.0 - 3, 2 - 3, 6 - 3, 0]) / math.sqrt(14 / 3 + 1e-5) * active
  np.testing.assert_allclose(np.asarray(y).ravel(), expected, rtol=1e-6)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], [0.9 * 0 + 0.1 * 3], rtol=1e-6)
  np.testing.assert_allclose(updates["batch_stats"]["var"], [0.9 * 1 + 0.1 * 7], rtol=1e-6)
  # eval mode: running statistics, inactive positions still zero
  stats = {"params": variables["params"], "batch_stats": updates["batch_stats"]}
  y_eval = bn.apply(stats, x, False, mask)
  expected_eval = (np.array([1.0, 2, 6, 100]) - 0.3) / math.sqrt(1.6 + 1e-5) * active
  np.testing.assert_allclose(np.asarray(y_eval).ravel(), expected_eval, rtol=1e-6)
  # dense mode uses every position (PyTorch semantics)
  _, dense = bn.apply(variables, x, True, mutable=["batch_stats"])
  np.testing.assert_allclose(dense["batch_stats"]["mean"], [0.1 * np.mean([1, 2, 6, 100])],
                             rtol=1e-6)
  np.testing.assert_allclose(dense["batch_stats"]["var"],
                             [0.9 + 0.1 * np.var([1, 2, 6, 100], ddof=1)], rtol=1e-6)


def test_sparse_backbone_ignores_masked_pixels(encoder_variables):
  backbone = ResNet50Backbone()
  variables = {c: v["backbone"] for c, v in encoder_variables.items()}
  active = jnp.array([[[True, False], [False, True]], [[False, True], [False, False]]])  # [2, 2, 2]
  x1 = uniform_data(1, (2, 64, 64, 1))
  m = mask_at(active, (64, 64))
  # only the pixels under masked patches differ
  x2 = x1 * m + (1 - m) * uniform_data(2, x1.shape)
  assert not np.allclose(x1, x2)

  def run(x):
    return backbone.apply(variables, x, True, active, mutable=["batch_stats"],
                          rngs={"dropout": jax.random.key(3)})

  (f1, s1), (f2, s2) = run(x1), run(x2)
  for a, b in zip(f1, f2):
    m_f = np.asarray(mask_at(active, a.shape[1:3]))
    np.testing.assert_array_equal(np.asarray(a) * (1 - m_f), 0.0)  # inactive positions are zero
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a) * m_f).sum() > 0
  assert_trees_equal(s1, s2)
  _, dense_stats = backbone.apply(variables, x1, True, mutable=["batch_stats"],
                                  rngs={"dropout": jax.random.key(3)})
  assert not np.allclose(dense_stats["batch_stats"]["bn1"]["mean"],
                         s1["batch_stats"]["bn1"]["mean"])


def test_small_variant_for_demos():
  encoder = ResNet50Encoder(cond_dim=32, stage_sizes=(1, 1, 1, 1), width=8)
  x = jnp.zeros((2, 64, 64, 1))
  variables = abstract_variables(encoder, x, False)
  assert variables["params"]["head"]["kernel"].shape == (8 * 8 * 4, 32)
  assert sorted(k for k in variables["params"]["backbone"] if k.startswith("layer")) == [
      "layer1_0", "layer2_0", "layer3_0", "layer4_0"]
  assert jax.eval_shape(lambda v: encoder.apply(v, x, False), variables).shape == (2, 32)
