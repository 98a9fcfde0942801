"""Per-volume inference: encoder once, ensemble reconstruction, SegUnet probability (§3.6, §3.9)."""

from __future__ import annotations

import dataclasses
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sadm_jax import config as config_lib
from sadm_jax.diffusion import reconstruct as reconstruct_lib
from sadm_jax.diffusion import schedule as schedule_lib
from sadm_jax.models import cddpm as cddpm_lib
from sadm_jax.models import factory
from sadm_jax.models.segnet import SegUnet
from sadm_jax.train.runs import variables_fingerprint

# All D slices of a volume are one batch; every function below is compiled once per model
# architecture and volume shape, with the variables passed as arguments (never baked into the
# program as constants), so several checkpoints of one architecture share a compilation too.


def volume_index(name: str) -> int:
  """Stable non-negative 31-bit integer of a volume name (crc32): seeds that volume's noise.

  Independent of the volume's position in a split, so a resumed or re-ordered evaluation draws the
  same noise for the same volume.
  """
  return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
  """How the ensemble draws its noise (static: part of the compiled program)."""
  timesteps: tuple[int, ...] = reconstruct_lib.ENSEMBLE_TIMESTEPS
  kind: str = "simplex"
  shared: bool = False  # one field per timestep for all slices (reference, Q4)
  octaves: int = 6
  persistence: float = 0.8
  frequency: float = 64.0
  aligned_octaves: bool = False  # reference octave layout (Q4)
  float16: bool = False  # noise rounded to float16 (reference, Q4)

  @classmethod
  def from_configs(cls, model_config: ml_collections.ConfigDict,
                   eval_config: ml_collections.ConfigDict) -> NoiseSpec:
    """Noise shape from the model's training config; timesteps and sharing from the evaluation."""
    d, e = model_config.diffusion, eval_config.diffusion
    # The model's saved config is as its user gave it: a faithful placeholder is what training
    # resolved it to; absent in older runs: False.
    trained = lambda field: bool(config_lib.saved_value(model_config, "diffusion", field, False))
    steps = int(d.num_timesteps)
    if not all(0 <= int(t) < steps for t in e.ensemble_timesteps):
      raise ValueError(f"--config.diffusion.ensemble_timesteps={tuple(e.ensemble_timesteps)!r} "
                       f"must lie in [0, {steps - 1}]: the cDDPM was trained with "
                       f"diffusion.num_timesteps={steps}")
    return cls(timesteps=tuple(int(t) for t in e.ensemble_timesteps), kind=str(d.noise),
               shared=bool(e.shared_noise), octaves=int(d.octaves),
               persistence=float(d.persistence), frequency=float(d.frequency),
               aligned_octaves=trained("aligned_octaves"), float16=trained("float16_noise"))


@dataclasses.dataclass
class Reconstruction:
  """Ensemble reconstruction of one volume (device arrays, slice-major).

  mean: x̄ = mean_t x̂_t. [D, H, W]
  per_t: x̂_t for each ensemble timestep. [K, D, H, W]
  """
  mean: jax.Array
  per_t: jax.Array


@dataclasses.dataclass
class VolumeInference:
  """What the networks say about one volume, in NIfTI voxel order.

  recon: mean reconstruction x̄ [H, W, D] float32, or None (no cDDPM).
  seg_prob: mean SegUnet probability mean_t σ(S(x − x̂_t, x)) [H, W, D] float32, or None.
  """
  recon: np.ndarray | None
  seg_prob: np.ndarray | None


def _slice_major_to_hwd(a: jax.Array) -> np.ndarray:
  return np.transpose(np.asarray(a, np.float32), (1, 2, 0))


