"""Shared model pieces: float32 GroupNorm, convs with fast CPU gradients, PyTorch inits, WS."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sadm_jax.models import staged

Dtype = Any


def torch_kernel_init(transposed: bool = False) -> nn.initializers.Initializer:
  """PyTorch's default weight init (kaiming-uniform, a=√5): U(±1/√fan_in).

  Flax kernels are laid out [..., in, out]. PyTorch computes a transposed convolution's fan_in
  from its *output* channels, so `transposed=True` swaps the axes used for the fan.
  """
  in_axis, out_axis = (-1, -2) if transposed else (-2, -1)
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform",
                                          in_axis=in_axis, out_axis=out_axis)


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default bias init: U(±1/√fan_in)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


zeros_init = nn.initializers.zeros


class GroupNorm32(nn.Module):
  """GroupNorm (default 32 groups, eps 1e-5) computed in float32; returns the input's dtype.

  As `nn.GroupNorm(num_groups, epsilon=1e-5, use_fast_variance=False)` (two-pass variance), with
  its parameters `scale`/`bias` [C] directly under the module's name; the sums over (H, W, C/G)
  and their gradients are `staged` sums (equal up to float32 round-off; on XLA:CPU the
  scale/bias gradients are the ones that gain).
  """
  num_groups: int = 32
  epsilon: float = 1e-5

  def _scale_bias(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`scale`, `bias` [C] (float32) for x [B, ..., C]; C must be divisible by the groups."""
    c, g = x.shape[-1], self.num_groups
    if c % g:
      raise ValueError(f"GroupNorm: {c} channels are not divisible by {g} groups")
    return (self.param("scale", nn.initializers.ones, (c,), jnp.float32),
            self.param("bias", nn.initializers.zeros, (c,), jnp.float32))

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, ..., C] -> [B, ..., C]
    scale, bias = self._scale_bias(x)
    return group_norm(x, scale, bias, self.num_groups, self.epsilon)


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int,
               epsilon: float = 1e-5, film: tuple[jax.Array, jax.Array] | None = None
               ) -> jax.Array:
  """GroupNorm32's computation: x [B, ..., C], scale/bias [C] -> [B, ..., C] in x.dtype; with
  `film` = (f_scale, f_shift) the FiLM that follows folded in (`group_normalise`)."""
  xg, mean, rstd = group_statistics(x, groups, epsilon)
  return group_normalise(xg, mean, rstd, scale, bias, x.shape, x.dtype, film)


