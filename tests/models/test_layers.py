"""Convolution numerics under the package's XLA:CPU flags (sadm_jax/utils/xla_flags.py).

The flags change which library runs the convolutions, GroupNorm reductions and attention dots
(XLA's own kernels instead of YNNPACK fusions), not the maths: forward, input gradient and weight
gradient of the UNet/SegUnet conv shapes, GroupNorm and attention must agree with the JAX defaults
to float32 round-off. XLA flags are read when the backend
starts, so each setting runs in its own subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from sadm_jax.utils import xla_flags
from tests.helpers import REPO


# Conv fwd / dX / dW for SAME 3×3 and 1×1 (UNet), VALID 3×3 (SegUnet's WSConv after reflection
# padding) and the stride-2 7×7 stem (ResNet); writes the arrays to the .npz given as argv[1].
_SCRIPT = r"""
import sys, json, numpy as np, jax, jax.numpy as jnp
from jax import lax
out = {}
cases = [("same3", (2, 24, 24, 64), (3, 3, 64, 96), (1, 1), "SAME"),
         ("same1", (2, 24, 24, 96), (1, 1, 96, 64), (1, 1), "SAME"),
         ("valid3", (2, 26, 26, 32), (3, 3, 32, 32), (1, 1), "VALID"),
         ("stem7s2", (2, 32, 32, 1), (7, 7, 1, 16), (2, 2), ((3, 3), (3, 3)))]
