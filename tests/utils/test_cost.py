"""sadm_jax.utils.cost: XLA's compiled cost / memory and the jaxpr conv + dot count, on tiny known answers."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest

from sadm_jax.utils import cost

M, K, N = 8, 16, 4


def _matmul(x, w):
  return x @ w


def _operands():
  return jnp.ones((M, K), jnp.float32), jnp.ones((K, N), jnp.float32)


# --------------------------------------------------------------------------- jaxpr count


def test_jitted_matmul_counts_2mnk():
  f = jax.jit(_matmul)
  assert cost.matmul_flops(jax.make_jaxpr(f)(*_operands())) == 2 * M * N * K
  abstract = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in _operands()]
  assert cost.traced_matmul_flops(f, *abstract) == 2 * M * N * K


def test_a_jit_with_compiler_options_is_traced_at_the_top_level():
  # (as the CPU train steps are jitted: a nested jit may not carry compiler_options)
  f = jax.jit(_matmul, compiler_options={"xla_backend_optimization_level": 2})
  abstract = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in _operands()]
  with pytest.raises(ValueError, match="compiler_options"):
    jax.make_jaxpr(f)(*abstract)
  assert cost.traced_matmul_flops(f, *abstract) == 2 * M * N * K


def test_elementwise_work_is_not_counted():
  f = jax.jit(lambda a: jnp.tanh(a @ a) + 1.0)
  assert cost.traced_matmul_flops(f, jax.ShapeDtypeStruct((8, 8), jnp.float32)) == 2 * 8 ** 3
  assert cost.traced_matmul_flops(jnp.exp, jnp.ones((8, 8))) == 0.0


def test_batched_dot_and_einsum():
  f = lambda q, k: jnp.einsum("bthc,bshc->bhts", q, k)  # the UNet attention logits
  q = jnp.ones((2, 10, 4, 8))
  assert cost.matmul_flops(jax.make_jaxpr(f)(q, q)) == 2 * (2 * 4 * 10 * 10) * 8


def test_conv_flops_and_its_gradients():
  x = jnp.ones((2, 9, 9, 3))  # NHWC
  w = jnp.ones((3, 3, 3, 4))  # HWIO
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  fwd = 2 * (2 * 9 * 9 * 4) * (3 * 3 * 3)
  assert cost.matmul_flops(jax.make_jaxpr(conv)(x, w)) == fwd
  # gradient w.r.t. both: forward + input gradient + weight gradient, each = forward
  grad = jax.grad(lambda x, w: conv(x, w).sum(), argnums=(0, 1))
  assert cost.matmul_flops(jax.make_jaxpr(grad)(x, w)) == 3 * fwd


def test_loop_bodies_count_trip_count_times():
  one = 2 * 4 ** 3
  body = jax.jit(lambda y: y @ y)
  xs = jnp.ones((3, 4, 4))
  # lax.map (the evaluation's ensemble over 3 timesteps), with a nested jit
  assert cost.traced_matmul_flops(lambda xs: jax.lax.map(body, xs), xs) == 3 * one
  # lax.scan of length 5
  scan = lambda c: jax.lax.scan(lambda c, _: (c @ c, None), c, None, length=5)[0]
  assert cost.traced_matmul_flops(scan, jnp.ones((4, 4))) == 5 * one
  # fori_loop with static bounds (a scan of 7 steps), nested in a scan of 2
  fori = lambda c: jax.lax.fori_loop(0, 7, lambda i, c: c @ c, c)
  assert cost.traced_matmul_flops(fori, jnp.ones((4, 4))) == 7 * one
  nested = lambda c: jax.lax.scan(lambda c, _: (fori(c), None), c, None, length=2)[0]
  assert cost.traced_matmul_flops(nested, jnp.ones((4, 4))) == 2 * 7 * one


def test_while_body_counts_once_and_cond_its_costlier_branch():
  one = 2 * 4 ** 3
  loop = lambda c: jax.lax.while_loop(lambda c: c[0, 0] < 10.0, lambda c: c @ c, c)
  assert cost.traced_matmul_flops(loop, jnp.ones((4, 4))) == one  # trip count unknown: once
  f = lambda p, a: jax.lax.cond(p, lambda a: a @ a @ a, lambda a: a @ a, a)
  assert cost.traced_matmul_flops(f, True, jnp.ones((4, 4))) == 2 * one


# --------------------------------------------------------------------------- XLA's analysis


def test_compiled_cost_of_a_matmul_on_cpu():
  x, w = _operands()
  c = cost.compiled_cost(jax.jit(_matmul).lower(x, w).compile())
  assert c["flops"] == pytest.approx(2 * M * N * K, rel=0.05)
  assert c["bytes_accessed"] is not None and math.isfinite(c["bytes_accessed"])
  assert c["bytes_accessed"] > 0
  mem = c["memory"]
  assert mem["argument_bytes"] == 4 * (M * K + K * N)
  assert mem["output_bytes"] == 4 * M * N
  for key in ("alias_bytes", "temp_bytes", "generated_code_bytes", "total_bytes"):
    assert isinstance(mem[key], int) and mem[key] >= 0
  assert mem["total_bytes"] == (mem["argument_bytes"] + mem["output_bytes"] - mem["alias_bytes"]
                                + mem["temp_bytes"] + mem["generated_code_bytes"])


def test_a_lowered_program_has_flops_but_no_memory():
  c = cost.compiled_cost(jax.jit(_matmul).lower(*_operands()))
  assert c["memory"] == {}
  assert c["flops"] is None or c["flops"] == pytest.approx(2 * M * N * K, rel=0.05)


def test_forward_flops_compiles_abstract_arguments():
  abstract = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in _operands()]
  assert cost.forward_flops(_matmul, *abstract) == pytest.approx(2 * M * N * K, rel=0.05)


class _Silent:
  """A program whose backend reports nothing."""

  def cost_analysis(self):
    raise NotImplementedError

  def memory_analysis(self):
    return None


class _OldJax:
  """cost_analysis as a list of per-partition dicts (older jax)."""

  def cost_analysis(self):
    return [{"flops": 12.0, "bytes accessed": 34.0}]

  def memory_analysis(self):
    raise AttributeError


def test_missing_analyses_are_none_and_empty():
  assert cost.compiled_cost(_Silent()) == {"flops": None, "bytes_accessed": None, "memory": {}}
  assert cost.compiled_cost(_OldJax()) == {"flops": 12.0, "bytes_accessed": 34.0, "memory": {}}
