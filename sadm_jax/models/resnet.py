"""ResNet-50 (timm layout, 1 input channel): dense/sparse backbone and conditioning encoder E."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sadm_jax.models import staged

Array = jax.Array
Initializer = Callable[..., Array]

RESNET50_STAGE_SIZES = (3, 4, 6, 3)  # bottleneck blocks per stage
STAGE_WIDTH_MULTIPLIERS = (1, 2, 4, 8)  # bottleneck inner widths in units of the stem width
STAGE_STRIDES = (1, 2, 2, 2)
EXPANSION = 4  # bottleneck output = 4 x inner width: (256, 512, 1024, 2048) for ResNet-50
DOWNSAMPLE_RATIO = 32  # input pixels per cell of the last feature map (and per SparK patch)

# timm: kaiming_normal_(mode='fan_out', nonlinearity='relu') on every Conv2d (untruncated normal).
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default Conv2d/Linear weight init (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in)).
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int) -> Initializer:
  """PyTorch's default Conv2d/Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def mask_at(active: Array, hw: tuple[int, int], dtype: Any = jnp.float32) -> Array:
  """Nearest-upsamples the patch mask `active` [B, h, w] (bool) to [B, H, W, 1] in `dtype`.

  H and W must be whole multiples of h and w (as SparK's `repeat_interleave`).
  """
  b, h, w = active.shape
  height, width = hw
  if height % h or width % w:
    raise ValueError(f"feature map {height}x{width} is not a multiple of the mask grid {h}x{w}")
  m = jnp.repeat(jnp.repeat(active, height // h, axis=1), width // w, axis=2)
  return m[..., None].astype(dtype)


class BatchNorm(nn.Module):
  """BatchNorm over [B, H, W, C] with PyTorch semantics, optionally over masked positions only.

  Statistics are taken over every axis but the last. With `mask` [B, H, W, 1] (1 = active) the batch
  mean/variance use active positions only, inactive outputs are set to 0 (SparK's sparse BN) and the
  running statistics are updated from the active positions. As in PyTorch the normalisation uses the
  biased batch variance and the running variance is updated with the unbiased one (n / (n - 1)).
  `momentum` uses the Flax convention: running = momentum * running + (1 - momentum) * batch
  (PyTorch momentum 0.1 -> 0.9). Variables: params `scale`, `bias`; batch_stats `mean`, `var`.
  Statistics are computed in float32 whatever the input dtype.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  scale_init: Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x: Array, train: bool, mask: Array | None = None) -> Array:
    c = x.shape[-1]
    scale = self.param("scale", self.scale_init, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    xf = x.astype(jnp.float32)
    if train:
      mean, var, n = _moments(xf, mask)
      if not self.is_initializing():
        unbiased = var * (n / jnp.maximum(n - 1.0, 1.0))
        ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * unbiased
    else:
      mean, var = ra_mean.value, ra_var.value
    mul = (scale * jax.lax.rsqrt(var + self.epsilon)).reshape((1,) * (x.ndim - 1) + (c,))
    y = ((xf - staged.expand(mean.reshape(mul.shape), x.shape)) * staged.expand(mul, x.shape)
         + staged.expand(bias.reshape(mul.shape), x.shape))
    if mask is not None:
      y = y * mask
    return y.astype(x.dtype)


def _moments(x: Array, mask: Array | None) -> tuple[Array, Array, Array]:
  """Per-channel biased mean/var of x [B, H, W, C] over (active) positions, and their count."""
  axes = tuple(range(x.ndim - 1))
  if mask is None:
    mean = staged.staged_mean(x, axes, keepdims=True)
    var = staged.staged_mean(jnp.square(x - staged.expand(mean, x.shape)), axes)
    n = jnp.asarray(x.size // x.shape[-1], jnp.float32)
    return mean.reshape(x.shape[-1:]), var, n
  m = mask.astype(jnp.float32)
  n = jnp.sum(m)  # mask broadcasts over channels: one count for all of them
  denom = jnp.maximum(n, 1.0)
  mean = staged.staged_sum(x * m, axes, keepdims=True) / denom
  var = staged.staged_sum(jnp.square(x - staged.expand(mean, x.shape)) * m, axes) / denom
  return mean.reshape(x.shape[-1:]), var, n


class DropPath(nn.Module):
  """Stochastic depth on a residual branch: drops whole samples, rescales kept ones by 1/keep.

  Identity when `rate == 0` or `deterministic`; otherwise draws from the 'dropout' rng stream.
  """
  rate: float

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    kept = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(kept, x / keep, jnp.zeros_like(x))


class Bottleneck(nn.Module):
  """timm ResNet bottleneck (1x1 -> 3x3 with the stride -> 1x1 x4), drop path on the residual.

  The last BN's scale starts at zero (timm `zero_init_last`). With `active` (patch mask [B, h, w])
  every conv output is multiplied by the mask at its resolution and every BN is masked.
  """
  planes: int
  stride: int = 1
  downsample: bool = False
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, active: Array | None = None) -> Array:
    # x: [B, H, W, Cin] -> [B, H / stride, W / stride, 4 * planes]
    def conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
      pad = kernel // 2
      return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                     padding=((pad, pad), (pad, pad)), use_bias=False,
                     kernel_init=he_normal_fan_out, dtype=self.dtype, name=name)

    def sparse(y: Array) -> tuple[Array, Array | None]:
      if active is None:
        return y, None
      m = mask_at(active, y.shape[1:3], y.dtype)
      return y * m, m

    y, m = sparse(conv(self.planes, 1, 1, "conv1")(x))
    y = nn.relu(BatchNorm(name="bn1")(y, train, m))
    y, m = sparse(conv(self.planes, 3, self.stride, "conv2")(y))
    y = nn.relu(BatchNorm(name="bn2")(y, train, m))
    y, m = sparse(conv(self.planes * EXPANSION, 1, 1, "conv3")(y))
    y = BatchNorm(scale_init=nn.initializers.zeros, name="bn3")(y, train, m)
    y = DropPath(self.drop_path_rate)(y, deterministic=not train)
    shortcut = x
    if self.downsample:
      shortcut, m = sparse(conv(self.planes * EXPANSION, 1, self.stride, "downsample_conv")(x))
      shortcut = BatchNorm(name="downsample_bn")(shortcut, train, m)
    return nn.relu(y + shortcut)


class ResNet50Backbone(nn.Module):
  """timm `resnet50` without pool/classifier; returns the 4 stage feature maps.

  Input x: [B, H, W, in_channels] in [0, 1], H and W multiples of 32. For a 96x96 input the features
  are [B, 24, 24, 256], [B, 12, 12, 512], [B, 6, 6, 1024], [B, 3, 3, 2048] (largest first).
  Sparse mode (SparK): `active` [B, H/32, W/32] bool; the input and the output of every conv and of
  the stem max-pool are multiplied by the nearest-upsampled mask and every BN uses active positions
  only, so nothing under an inactive patch influences anything. Same parameters as the dense mode.
  Stochastic depth grows linearly over the 16 blocks from 0 to `drop_path_rate`; 0 really disables
  it (the reference always ran with 0.05: its `dp: 0` could not turn it off, quirk Q9).
  `train=False`: running BN statistics, no drop path.
  `stage_sizes`/`width` (stem width; stages use 1/2/4/8 x width) exist for small test/demo variants;
  the paper's ResNet-50 is the default (3, 4, 6, 3) / 64.
  """
  drop_path_rate: float = 0.05
  in_channels: int = 1
  stage_sizes: Sequence[int] = RESNET50_STAGE_SIZES
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, active: Array | None = None) -> tuple[Array, ...]:
    _check_input(x, self.in_channels, active)
    if active is not None:
      x = x * mask_at(active, x.shape[1:3], x.dtype)
    x = nn.Conv(self.width, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                kernel_init=he_normal_fan_out, dtype=self.dtype,
                name="conv1")(x)  # [B, H/2, W/2, width]
    m = None if active is None else mask_at(active, x.shape[1:3], x.dtype)
    if m is not None:
      x = x * m
    x = nn.relu(BatchNorm(name="bn1")(x, train, m))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # [B, H/4, W/4, width]
    if active is not None:
      x = x * mask_at(active, x.shape[1:3], x.dtype)

    if len(self.stage_sizes) != len(STAGE_STRIDES):
      raise ValueError(f"stage_sizes needs {len(STAGE_STRIDES)} entries, got {self.stage_sizes}")
    num_blocks = sum(self.stage_sizes)
    block = 0
    features = []
    for stage, (depth, mult, stride) in enumerate(
        zip(self.stage_sizes, STAGE_WIDTH_MULTIPLIERS, STAGE_STRIDES)):
      for j in range(depth):
        rate = self.drop_path_rate * block / max(num_blocks - 1, 1)
        x = Bottleneck(self.width * mult, stride=stride if j == 0 else 1, downsample=j == 0,
                       drop_path_rate=rate, dtype=self.dtype,
                       name=f"layer{stage + 1}_{j}")(x, train, active)
        block += 1
      features.append(x)
    return tuple(features)


def _check_input(x: Array, in_channels: int, active: Array | None) -> None:
  if x.ndim != 4 or x.shape[-1] != in_channels:
    raise ValueError(f"expected input [B, H, W, {in_channels}], got {x.shape}")
  if x.shape[1] % DOWNSAMPLE_RATIO or x.shape[2] % DOWNSAMPLE_RATIO:
    raise ValueError(f"input height/width must be multiples of {DOWNSAMPLE_RATIO}, got {x.shape}")
  if active is not None:
    grid = (x.shape[0], x.shape[1] // DOWNSAMPLE_RATIO, x.shape[2] // DOWNSAMPLE_RATIO)
    if tuple(active.shape) != grid:
      raise ValueError(f"active mask must be {list(grid)} for input {x.shape}, got {active.shape}")


class ResNet50Encoder(nn.Module):
  """Conditioning encoder E: ResNet-50 backbone -> global average pool -> Dense(2048 -> cond_dim).

  x: [B, H, W, 1] clean slice in [0, 1]; returns [B, cond_dim], no normalisation/activation.
  `cond_dim` is taken as given (the paper configuration is 512). Submodules: `backbone`, `head`.
  `stage_sizes`/`width` as in ResNet50Backbone (defaults: ResNet-50).
  """
  cond_dim: int = 512
  drop_path_rate: float = 0.05
  in_channels: int = 1
  stage_sizes: Sequence[int] = RESNET50_STAGE_SIZES
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    features = ResNet50Backbone(self.drop_path_rate, self.in_channels, tuple(self.stage_sizes),
                                self.width, self.dtype, name="backbone")(x, train)
    pooled = jnp.mean(features[-1], axis=(1, 2))  # [B, 8 * 4 * width] = [B, 2048]
    return nn.Dense(self.cond_dim, kernel_init=torch_default_kernel,
                    bias_init=torch_default_bias(pooled.shape[-1]), dtype=self.dtype,
                    name="head")(pooled)  # [B, cond_dim]
