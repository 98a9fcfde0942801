"""Anomaly scores: map settings, the host `anomaly_for`, and the one jitted per-volume program (§4.1–4.2)."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from scipy import ndimage

from sadm_jax.evaluate import anomaly_map as am, inference
from sadm_jax.utils import xla_flags

DATA_AXIS = "data"


def map_settings(config: ml_collections.ConfigDict) -> dict:
  """`anomaly_map` keyword arguments from `config.evaluate` (besides the combination)."""
  ecfg = config.evaluate
  return {"lam": float(ecfg.lam), "median_size": int(ecfg.median_size),
          "erode_mask": int(ecfg.erode_mask), "min_component_size": int(ecfg.min_component_size),
          "residual_mode": str(ecfg.residual_mode)}


def anomaly_for(method: str, combination: str, x: np.ndarray, mask: np.ndarray,
                outputs: inference.VolumeInference | None, settings: dict,
                intensity_median: float | None = None) -> np.ndarray:
  """Anomaly map A [H, W, D] of one method for input x [H, W, D] with brain mask [H, W, D] (host).

  'threshold': |x − m|·M with m the median healthy brain intensity (intensity baseline; any voxel
  order); otherwise `anomaly_map` with the method's combination ('residual' for the cDDPM, Q10).
  """
  mask = np.asarray(mask) > 0
  if method == "threshold":
    return (np.abs(x - np.float32(intensity_median)) * mask).astype(np.float32)
  recon = outputs.recon if outputs.recon is not None else x  # unused by combination='segmentation'
  return am.anomaly_map(recon, x, mask, outputs.seg_prob, combination=combination, lam=settings["lam"],
                        median_size=settings["median_size"], erode_mask=settings["erode_mask"],
                        min_component_size=settings["min_component_size"],
                        residual_mode=settings["residual_mode"])


def recon_errors(x: np.ndarray, recon: np.ndarray, mask: np.ndarray, gt: np.ndarray) -> dict:
  """Mean L1/L2 reconstruction errors inside the brain, and on its lesion / lesion-free parts."""
  d = np.asarray(x, np.float64) - np.asarray(recon, np.float64)
  out = {}
  for suffix, region in (("", mask), ("_lesion", mask & gt), ("_healthy", mask & ~gt)):
    n = int(region.sum())
    out[f"recon_l1{suffix}"] = float(np.abs(d[region]).mean()) if n else float("nan")
    out[f"recon_l2{suffix}"] = float((d[region] ** 2).mean()) if n else float("nan")
  return out


def erode_slice_major(mask: np.ndarray, iterations: int) -> np.ndarray:
  """`anomaly_map.erode_brain_mask` for a slice-major mask: per axial slice. [D, H, W] → bool"""
  m = np.asarray(mask) > 0
  if iterations <= 0:
    return m
  cross = np.zeros((3, 3, 3), bool)
  cross[1] = ndimage.generate_binary_structure(2, 1)
  return ndimage.binary_erosion(m, structure=cross, iterations=int(iterations), border_value=0)


def eroded_brain(mask: np.ndarray, iterations: int, name: str, slice_major: bool = True
                 ) -> np.ndarray:
  """The brain mask eroded per axial slice (`erode_slice_major` for [D, H, W], else
  `anomaly_map.erode_brain_mask` for [H, W, D]), refusing (ValueError naming volume `name`) an
  erosion that leaves no voxel of a non-empty mask: the maps would be zero everywhere and every
  metric meaningless."""
  eroded = (erode_slice_major if slice_major else am.erode_brain_mask)(mask, iterations)
  if iterations > 0 and not eroded.any() and np.any(np.asarray(mask) > 0):
    raise ValueError(f"--config.evaluate.erode_mask={iterations} erodes the brain mask of {name} "
                     "to nothing (iterations of a per-slice erosion on the working grid); use "
                     "fewer (0 = off)")
  return eroded


def combine(combination: str, lam: float, m, r_med, seg, xp=np):
  """A from the median residual and the probability, as `anomaly_map` adds them, in float32.

  m, r_med, seg: [..] (r_med unused for 'segmentation', seg unused for 'residual'); xp: np or jnp.
  """
  combination = am._combination(combination, seg)
  f32 = np.float32
  a = xp.where(m, r_med, f32(0)).astype(f32) if combination != "segmentation" else \
      xp.zeros(m.shape, f32)
  if combination != "residual":
    s = xp.where(m, seg, f32(0)).astype(f32)
    a = f32(lam) * a + f32(1.0 - lam) * s if combination == "weighted" else a + s
  return a


def filter_small(a: np.ndarray, min_size: int) -> np.ndarray:
  """Drops connected components of {A > 0} smaller than `min_size` voxels (Q11; off when ≤ 1)."""
  if not min_size or min_size <= 1:
    return a
  binary = a > 0.0
  return np.where(binary & ~am.filter_components(binary, min_size), 0, a).astype(np.float32)


def device_median(backend: str | None = None) -> bool:
  """The 5³ median runs in the device program on accelerators, in NumPy on a CPU backend
  (NumPy partial sort: faster there; identical values either way)."""
  return (backend or jax.default_backend()) != "cpu"


def local_mesh(num_devices: int = 0) -> Mesh:
  """A ('data',) mesh over this process's devices (the first `num_devices` when > 0)."""
  devices = jax.local_devices()
  n = num_devices if num_devices > 0 else len(devices)
  if n > len(devices):
    raise ValueError(f"mesh.num_devices={n} but this process sees {len(devices)} device(s)")
  return Mesh(np.asarray(devices[:n]), (DATA_AXIS,))