def grouped(x: jax.Array, groups: int) -> tuple[jax.Array, tuple[int, ...]]:
  """x [B, ..., C] in float32 as [B, ..., G, C/G], and the axes of its per-group statistics."""
  c = x.shape[-1]
  xg = x.astype(jnp.float32).reshape(x.shape[:-1] + (groups, c // groups))
  return xg, tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)


def group_statistics(x: jax.Array, groups: int, epsilon: float = 1e-5
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(x grouped [B, ..., G, C/G], mean, 1/√(var + eps)), float32; the statistics keep-dims
  [B, 1.., G, 1]. Two-pass variance (the mean subtracted before squaring), sums via `staged`."""
  xg, axes = grouped(x, groups)
  mean = staged.staged_mean(xg, axes, keepdims=True)
  var = staged.staged_mean(jnp.square(xg - staged.expand(mean, xg.shape)), axes, keepdims=True)
  return xg, mean, jax.lax.rsqrt(var + epsilon)


def group_normalise(xg: jax.Array, mean: jax.Array, rstd: jax.Array, scale: jax.Array,
                    bias: jax.Array, shape: tuple[int, ...], dtype: Dtype,
                    film: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
  """(x − mean) · rstd · scale + bias as `shape` [B, ..., C] in `dtype`; xg [B, ..., G, C/G] and
  the statistics [B, 1.., G, 1] in float32. With `film` = (f_scale, f_shift), each of x's rank
  with size 1 on the axes it broadcasts over (e.g. [B, 1, 1, C]), the FiLM that follows,
  GroupNorm(x) · (1 + f_scale) + f_shift, is folded into the same per-channel multiply-add.

  Applied in the affine form x · a + (bias − mean · a), a = rstd · scale per (sample, channel),
  as PyTorch's CPU GroupNorm kernel applies it: one multiply-add per element from x itself, so
  XLA need not write x − mean out as a full-size array for the variance and the output to share
  (demo inference 0.80–0.88 of the time on a 2-core Zen 1; BENCHMARKS.md, "GroupNorm in the
  affine form"). It differs from (x − mean) · a + bias by float32 round-off scaled by |mean|/std.
  Folding the FiLM in (a · (1 + f_scale), shift · (1 + f_scale) + f_shift, in float32) saves two
  full-size passes where XLA would otherwise apply it element by element after the GroupNorm.
  """
  g, cg = xg.shape[-2:]
  mul = rstd * scale.reshape(g, cg)  # [B, 1.., G, C/G]
  shift = bias.reshape((1,) * (xg.ndim - 2) + (g, cg)) - mean * mul
  if film is not None:
    if any(f.ndim != len(shape) for f in film):
      raise ValueError(f"FiLM terms {[f.shape for f in film]} need the rank of x {shape}")
    f_scale, f_shift = (f.astype(jnp.float32).reshape(f.shape[:-1] + (g, cg)) for f in film)
    mul, shift = mul * (1 + f_scale), shift * (1 + f_scale) + f_shift
  y = xg * staged.expand(mul, xg.shape) + staged.expand(shift, xg.shape)
  return y.reshape(shape).astype(dtype)


def sigmoid(x: jax.Array) -> jax.Array:
  """The logistic function as ½ · tanh(x / 2) + ½, computed in (at least) float32; x's shape
  and dtype.

  Equal to 1 / (1 + e^−x) up to float32 round-off (≤ 1.5e-7 absolute; tests/models/test_staged.py)
  and cheaper on XLA:CPU, whose tanh is one rational polynomial where `jax.nn.sigmoid` costs an
  exponential and a division per element (BENCHMARKS.md, "SiLU through tanh, and the FiLM folded
  into the GroupNorm"). Half-precision inputs are widened first: in bfloat16, tanh near −1 would
  round σ(x) to multiples of 2⁻⁹ (σ(−5) 12 % low, zero below ≈ −7).
  """
  wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return (0.5 * jnp.tanh(0.5 * wide) + 0.5).astype(x.dtype)


def silu(x: jax.Array) -> jax.Array:
  """x · sigmoid(x) with `sigmoid` above, in (at least) float32 and returned in x's dtype:
  `jax.nn.silu` up to float32 round-off. Every SiLU of the networks is this one."""
  wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return (wide * sigmoid(wide)).astype(x.dtype)


class Conv(nn.Module):
  """2-D convolution, NHWC × HWIO, with `nn.Conv`'s parameters (`kernel`, then `bias`) and values.

  The bias is added with `staged.add_bias`, so its gradient is two fast reductions on XLA:CPU
  (with `nn.Conv` it is one slow one); the forward pass is the same `lax.conv_general_dilated`.
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Any = "SAME"  # "SAME", "VALID" or ((top, bottom), (left, right))
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros

  def _kernel_io(self, c_in: int) -> tuple[int, int]:
    return c_in, self.features

  def _conv(self, x: jax.Array, kernel: jax.Array, padding: Any) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, tuple(self.strides), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C_in] -> [B, H', W', features]
    shape = tuple(self.kernel_size) + self._kernel_io(x.shape[-1])
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    padding = self.padding if isinstance(self.padding, str) else tuple(map(tuple, self.padding))
    y = self._conv(x.astype(self.dtype), kernel.astype(self.dtype), padding)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      y = staged.add_bias(y, bias.astype(self.dtype))
    return y


ADJOINT_BACKENDS = ("cpu",)  # jax.default_backend() values whose transposed convs use the adjoint


def _adjoint_kernel_grad(f):
  """f(x, k), linear in x, with a custom VJP whose kernel gradient is taken through f's adjoint.

  With A_k the adjoint (input-gradient) map of x ↦ f(x, k): ⟨dy, f(x, k)⟩ = ⟨A_k dy, x⟩, so the
  kernel gradient is the VJP of k ↦ A_k dy at cotangent x. The input gradient is A_k dy itself.
  Reverse mode only: a custom VJP has no forward-mode (jvp) rule.
  """
  @jax.custom_vjp
  def op(x, k):
    return f(x, k)

  def fwd(x, k):
    return f(x, k), (x, k)

  def bwd(res, dy):
    x, k = res
    adjoint = lambda k_: jax.vjp(lambda x_: f(x_, k_), x)[1](dy)[0]  # A_k dy, linear in k
    dx, pull = jax.vjp(adjoint, k)
    return dx, pull(x)[0]

  op.defvjp(fwd, bwd)
  return op


def conv_transpose(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Any,
                   transpose_kernel: bool = False) -> jax.Array:
  """`lax.conv_transpose` (NHWC × HWIO) whose kernel gradient is a strided conv's weight gradient.

  x: [B, H, W, C_in], kernel: [kh, kw, C_in, C_out] ([kh, kw, C_out, C_in] with
  `transpose_kernel`, as in `lax.conv_transpose`) -> [B, H', W', C_out]. A transposed conv is
  the input gradient of a strided conv; differentiated as is, its kernel gradient is a conv over
  the stride-dilated input, which XLA:CPU runs in a generic loop (forward + VJP of the paper
  SegUnet's finest up-conv: 3.8 s → 0.02 s as below, BENCHMARKS.md "Transposed convolutions on
  CPU"). On ADJOINT_BACKENDS the kernel gradient goes through the adjoint
  (`_adjoint_kernel_grad`): equal up to float32 round-off; forward and input gradient unchanged.
  """
  def plain(x_, k_):
    return jax.lax.conv_transpose(x_, k_, strides, padding, transpose_kernel=transpose_kernel,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))

  if jax.default_backend() not in ADJOINT_BACKENDS:
    return plain(x, kernel)
  return _adjoint_kernel_grad(plain)(x, kernel)


class ConvTranspose(Conv):
  """`nn.ConvTranspose` (same parameters, initial values and forward) through `conv_transpose`.

  2-D, NHWC only: `kernel_size` and `strides` as pairs, `padding` a string or per-side pairs
  (default "SAME", as nn.ConvTranspose). With `transpose_kernel` the kernel is [kh, kw, features,
  C_in], as in flax.
  """
  transpose_kernel: bool = False

  def _kernel_io(self, c_in: int) -> tuple[int, int]:
    return (self.features, c_in) if self.transpose_kernel else (c_in, self.features)

  def _conv(self, x: jax.Array, kernel: jax.Array, padding: Any) -> jax.Array:
    return conv_transpose(x, kernel, tuple(self.strides), padding, self.transpose_kernel)


def standardize_weight(kernel: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Weight standardisation per output filter, as in the DAE/SegUnet conv.

  kernel: [kh, kw, C_in, C_out]. Each filter (last axis) gets its mean over (kh, kw, C_in)
  subtracted and is divided by (its *unbiased* standard deviation + eps). Computed in float32.
  """
  w = kernel.astype(jnp.float32)
  w = w - jnp.mean(w, axis=(0, 1, 2), keepdims=True)
  std = jnp.std(w, axis=(0, 1, 2), keepdims=True, ddof=1)
  return w / (std + eps)
