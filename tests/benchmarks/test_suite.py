"""The benchmark suite's own logic: FLOP counting from jaxprs, argument handling, MFU, the table."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks import profile_ops, suite


def test_dot_flops_count_multiply_adds_twice():
  jaxpr = jax.make_jaxpr(lambda a, b: a @ b)(jnp.ones((3, 5)), jnp.ones((5, 7)))
  assert suite.matmul_flops(jaxpr) == 2 * 3 * 5 * 7


def test_batched_dot_and_einsum():
  f = lambda q, k: jnp.einsum("bthc,bshc->bhts", q, k)  # the UNet attention logits
  q = jnp.ones((2, 10, 4, 8))
  assert suite.matmul_flops(jax.make_jaxpr(f)(q, q)) == 2 * (2 * 4 * 10 * 10) * 8


def test_conv_flops_and_its_gradients():
  x = jnp.ones((2, 9, 9, 3))  # NHWC
  w = jnp.ones((3, 3, 3, 4))  # HWIO
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  fwd = 2 * (2 * 9 * 9 * 4) * (3 * 3 * 3)
  assert suite.matmul_flops(jax.make_jaxpr(conv)(x, w)) == fwd
  # value_and_grad w.r.t. both: forward + input gradient + weight gradient, each = forward
  grad = jax.grad(lambda x, w: conv(x, w).sum(), argnums=(0, 1))
  assert suite.matmul_flops(jax.make_jaxpr(grad)(x, w)) == 3 * fwd


def test_scan_body_counts_length_times_and_nested_jit():
  body = jax.jit(lambda y: y @ y)
  f = lambda xs: jax.lax.map(body, xs)  # as the evaluation's ensemble over 3 timesteps
  assert suite.matmul_flops(jax.make_jaxpr(f)(jnp.ones((3, 4, 4)))) == 3 * 2 * 4 ** 3


def test_cond_counts_the_costlier_branch():
  f = lambda p, a: jax.lax.cond(p, lambda a: a @ a @ a, lambda a: a @ a, a)
  assert suite.matmul_flops(jax.make_jaxpr(f)(True, jnp.ones((4, 4)))) == 2 * 2 * 4 ** 3


def test_traced_count_of_a_jitted_function():
  f = jax.jit(lambda a: jnp.tanh(a @ a))
  assert suite.traced_matmul_flops(f, jax.ShapeDtypeStruct((8, 8), jnp.float32)) == 2 * 8 ** 3


def test_lists_device_counts_and_batches():
  assert suite.parse_list(" 1, 2,,8", int) == [1, 2, 8]
  assert suite.device_counts([], 8) == [8]
  assert suite.device_counts([1, 4], 8) == [1, 4]
  with pytest.raises(SystemExit):
    suite.device_counts([16], 8)
  assert suite.row_batch(32, 4, "strong") == 32
  assert suite.row_batch(32, 4, "weak") == 128


def test_parse_args_checks_choices():
  args = suite.parse_args(["--what=eval,data", "--dtype=bfloat16,float32", "--devices=1,2",
                           "--steps=4"])
  assert args.what == ["eval", "data"] and args.dtype == ["bfloat16", "float32"]
  assert args.devices == [1, 2] and args.pipelined_steps == 4
  with pytest.raises(SystemExit):
    suite.parse_args(["--what=train"])
  with pytest.raises(SystemExit):
    suite.parse_args(["--dtype=float16"])


def test_mfu():
  assert suite.mfu(4e12, 0.01, 8e14) == pytest.approx(0.5)
  assert suite.mfu(None, 0.01, 8e14) is None
  assert suite.mfu(4e12, 0.01, None) is None


def test_table_has_a_line_per_row():
  train = {"what": "cddpm_train", "dtype": "bfloat16", "devices": 1, "global_batch": 32,
           "compile_s": 76.3, "step_s_median": 0.0666, "pipelined_step_s": None,
           "slices_per_s": 480.5, "flops_matmul_jaxpr": 14.48e12, "flops_per_step": 1.2e11,
           "mfu": 0.271, "program_memory": None, "device_peak_gb_so_far": 20.0}
  ev = {"what": "eval_sadm", "dtype": "float32", "slices_per_batch": 50, "compile_s": None,
        "median_s": 0.151, "volumes_per_s": 6.6, "flops_matmul_jaxpr": 28.3e12, "mfu": 0.45,
        "program_memory": [{"total_gb": 3.2}, {"total_gb": 1.1}], "peak_rss_gb_so_far": 2.0}
  data = {"what": "data_ixi", "batch": 32, "seconds": 1.0, "batches": 10, "slices_per_s": 320.0,
          "workers": 2}
  lines = suite.table([train, ev, data]).splitlines()
  assert len(lines) == 4
  assert "66.60" in lines[1] and "27.1" in lines[1] and "14.480" in lines[1]
  assert "151.00" in lines[2] and "3.20" in lines[2]
  assert "320.0" in lines[3] and "workers 2" in lines[3]


def test_profile_categories():
  assert profile_ops.categorise("sm90_xmma_wgrad_indexed_implicit_gemm_bf16") == "conv_weight_grad"
  assert profile_ops.categorise("sm90_xmma_dgrad_implicit_gemm_bf16") == "conv_input_grad"
  assert profile_ops.categorise("sm90_xmma_fprop_implicit_gemm_bf16") == "conv_forward"
  assert profile_ops.categorise("input_add_reduce_fusion_29") == "reduction_fusion"
  assert profile_ops.categorise("loop_multiply_fusion_63") == "fusion"
  assert profile_ops.categorise("nccl_all_reduce") == "collective"