# numpy draws: an eager jax.random draw compiles per shape, for seconds on some CPUs
normal = lambda rng, shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
for i, (name, xs, ws, stride, pad) in enumerate(cases):
  rng = np.random.default_rng(i)
  x = normal(rng, xs)
  w = normal(rng, ws) / np.sqrt(ws[0] * ws[1] * ws[2])
  f = lambda x, w: lax.conv_general_dilated(x, w, stride, pad,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y, vjp = jax.vjp(jax.jit(f), x, w)
  dx, dw = jax.jit(vjp)(normal(rng, y.shape))
  out[name + "_y"], out[name + "_dx"], out[name + "_dw"] = map(np.asarray, (y, dx, dw))
# The networks' own GroupNorm (reductions) and attention block (batched dots), values and the
# gradients of input and parameters; random non-zero weights (the attention's zero-initialised
# output projection would otherwise hide its dots).
import re
from sadm_jax.models.layers import GroupNorm32
from sadm_jax.models.unet import AttentionBlock
rng = np.random.default_rng(7)
x = normal(rng, (4, 16, 16, 32)) * 3.0 + 1.0
for name, module in (("groupnorm", GroupNorm32(8)),
                     ("attention", AttentionBlock(num_head_channels=16, num_groups=8))):
  leaves, tree = jax.tree.flatten(jax.eval_shape(module.init, jax.random.key(0), x))
  params = jax.tree.unflatten(tree, [0.5 * normal(rng, l.shape) for l in leaves])
  y, vjp = jax.vjp(jax.jit(module.apply), params, x)
  dp, dx = jax.jit(vjp)(normal(rng, y.shape))
  out[name + "_y"], out[name + "_dx"] = np.asarray(y), np.asarray(dx)
  for path, g_ in jax.tree_util.tree_leaves_with_path(dp):
    out[name + "_d" + re.sub(r"\W+", "_", jax.tree_util.keystr(path))] = np.asarray(g_)
np.savez(sys.argv[1], **out)
print(json.dumps({"xla_flags": __import__("os").environ.get("XLA_FLAGS", "")}))
"""


def _start(tmp_path, name: str, flags: str):
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  path = tmp_path / f"{name}.npz"
  proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(path)], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  return proc, path


def _result(started) -> dict:
  proc, path = started
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  with np.load(path) as z:
    return dict(z)


def test_conv_numerics_same_under_package_cpu_flags(tmp_path):
  """Values and gradients with the package's flags match JAX's defaults (and the flag parses)."""
  runs = (_start(tmp_path, "plain", ""), _start(tmp_path, "tuned", xla_flags.with_defaults("")))
  plain, tuned = map(_result, runs)  # side by side: each process is mostly single-threaded
  assert plain.keys() == tuned.keys()
  for k in plain:
    scale = float(np.abs(plain[k]).max())
    np.testing.assert_allclose(tuned[k], plain[k], rtol=0, atol=2e-5 * max(scale, 1.0),
                               err_msg=k)


def test_with_defaults_keeps_user_flags():
  name = next(iter(xla_flags.CPU_DEFAULTS))
  assert xla_flags.with_defaults("") == " ".join(xla_flags.cpu_default_flags())
  both = xla_flags.with_defaults("--xla_force_host_platform_device_count=8")
  assert both.split()[0] == "--xla_force_host_platform_device_count=8"
  assert f"--{name}=" in both
  user = f"--{name}=LIBRARY_FUSION_TYPE_DOT"
  assert xla_flags.with_defaults(user) == user  # the user's own setting wins


def test_apply_respects_switch_and_platform():
  env = {}
  added = xla_flags.apply(env)
  assert added == sorted(xla_flags.CPU_DEFAULTS) and env["XLA_FLAGS"]
  assert xla_flags.apply(env) == [] and env["XLA_FLAGS"] == xla_flags.with_defaults("")
  off = {xla_flags.ENV_SWITCH: "0"}
  assert xla_flags.apply(off) == [] and "XLA_FLAGS" not in off
  gpu = {"JAX_PLATFORMS": "cuda"}
  assert xla_flags.apply(gpu) == [] and "XLA_FLAGS" not in gpu
  cpu = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
  assert xla_flags.apply(cpu) and cpu["XLA_FLAGS"].startswith("--xla_dump_to=/tmp/x ")


def test_evaluation_gets_one_cpu_device_per_core():
  """evaluate adds the device count (the user's own count wins); training and predict do not."""
  cores = xla_flags.available_cores()
  env = {"JAX_PLATFORMS": "cpu"}
  assert xla_flags.DEVICE_COUNT_FLAG in xla_flags.apply(env, stage="evaluate")
  assert f"--xla_force_host_platform_device_count={cores}" in env["XLA_FLAGS"].split()
  for stage in ("cddpm", "sadm", "demo", "reproduce", "predict", None):
    env = {"JAX_PLATFORMS": "cpu"}
    xla_flags.apply(env, stage=stage)
    assert "device_count" not in env["XLA_FLAGS"], stage
  env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=3"}
  xla_flags.apply(env, stage="evaluate")
  assert env["XLA_FLAGS"].count("device_count") == 1 and "count=3" in env["XLA_FLAGS"]


def test_inference_compiler_options_keep_ynnpack_convolutions():
  """Inference programs compile with YNNPACK convolutions on CPU (the package default of the
  process, or no setting at all); a user's own fusion types, the switch and GPUs: no options."""
  default = f"--{xla_flags.YNN_FLAG}={xla_flags.CPU_DEFAULTS[xla_flags.YNN_FLAG]}"
  for flags in ("", default, "--xla_force_host_platform_device_count=8 " + default):
    opts = xla_flags.inference_compiler_options("cpu", {"XLA_FLAGS": flags})
    assert opts == {xla_flags.YNN_FLAG: "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE,"
                                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}, flags
  user = {"XLA_FLAGS": f"--{xla_flags.YNN_FLAG}=-individual_convolution"}
  assert xla_flags.inference_compiler_options("cpu", user) is None
  assert xla_flags.inference_compiler_options("cpu", {xla_flags.ENV_SWITCH: "off"}) is None
  assert xla_flags.inference_compiler_options("gpu", {}) is None


def test_inference_compiler_options_take_effect():
  """The options reach XLA:CPU: with them the convolution is a YNNPACK fusion and the reduction
  XLA's own; under the process's (package) flags neither is."""
  import jax
  import jax.numpy as jnp

  def f(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y, jnp.sum(y, axis=(1, 2))

  x, w = jnp.ones((4, 64, 64, 32)), jnp.ones((3, 3, 32, 32))  # (YNNPACK takes no smaller conv)

  def ynn_ops(opts):
    text = jax.jit(f, compiler_options=opts).lower(x, w).compile().as_text()
    entry = text[text.index("ENTRY"):].splitlines()
    return [("ynn" if "__ynn_fusion" in line else "xla") for line in entry
            if "convolution(" in line or "fusion(" in line]

  opts = xla_flags.inference_compiler_options("cpu")
  assert opts is not None  # tests/conftest.py applies the package defaults
  assert ynn_ops(opts).count("ynn") == 1
  assert "ynn" not in ynn_ops(None)