def architecture_groups(segnets: Sequence[inference.SegmentationInference]) -> list[list[int]]:
  """Indices of the SegUnets that share one architecture (equal module and the same parameter
  tree, shapes and dtypes), grouped in order of first appearance; e.g. [[0, 2], [1]]."""
  def signature(s):
    return (s.module, jax.tree.structure(s.variables),
            [(a.shape, a.dtype) for a in jax.tree.leaves(s.variables)])

  keys: list = []
  groups: list[list[int]] = []
  for i, s in enumerate(segnets):
    key = signature(s)
    if key in keys:
      groups[keys.index(key)].append(i)
    else:
      keys.append(key)
      groups.append([i])
  return groups


def stack_variables(variables: Sequence[dict]) -> dict:
  """One variables tree as is; several (of one architecture) stacked leaf by leaf on a new
  leading axis [n, ...]."""
  if len(variables) == 1:
    return variables[0]
  return jax.tree.map(lambda *a: jnp.stack(a), *variables)


class VolumeProgram:
  """One jitted program for every run built on one cDDPM (or none), over volumes on a device mesh.

  `(variables, images [B, D, H, W], brain masks [B, D, H, W], noise indices [B]) →` recon
  (ensemble mean), prob [B, S, D, H, W] (one per SegUnet), residual (masked SSIM residual) and, with
  `on_device_median`, median (median-filtered residual, 0 outside M) and maps [B, R, D, H, W]. The
  B volumes are split over the mesh's 'data' axis (B = a multiple of its size); each device maps
  its volumes one by one, so a volume's numbers do not depend on B or the device count.
  runs: (run id, combination, SegUnet index or None) in output order; settings: `map_settings`.
  SegUnets of one architecture (`architecture_groups`) share one copy of the network in the
  program: their weights are stacked and the network is mapped over them, so evaluating n runs of
  a sweep compiles one SegUnet per architecture instead of n.
  """

  def __init__(self, cddpm: inference.CDDPMInference | None,
               segnets: Sequence[inference.SegmentationInference],
               runs: Sequence[tuple[str, str, int | None]], settings: dict, mesh: Mesh,
               on_device_median: bool):
    self.cddpm, self.segnets, self.runs, self.settings = cddpm, list(segnets), list(runs), settings
    self.mesh, self.on_device_median = mesh, bool(on_device_median)
    self.needs_residual = cddpm is not None and any(c != "segmentation" for _, c, _ in runs)
    repl = NamedSharding(mesh, P())
    self.groups = architecture_groups(self.segnets)
    self.variables = jax.device_put(
        (cddpm.variables if cddpm is not None else {},
         [stack_variables([self.segnets[i].variables for i in g]) for g in self.groups]), repl)
    self.batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
    spec = P(DATA_AXIS)
    mapped = jax.shard_map(self._local, mesh=mesh, in_specs=(P(), spec, spec, spec),
                           out_specs=spec, check_vma=False)
    self._fn = jax.jit(mapped, compiler_options=self.compiler_options)

  @property
  def compiler_options(self) -> dict | None:
    """The program's own XLA options: with two or more SegUnets on CPU, YNNPACK convolutions
    (`xla_flags.inference_compiler_options`; under the package's training-time setting such
    programs gave wrong values for one depth slice on several CPU devices, BENCHMARKS.md "Several
    SegUnets in one evaluation program"); otherwise None (the process's flags: faster at the demo's
    widths on CPU, 57.7 vs 68.1 s for its evaluation stage, and never seen wrong)."""
    if len(self.segnets) < 2:
      return None
    return xla_flags.inference_compiler_options(self.mesh.devices.flat[0].platform)

  @property
  def batch(self) -> int:
    return self.mesh.size

  @property
  def program(self):
    """The jitted program `dispatch` calls (to lower it for cost analysis): (variables, images,
    masks, indices) as in the class docstring, `self.variables` first."""
    return self._fn

  def _one(self, variables, image, mask, index) -> dict:
    # image [D, H, W] float32, mask [D, H, W] bool, index uint32 -> dict of [..., D, H, W]
    cvars, svars = variables
    out, per_t = {}, None
    s = self.settings
    if self.cddpm is not None:
      mean, per_t = self.cddpm._reconstruct(cvars, image, index)
      out["recon"] = mean
      if self.needs_residual:
        # The residual is taken in NIfTI voxel order [H, W, D], the arithmetic of `anomaly_map`.
        hwd = lambda a: jnp.transpose(a, (1, 2, 0))
        r = am.residual_map(hwd(mean), hwd(image), s["residual_mode"])
        if s["residual_mode"] == "ssim":
          r = r * hwd(mask).astype(r.dtype)
        out["residual"] = jnp.transpose(r, (2, 0, 1)).astype(jnp.float32)
        if self.on_device_median:
          med = out["residual"]
          if s["median_size"] > 1:
            med = am._median_jax(med, am._check_size(s["median_size"]))
          out["median"] = jnp.where(mask, med, jnp.float32(0))
    if self.segnets:
      probs: list = [None] * len(self.segnets)
      for group, v in zip(self.groups, svars):
        seg = self.segnets[group[0]]
        prob = functools.partial(seg._probability, image=image,
                                 per_t=per_t if seg.needs_reconstruction else None)
        if len(group) == 1:
          probs[group[0]] = prob(v)
        else:  # one copy of the network, mapped over the group's stacked weights
          stacked = jax.lax.map(prob, v)  # [len(group), D, H, W]
          for j, i in enumerate(group):
            probs[i] = stacked[j]
      out["prob"] = jnp.stack(probs)
    if self.on_device_median:
      out["maps"] = jnp.stack([
          combine(c, s["lam"], mask, out.get("median"), None if k is None else out["prob"][k],
                  jnp) for _, c, k in self.runs])
    return out

  def _local(self, variables, images, masks, indices) -> dict:
    return jax.lax.map(lambda a: self._one(variables, *a), (images, masks, indices))

  def dispatch(self, images, masks, indices) -> dict:
    """Starts the program on up to `batch` volumes (asynchronous); returns device arrays (see the
    class), their first len(images) entries those volumes'. Fewer than `batch` are padded with
    the last volume again (computed, never read)."""
    n = len(images)
    if not 0 < n <= self.batch:
      raise ValueError(f"{n} volumes for a program over {self.batch} devices")

    def put(a, dtype):
      a = np.asarray(a, dtype)  # no copy for a stacked array of that dtype
      if n < self.batch:
        a = np.concatenate([a, np.repeat(a[-1:], self.batch - n, axis=0)])
      return jax.device_put(a, self.batch_sharding)
    return self._fn(self.variables, put(images, np.float32), put(masks, bool),
                    put(indices, np.uint32))

  def maps(self, out: dict, b: int, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Host side of volume `b` of a fetched batch: run id -> A [D, H, W] float32.

    mask: the (eroded) brain mask M of that volume [D, H, W]; the median runs here unless on device.
    """
    s = self.settings
    if self.on_device_median:
      res = {rid: out["maps"][b, i] for i, (rid, _, _) in enumerate(self.runs)}
    else:
      med = None
      if "residual" in out:
        r = out["residual"][b]
        med = am.median_filter_3d(r, s["median_size"], backend="numpy", where=mask) \
            if s["median_size"] > 1 else r
      res = {rid: combine(c, s["lam"], mask, med, None if k is None else out["prob"][b, k])
             for rid, c, k in self.runs}
    return {rid: filter_small(np.asarray(a, np.float32), s["min_component_size"])
            for rid, a in res.items()}