class CDDPMInference:
  """Frozen cDDPM of one checkpoint: E(x) once per slice, then the K-step noise ensemble.

  Build it once per checkpoint; `reconstruct` is one jitted call per volume whose program is traced
  once per volume shape (`traces` counts the traces, for tests).
  """

  def __init__(self, model_config: ml_collections.ConfigDict, variables: dict, noise: NoiseSpec,
               dtype: str = "float32", seed: int = 0, fingerprint: str | None = None):
    self.model = factory.build_cddpm(model_config, dtype)  # compute dtype (Q33); f32 parameters
    d = model_config.diffusion
    self.schedule = schedule_lib.cosine_schedule(d.num_timesteps, s=d.cosine_s, max_beta=d.max_beta)
    self.noise = noise
    self.seed = int(seed)
    self.variables = jax.device_put({"params": variables["params"],
                                     "batch_stats": variables.get("batch_stats", {})})
    self.fingerprint = fingerprint or variables_fingerprint(self.variables)
    self.traces = 0
    self._fn = jax.jit(self._reconstruct)

  @property
  def program(self):
    """The jitted function `reconstruct` calls (to lower it for cost analysis): (variables,
    image [D, H, W] float32, index uint32 scalar) -> (mean [D, H, W], per_t [K, D, H, W])."""
    return self._fn

  def _reconstruct(self, variables: dict, image: jax.Array, index: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
    # image: [D, H, W]; index: uint32 scalar -> (mean [D, H, W], per_t [K, D, H, W]) float32
    self.traces += 1
    key = jax.random.fold_in(jax.random.key(self.seed), index)
    x = image[..., None].astype(jnp.float32)  # [D, H, W, 1]
    model, n = self.model, self.noise
    cond = model.apply(variables, x, False, method=cddpm_lib.CDDPM.encode)  # inference-mode BN

    def denoise(x_t, t, c):
      return model.apply(variables, x_t, t, c, method=cddpm_lib.CDDPM.denoise).astype(jnp.float32)

    mean, per_t = reconstruct_lib.ensemble_reconstruct(
        denoise, x, cond, key, self.schedule, n.timesteps, noise_kind=n.kind, shared_noise=n.shared,
        octaves=n.octaves, persistence=n.persistence, frequency=n.frequency,
        aligned_octaves=n.aligned_octaves, float16_noise=n.float16)
    return mean[..., 0].astype(jnp.float32), per_t[..., 0].astype(jnp.float32)

  def reconstruct(self, image: np.ndarray, index: int) -> Reconstruction:
    """image [D, H, W] (slice-major, as cached) and the volume's noise index -> Reconstruction."""
    mean, per_t = self._fn(self.variables, jnp.asarray(image, jnp.float32),
                           jnp.asarray(index, jnp.uint32))
    return Reconstruction(mean, per_t)


class SegmentationInference:
  """Frozen SegUnet of one SADM checkpoint: mean_t σ(S(x − x̂_t, x)) over the ensemble."""

  def __init__(self, module: SegUnet, variables: dict):
    self.module = module
    self.variables = jax.device_put({"params": variables["params"]})
    self.fingerprint = variables_fingerprint(self.variables)
    self.traces = 0
    self._fn = jax.jit(self._probability)

  @property
  def program(self):
    """The jitted function `probability` calls (to lower it for cost analysis): (variables,
    image [D, H, W] float32, per_t [K, D, H, W] or None) -> mean probability [D, H, W]."""
    return self._fn

  @property
  def needs_reconstruction(self) -> bool:
    return bool(self.module.use_residual)

  def _probability(self, variables: dict, image: jax.Array, per_t: jax.Array | None) -> jax.Array:
    # image: [D, H, W]; per_t: [K, D, H, W] or None -> mean probability [D, H, W] float32
    self.traces += 1
    x = image[..., None].astype(jnp.float32)

    def prob(recon):
      out = self.module.apply(variables, x, recon)
      logits = out[0] if isinstance(out, tuple) else out
      return jax.nn.sigmoid(logits.astype(jnp.float32))[..., 0]

    if per_t is None:
      return prob(None)
    return jax.lax.map(lambda r: prob(r[..., None]), per_t).mean(axis=0)

  def probability(self, image: np.ndarray, recon: Reconstruction | None) -> jax.Array:
    """image [D, H, W] and the ensemble reconstruction -> mean probability [D, H, W] (device)."""
    if self.needs_reconstruction and recon is None:
      raise ValueError("this SegUnet uses the residual branch and needs the cDDPM reconstruction")
    per_t = recon.per_t if self.needs_reconstruction else None
    return self._fn(self.variables, jnp.asarray(image, jnp.float32), per_t)


def infer_volume(image: np.ndarray, index: int, cddpm: CDDPMInference | None,
                 segnet: SegmentationInference | None = None) -> VolumeInference:
  """One volume through the cDDPM (and the SegUnet if given).

  Args:
    image: preprocessed volume, slice-major as cached. [D, H, W]
    index: the volume's noise index (`volume_index(name)`).
    cddpm: the reconstruction model, or None for an input-only SegUnet.
    segnet: the SegUnet, or None for cDDPM-only inference.
  Returns:
    VolumeInference with recon and seg_prob as [H, W, D] float32 (None where not computed).
  """
  recon = cddpm.reconstruct(image, index) if cddpm is not None else None
  seg = segnet.probability(image, recon) if segnet is not None else None
  return VolumeInference(None if recon is None else _slice_major_to_hwd(recon.mean),
                         None if seg is None else _slice_major_to_hwd(seg))


# ----------------------------------------------------------------------------- loading checkpoints


def cddpm_inference(model_config: ml_collections.ConfigDict, variables: dict,
                    eval_config: ml_collections.ConfigDict,
                    fingerprint: str | None = None) -> CDDPMInference:
  """CDDPMInference with the evaluation's ensemble, noise sharing, dtype (Q33) and seed."""
  return CDDPMInference(model_config, variables, NoiseSpec.from_configs(model_config, eval_config),
                        dtype=eval_config.evaluate.dtype, seed=eval_config.seed,
                        fingerprint=fingerprint)


def cddpm_variables(run) -> dict:
  """{'params', 'batch_stats'} of an opened cDDPM `Run` (its model state is the BN statistics)."""
  return {"params": run.variables["params"], "batch_stats": run.variables["model_state"]}


def load_cddpm(workdir: str, opened=()):
  """The opened stage-I run (`train.runs.open_run`, best checkpoint): config, meta, weights.

  opened: runs already open; the same checkpoint among them is returned instead of read again.
  """
  from sadm_jax.train.runs import open_run
  return open_run(workdir, expect="cddpm", opened=opened)


@dataclasses.dataclass
class SadmCheckpoint:
  """A stage-II run as evaluation needs it (host arrays).

  run: the opened run (`open_run`: saved config, metadata, `run.cddpm`); config: its saved config;
  segnet: SegUnet variables {'params'}; cddpm_config/cddpm: the config and {'params',
  'batch_stats'} of the cDDPM the run references (with the run's drifted BatchNorm statistics when
  it was trained with `sadm.frozen_train_mode`, Q6), None when the SegUnet ignores the residual.
  """
  run: object
  config: ml_collections.ConfigDict
  segnet: dict
  cddpm_config: ml_collections.ConfigDict | None
  cddpm: dict | None

  @property
  def uses_residual(self) -> bool:
    return self.cddpm is not None


def load_sadm(workdir: str, opened=()) -> SadmCheckpoint:
  """Opens a SADM workdir's best checkpoint and the cDDPM it references (`open_run`), once.

  opened: runs already open (e.g. the evaluated cDDPM); the referenced cDDPM is taken from them
  when it is the same checkpoint.
  """
  from sadm_jax.train.runs import open_run
  run = open_run(workdir, expect="sadm", opened=opened)
  segnet = {"params": run.variables["params"]}
  if not factory.uses_residual(run.config) or run.cddpm is None:
    return SadmCheckpoint(run, run.config, segnet, None, None)
  stats = run.variables["model_state"].get("cddpm_batch_stats",
                                           run.cddpm.variables["model_state"])
  cddpm = {"params": run.cddpm.variables["params"], "batch_stats": stats}
  return SadmCheckpoint(run, run.config, segnet, run.cddpm.config, cddpm)


def build_segnet(sadm_config: ml_collections.ConfigDict, dtype: str = "float32") -> SegUnet:
  """The SegUnet of a SADM run, as stage II builds it, computing in `dtype`."""
  return factory.build_segnet(sadm_config, dtype)


def segnet_inference(ckpt: SadmCheckpoint, eval_config: ml_collections.ConfigDict
                     ) -> SegmentationInference:
  return SegmentationInference(build_segnet(ckpt.config, eval_config.evaluate.dtype), ckpt.segnet)
