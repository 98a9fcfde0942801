"""Tests for the diffusion UNet: parameter counts, shapes, zero-init, conditioning, attention."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sadm_jax.models.unet import AttentionBlock, DiffusionUNet, ResBlock, timestep_embedding
from tests.helpers import compiled_init, normal_data

B, H = 2, 96
TINY = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, num_head_channels=32,
            cond_dim=16)
ATTN_256 = 256 * 2 + 256 * 768 + 768 + 256 * 256 + 256  # GN + qkv + proj_out = 263,680


def _count(tree) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _abstract_params(model: DiffusionUNet, size: int = H, cond_dim: int | None = 512):
  x = jax.ShapeDtypeStruct((B, size, size, 1), jnp.float32)
  t = jax.ShapeDtypeStruct((B,), jnp.int32)
  c = None if cond_dim is None else jax.ShapeDtypeStruct((B, cond_dim), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x, t, c)["params"], (x, t, c)


def _group_counts(params) -> dict[str, int]:
  groups: dict[str, int] = {}
  for name, sub in params.items():
    key = name.split("_blocks_")[0] if "_blocks_" in name else name.split("_")[0]
    groups[key] = groups.get(key, 0) + _count(sub)
  return groups


def test_paper_config_parameter_count():
  params, _ = _abstract_params(DiffusionUNet())
  assert _count(params) == 44_068_481
  assert _group_counts(params) == {
      "time": 328_704, "cond": 525_312, "input": 13_913_344, "middle": 3_675_648,
      "output": 25_624_064, "out": 1_409}
  assert len([k for k in params if k.startswith("input_blocks_")]) == 12
  assert len([k for k in params if k.startswith("output_blocks_")]) == 12
  assert not any("attn" in v for k, v in params.items() if "_blocks_" in k)  # Q2: middle only
  assert "middle_attn" in params


@pytest.mark.parametrize("resolutions,n_extra", [((4,), 3 + 4), ((2, 4), 6 + 8)])
def test_attention_resolutions_add_attention_blocks(resolutions, n_extra):
  params, _ = _abstract_params(DiffusionUNet(attention_resolutions=resolutions))
  assert _count(params) == 44_068_481 + n_extra * ATTN_256
  assert params["input_blocks_9"]["attn"]["qkv"]["kernel"].shape == (256, 768)
  assert "attn" not in params["input_blocks_8"]  # resampling blocks never attend


def test_unconditional_variant_drops_cond_mlp():
  params, _ = _abstract_params(DiffusionUNet(cond_dim=None), cond_dim=None)
  emb_in = params["input_blocks_1"]["res"]["emb_proj"]["kernel"].shape[0]
  assert emb_in == 512
  assert "cond_embed" not in params


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_output_shape_at_96(dtype):
  model = DiffusionUNet(dtype=dtype)
  params, (x, t, c) = _abstract_params(model)
  out = jax.eval_shape(model.apply, {"params": params}, x, t, c)
  assert out.shape == (B, H, H, 1) and out.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_timestep_embedding_known_values():
  emb = np.asarray(timestep_embedding(jnp.array([0, 1, 999]), 128))
  assert emb.shape == (3, 128)
  np.testing.assert_array_equal(emb[0], np.r_[np.ones(64), np.zeros(64)])
  freqs = np.exp(-math.log(1e4) * np.arange(64) / 64)
  np.testing.assert_allclose(emb[1], np.r_[np.cos(freqs), np.sin(freqs)], atol=1e-6)
  np.testing.assert_allclose(emb[2, 0], math.cos(999.0), atol=1e-4)
  np.testing.assert_allclose(emb[2, 64], math.sin(999.0), atol=1e-4)


def test_resblock_up_and_down_sampling_shapes():
  x, emb = jnp.ones((1, 8, 8, 32)), jnp.ones((1, 24))
  for resample, size in [("down", 4), ("up", 16), (None, 8)]:
    block = ResBlock(64, resample)
    out = jax.eval_shape(block.init_with_output, jax.random.key(0), x, emb)[0]
    assert out.shape == (1, size, size, 64)


def _random_params(abstract, seed: int = 0):
  """Host-side random parameters shaped like `abstract` (much cheaper to build than an XLA init):
  kernels N(0, 1/fan_in), GroupNorm scales 1 + N(0, 0.1²), biases N(0, 0.1²); all live."""
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    name = path[-1].key
    if name == "kernel":
      return (rng.normal(size=a.shape) / np.sqrt(np.prod(a.shape[:-1]))).astype(np.float32)
    return ((name == "scale") + 0.1 * rng.normal(size=a.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, abstract)


def test_attention_block_matches_explicit_multihead_softmax():
  block = AttentionBlock(num_head_channels=8, num_groups=8)
  x = normal_data(1, (2, 3, 3, 16))
  params = _random_params(jax.eval_shape(block.init, jax.random.key(0), x)["params"])
  out = np.asarray(jax.jit(block.apply)({"params": params}, x))

  xs = np.asarray(x, np.float64).reshape(2, 9, 8, 2)  # GroupNorm: 8 groups of 2 channels
  mu, var = xs.mean(axis=(1, 3), keepdims=True), xs.var(axis=(1, 3), keepdims=True)
  hn = ((xs - mu) / np.sqrt(var + 1e-5)).reshape(2, 9, 16)
  hn = hn * params["norm"]["scale"] + params["norm"]["bias"]
  q, k, v = np.split(hn @ params["qkv"]["kernel"] + params["qkv"]["bias"], 3, axis=-1)
  heads = []
  for h in range(2):  # "new order": q, k, v split first, then each into 2 heads of 8 channels
    s = slice(8 * h, 8 * h + 8)
    logits = q[..., s] @ np.swapaxes(k[..., s], 1, 2) / math.sqrt(8)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    heads.append((w / w.sum(-1, keepdims=True)) @ v[..., s])
  proj = np.concatenate(heads, -1) @ params["proj_out"]["kernel"] + params["proj_out"]["bias"]
  np.testing.assert_allclose(out.reshape(2, 9, 16), xs.reshape(2, 9, 16) + proj, atol=1e-4)


def _tiny_inputs(size: int = 16):
  x = normal_data(0, (B, size, size, 1))
  t = jnp.array([10, 900], jnp.int32)
  c = normal_data(1, (B, TINY["cond_dim"]))
  return x, t, c


def test_real_init_is_exactly_zero_output():
  # Smallest model: a real (XLA, threefry) init is the slowest thing to compile on CPU.
  model = DiffusionUNet(**{**TINY, "channel_mult": (1,), "num_res_blocks": 0})
  x, t, c = _tiny_inputs(8)
  params = compiled_init(model, jax.random.key(2), x, t, c)["params"]
  for zero in (params["out"]["conv"], params["middle_attn"]["proj_out"],
               params["middle_res_0"]["out_conv"], params["output_blocks_0"]["res"]["out_conv"]):
    assert all(np.all(np.asarray(a) == 0) for a in jax.tree.leaves(zero))
  assert np.asarray(params["middle_res_1"]["in_conv"]["kernel"]).std() > 0
  out = jax.jit(model.apply)({"params": params}, x, t, c)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert np.all(np.asarray(out) == 0.0)


@pytest.fixture(scope="module")
def tiny():
  model = DiffusionUNet(**TINY)
  x, t, c = _tiny_inputs()
  params = _random_params(jax.eval_shape(model.init, jax.random.key(0), x, t, c)["params"])
  return model, {"params": params}, (x, t, c)


def test_output_depends_on_t_and_cond(tiny):
  model, variables, (x, t, c) = tiny
  apply = jax.jit(model.apply)
  base = np.asarray(apply(variables, x, t, c))
  assert base.shape == x.shape and np.all(np.isfinite(base)) and np.abs(base).max() > 0
  for changed in (apply(variables, x, t + 37, c), apply(variables, x, t, c + 1.0)):
    assert np.abs(np.asarray(changed) - base).max() > 1e-4
  # Samples are independent: changing sample 1's t leaves sample 0 untouched.
  only_second = np.asarray(apply(variables, x, t.at[1].add(37), c))
  np.testing.assert_array_equal(only_second[0], base[0])
  assert np.abs(only_second[1] - base[1]).max() > 1e-4


def test_bfloat16_forward_runs_and_returns_float32(tiny):
  _, variables, (x, t, c) = tiny
  out = jax.jit(DiffusionUNet(**TINY, dtype=jnp.bfloat16).apply)(variables, x, t, c)
  ref = jax.jit(DiffusionUNet(**TINY).apply)(variables, x, t, c)
  assert out.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out)))
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=0.1 * np.abs(ref).max())


def test_wrong_cond_shape_raises(tiny):
  model, variables, (x, t, _) = tiny
  with pytest.raises(ValueError, match="cond"):
    jax.eval_shape(model.apply, variables, x, t, jnp.zeros((B, 3)))


def test_every_silu_goes_through_tanh():
  # layers.silu everywhere (blocks, embeddings): no logistic left in the traced network
  params, (x, t, c) = _abstract_params(DiffusionUNet(**TINY), size=16, cond_dim=TINY["cond_dim"])
  jaxpr = str(jax.make_jaxpr(DiffusionUNet(**TINY).apply)({"params": params}, x, t, c))
  assert "logistic" not in jaxpr and "tanh" in jaxpr
