"""The benchmark suite's own logic: argument handling, MFU, the table, the FLOP / memory fields."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import machine, profile_ops, suite, suite_report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_jaxpr_flops_is_the_package_count_or_none():
  # the counter itself is tested in tests/utils/test_cost.py
  f = jax.jit(lambda a: jnp.tanh(a @ a))
  assert suite.jaxpr_flops(f, jax.ShapeDtypeStruct((8, 8), jnp.float32)) == 2 * 8 ** 3

  def untraceable(a):
    raise ValueError("no")

  assert suite.jaxpr_flops(untraceable, jnp.ones(2)) is None


def test_program_memory_keeps_the_json_fields():
  compiled = jax.jit(lambda a, b: a @ b).lower(jnp.ones((8, 16)), jnp.ones((16, 4))).compile()
  mem = machine.memory_analysis(compiled)
  assert list(mem) == ["argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                       "temp_size_in_bytes", "generated_code_size_in_bytes", "total_gb"]
  assert mem["argument_size_in_bytes"] == 4 * (8 * 16 + 16 * 4)
  assert mem["total_gb"] == pytest.approx(
      (mem["argument_size_in_bytes"] + mem["output_size_in_bytes"] - mem["alias_size_in_bytes"]
       + mem["temp_size_in_bytes"]) / 1e9)
  assert machine.memory_analysis(jax.jit(lambda a: a).lower(jnp.ones(2))) is None


def test_importing_the_suite_leaves_jax_unimported():
  # --fake_devices sets XLA_FLAGS after the import and before jax's
  code = "import sys, benchmarks.suite; assert 'jax' not in sys.modules, 'jax imported'"
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


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
  lines = suite_report.table([train, ev, data]).splitlines()
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


def test_usage_counts_cpu_seconds_and_page_faults():
  """machine.process_usage: what the timed steps' per-step CPU and fault figures are differences of."""
  import mmap
  import numpy as np
  before = machine.process_usage()
  # A fresh anonymous mapping, written page by page, faults whatever the allocator holds
  # (a numpy block can come from memory the process already has: no faults, as in a long
  # test run); the writes and the sums take CPU time.
  with mmap.mmap(-1, 32 << 20) as block:
    pages = np.frombuffer(block, np.uint8)
    pages[::mmap.PAGESIZE] = 1
    for _ in range(3):
      pages.sum()
    del pages
  after = machine.process_usage()
  assert set(before) == {"user_s", "sys_s", "minor_faults"}
  assert after["minor_faults"] > before["minor_faults"]
  assert after["user_s"] + after["sys_s"] > before["user_s"] + before["sys_s"]


def test_norm_act_switch_sets_the_backend_and_reports_it():
  import jax
  from sadm_jax.models import norm_act
  before = norm_act.RECOMPUTE_BACKENDS
  try:
    assert suite.set_norm_act("recompute") == "recompute"
    assert norm_act.RECOMPUTE_BACKENDS == (jax.default_backend(),)
    assert suite.set_norm_act("default") == "recompute"  # default leaves the setting alone
    assert suite.set_norm_act("plain") == "plain" and norm_act.RECOMPUTE_BACKENDS == ()
  finally:
    norm_act.RECOMPUTE_BACKENDS = before
  assert suite.parse_args([]).norm_act == "default"
  with pytest.raises(SystemExit):
    suite.parse_args(["--norm_act=fused"])
