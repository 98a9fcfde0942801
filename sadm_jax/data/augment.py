"""Training-time intensity augmentation: gamma, bias field, blur, ghosting (torchio 0.18.73)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from scipy import ndimage

# METHOD §2.4. Each transform is applied independently with its probability, in this order:
#   RandomGamma -> RandomBiasField -> RandomBlur -> RandomGhosting.
# The same code handles a 3-D volume [H, W, D] (faithful, Q28: augment the whole volume, then
# slice) and a single 2-D slice [H, W] (our default, ~50x cheaper). On a 2-D slice the bias
# polynomial, the blur and the ghosting act on the two in-plane axes only, so the per-slice
# distribution differs from slicing an augmented volume:
#   * bias field: the slice of a 3-D field at height z is a 2-D polynomial whose coefficients are
#     sums c_ij(z) = sum_k c_ijk z^k (larger, z-dependent); the 2-D field draws c_ij directly;
#   * blur: 3-D blur also mixes neighbouring axial slices (sigma_z); 2-D blur never does;
#   * ghosting: in 3-D the ghost axis is one of 3 (1/3 of the time the through-plane axis, which
#     superposes attenuated copies of other slices); in 2-D it is one of the 2 in-plane axes.
# Gamma is voxel-wise and identical in both modes.


@dataclasses.dataclass(frozen=True)
class IntensityAugConfig:
  """Probabilities and parameter ranges of the four intensity transforms (torchio defaults)."""
  p_gamma: float = 0.5
  log_gamma: tuple[float, float] = (-0.3, 0.3)  # gamma = exp(U(log_gamma))
  p_bias: float = 0.25
  bias_coefficients: tuple[float, float] = (-0.5, 0.5)
  bias_order: int = 3
  p_blur: float = 0.25
  blur_sigma: tuple[float, float] = (0.0, 2.0)  # voxels, drawn independently per axis
  p_ghosting: float = 0.5
  num_ghosts: tuple[int, int] = (4, 10)  # inclusive
  ghost_intensity: tuple[float, float] = (0.5, 1.0)
  # Fraction of central k-space planes restored after attenuation. None = only the single central
  # plane, which is what torchio 0.18.x actually does (it computes the fraction but never uses it);
  # for axes of <= 74 voxels the two coincide, for 96 voxels 0.02 restores 2 planes instead of 1.
  ghost_restore: float | None = 0.02

  def __post_init__(self):
    for name in ("p_gamma", "p_bias", "p_blur", "p_ghosting"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"IntensityAugConfig.{name} must be in [0, 1], got {getattr(self, name)}")
    for name in ("log_gamma", "bias_coefficients", "blur_sigma", "num_ghosts", "ghost_intensity"):
      lo, hi = getattr(self, name)
      if lo > hi:
        raise ValueError(f"IntensityAugConfig.{name} must be (low, high) with low <= high")
    if self.bias_order < 0:
      raise ValueError(f"IntensityAugConfig.bias_order must be >= 0, got {self.bias_order}")
    if self.blur_sigma[0] < 0 or self.num_ghosts[0] < 1:
      raise ValueError("IntensityAugConfig: blur_sigma must be >= 0 and num_ghosts >= 1")
    if self.ghost_restore is not None and not 0.0 <= self.ghost_restore <= 1.0:
      raise ValueError("IntensityAugConfig.ghost_restore must be in [0, 1] or None")


@dataclasses.dataclass(frozen=True)
class AugParams:
  """One draw of the random parameters; None = that transform is not applied."""
  gamma: float | None = None
  bias_coeffs: tuple[float, ...] | None = None  # monomial order of `bias_monomials`
  blur_sigma: tuple[float, ...] | None = None  # one per axis
  ghosting: tuple[int, int, float] | None = None  # (num_ghosts, axis, intensity)


# ---- deterministic per-transform functions ----

def apply_gamma(x: np.ndarray, gamma: float) -> np.ndarray:
  """Sign-preserving power: sign(x) |x|^gamma (torchio RandomGamma). Any shape, float32."""
  x = np.asarray(x, np.float32)
  g = np.float32(gamma)
  if x.size and x.min() >= 0:
    return x ** g
  return np.sign(x) * np.abs(x) ** g


def bias_monomials(ndim: int, order: int) -> list[tuple[int, ...]]:
  """Exponent tuples with total degree <= order, in torchio's loop order (first axis outermost).

  ndim=3, order=3 gives 20 monomials; ndim=2, order=3 gives 10.
  """
  return [e for e in itertools.product(range(order + 1), repeat=ndim) if sum(e) <= order]


def bias_field(shape: tuple[int, ...], coeffs, order: int) -> np.ndarray:
  """Multiplicative field exp(sum_e c_e prod_a u_a^e_a), u_a in [-1, 1] along each axis.

  shape: (H, W) or (H, W, D); coeffs: one per `bias_monomials(len(shape), order)`.
  Returns float32 of `shape` (all-zero coefficients give exactly 1).
  torchio 0.18 uses np.arange(-n/2, n/2) / max, i.e. [-1 - 2/n, 1]; here the grid is symmetric.
  """
  exps = bias_monomials(len(shape), order)
  coeffs = np.asarray(coeffs, np.float64)
  if coeffs.shape != (len(exps),):
    raise ValueError(f"bias_field: expected {len(exps)} coefficients for order {order} in "
                     f"{len(shape)}-D, got shape {coeffs.shape}")
  c = np.zeros((order + 1,) * len(shape))
  for e, v in zip(exps, coeffs):
    c[e] = v
  # Separable evaluation: contract the leading coefficient axis with that axis' powers
  # [order+1, n] and append the spatial axis. einsum, not BLAS: BLAS threads contend badly
  # inside many data-loader processes.
  field = c.astype(np.float32)
  for n in shape:
    u = np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)
    powers = (u[None, :] ** np.arange(order + 1)[:, None]).astype(np.float32)
    field = np.einsum("k...,kn->...n", field, powers)
  return np.exp(field)


def apply_blur(x: np.ndarray, sigma) -> np.ndarray:
  """Gaussian blur with one sigma (voxels) per axis, reflect boundary (torchio Blur). float32."""
  return ndimage.gaussian_filter(np.asarray(x, np.float32), sigma=tuple(float(s) for s in sigma),
                                 mode="reflect")


def ghosting_weights(n: int, num_ghosts: int, intensity: float,
                     restore: float | None = 0.02) -> np.ndarray:
  """[n] k-space weights along the ghost axis, in fftshift-ed order (index n // 2 = DC).

  Every `num_ghosts`-th plane from index 0 is scaled by (1 - intensity); the central planes
  (the DC plane if `restore` is None, else the central max(1, round(restore * n))) keep 1.
  """
  w = np.ones(n)
  w[::num_ghosts] = 1.0 - intensity
  k = 1 if restore is None else max(1, int(round(restore * n)))
  start = n // 2 - k // 2
  w[start:start + k] = 1.0
  return w


def apply_ghosting(x: np.ndarray, num_ghosts: int, axis: int, intensity: float,
                   restore: float | None = 0.02) -> np.ndarray:
  """MRI ghosting along `axis` (torchio Ghosting, re-implemented from its description).

  torchio: spectrum = fftshift(fftN(x)); multiply every `num_ghosts`-th plane along `axis`
  (from index 0) by (1 - intensity); put the central plane(s) back; return Re(ifftN(ifftshift)).
  Scaling a periodic comb of k-space planes superposes copies of the image shifted by
  multiples of size / num_ghosts along `axis`.
  Computed here exactly, but cheaper: whole planes are scaled, so only a 1-D transform along
  `axis` matters, and for real x, Re(ifft(S * w)) = irfft(rfft(x) * (w(f) + w(-f)) / 2).
  x: any shape; returns float32 of the same shape.
  """
  x = np.asarray(x, np.float32)
  if not num_ghosts or not intensity:
    return x
  n = x.shape[axis]
  w_shift = ghosting_weights(n, num_ghosts, intensity, restore)
  w = np.fft.ifftshift(w_shift)  # natural FFT bin order
  w_sym = 0.5 * (w + w[(-np.arange(n)) % n])[: n // 2 + 1]
  shape = [1] * x.ndim
  shape[axis] = w_sym.size
  spec = np.fft.rfft(x, axis=axis) * w_sym.astype(np.float32).reshape(shape)
  return np.fft.irfft(spec, n=n, axis=axis).astype(np.float32)


# ---- random parameters ----

def sample_aug_params(ndim: int, rng: np.random.Generator,
                      cfg: IntensityAugConfig = IntensityAugConfig()) -> AugParams:
  """Draws which transforms apply and their parameters, for an ndim-D (2 or 3) input.

  One uniform draw per transform decides whether it applies; its parameters are drawn only
  if it does. Consumes `rng` in transform order.
  """
  gamma = bias = sigma = ghost = None
  if rng.random() < cfg.p_gamma:
    gamma = float(np.exp(rng.uniform(*cfg.log_gamma)))
  if rng.random() < cfg.p_bias:
    n = len(bias_monomials(ndim, cfg.bias_order))
    bias = tuple(float(v) for v in rng.uniform(*cfg.bias_coefficients, size=n))
  if rng.random() < cfg.p_blur:
    sigma = tuple(float(v) for v in rng.uniform(*cfg.blur_sigma, size=ndim))
  if rng.random() < cfg.p_ghosting:
    num = int(rng.integers(cfg.num_ghosts[0], cfg.num_ghosts[1] + 1))
    axis = int(rng.integers(0, ndim))
    ghost = (num, axis, float(rng.uniform(*cfg.ghost_intensity)))
  return AugParams(gamma=gamma, bias_coeffs=bias, blur_sigma=sigma, ghosting=ghost)


def apply_aug_params(volume: np.ndarray, params: AugParams,
                     cfg: IntensityAugConfig = IntensityAugConfig()) -> np.ndarray:
  """Applies the drawn transforms in order gamma -> bias -> blur -> ghosting. float32 out."""
  x = np.asarray(volume, np.float32)
  if params.gamma is not None:
    x = apply_gamma(x, params.gamma)
  if params.bias_coeffs is not None:
    x = x * bias_field(x.shape, params.bias_coeffs, cfg.bias_order)
  if params.blur_sigma is not None:
    x = apply_blur(x, params.blur_sigma)
  if params.ghosting is not None:
    num, axis, intensity = params.ghosting
    x = apply_ghosting(x, num, axis, intensity, cfg.ghost_restore)
  return x


def augment(volume: np.ndarray, rng: np.random.Generator,
            cfg: IntensityAugConfig = IntensityAugConfig()) -> np.ndarray:
  """Random intensity augmentation of a volume [H, W, D] or a slice [H, W] (float32 in and out).

  3-D input reproduces the reference (augment the volume, then slice; Q28); 2-D input augments
  only the drawn slice, with bias field, blur and ghosting restricted to the in-plane axes (see
  the module notes for how the distributions differ). Deterministic given the `rng` state.
  """
  volume = np.asarray(volume)
  if volume.ndim not in (2, 3):
    raise ValueError(f"augment: expected [H, W] or [H, W, D], got shape {volume.shape}")
  return apply_aug_params(volume, sample_aug_params(volume.ndim, rng, cfg), cfg)
