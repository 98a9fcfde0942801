"""Loading a predictor: the models, τ and training orientation that predict uses, from an evaluation, a model workdir or a trained run."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from sadm_jax import config as config_lib
from sadm_jax.data import orientation
from sadm_jax.evaluate import inference, outputs, planning, scoring
from sadm_jax.train.checkpoint import RunError
from sadm_jax.train.runs import (find_recorded, open_run, reference_candidates,
                                 variables_fingerprint)


@dataclasses.dataclass
class Predictor:
  """Models and settings loaded once; `predict` can then be called for many scans.

  settings_config: resolved config carrying evaluate.*, diffusion.ensemble_timesteps/shared_noise,
    seed and data.preprocess (the working grid) for this prediction.
  method: 'threshold' | 'cddpm' | 'sadm' | 'unet'; combination: `anomaly_map` combination.
  tau: the binarisation threshold (None: only the map is written); tau_source: where it came from.
  orientation: axis codes of the training data (scans are reoriented to it before preprocessing);
  orientation_source: where they came from.
  """
  settings_config: ml_collections.ConfigDict
  method: str
  combination: str
  source: str
  cddpm: inference.CDDPMInference | None = None
  segnet: inference.SegmentationInference | None = None
  intensity_median: float | None = None
  tau: float | None = None
  tau_source: str = ""
  orientation: str = orientation.DEFAULT
  orientation_source: str = ""

  _programs: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

  def program(self, mesh) -> scoring.VolumeProgram:
    """The evaluation's per-volume program (`scoring.VolumeProgram`) for this predictor's one run
    over `mesh`, built once per mesh and map settings: the maps predict writes are computed as
    the evaluation computed the maps its τ was tuned on."""
    settings = scoring.map_settings(self.settings_config)
    key = (mesh, tuple(sorted(settings.items())))
    if key not in self._programs:
      spec = [(self.method, self.combination, 0 if self.segnet is not None else None)]
      self._programs[key] = scoring.VolumeProgram(
          self.cddpm, [self.segnet] if self.segnet is not None else [], spec, settings, mesh,
          scoring.device_median())
    return self._programs[key]

  @property
  def labels(self) -> outputs.Labels:
    """What each prediction record says of this model (`outputs.finish`, maybe in a worker)."""
    return outputs.Labels(self.source, self.method, self.combination, self.tau, self.tau_source,
                          self.orientation, self.orientation_source)

  def identity(self) -> dict:
    """What this predictor's outputs depend on (method, τ, orientation, the weights'
    fingerprints, the map settings, seed, ensemble, the device kind and the JAX release), as
    JSON values: every process of a multi-process predict must hold the same (`predict._start`)."""
    c = self.settings_config
    device = jax.local_devices()[0]
    return json.loads(json.dumps({
        "method": self.method, "combination": self.combination, "threshold": self.tau,
        "threshold source": self.tau_source, "model orientation": self.orientation,
        "cDDPM weights": self.cddpm.fingerprint if self.cddpm is not None else None,
        "SegUnet weights": self.segnet.fingerprint if self.segnet is not None else None,
        "intensity median": self.intensity_median, "map settings": scoring.map_settings(c),
        "seed": int(c.seed), "dtype": str(c.evaluate.dtype),
        "timesteps": [int(t) for t in c.diffusion.ensemble_timesteps],
        "shared noise": bool(c.diffusion.shared_noise),
        "device kind": f"{device.platform} {device.device_kind}", "JAX": jax.__version__,
    }, sort_keys=True, default=str))

  def brain(self, mask_hwd: np.ndarray, name: str) -> np.ndarray:
    """The brain the evaluation scored (every method's M, `execute.Case.brain`): the mask
    [H, W, D] eroded by `evaluate.erode_mask`; ValueError naming `name` when that leaves nothing."""
    return scoring.eroded_brain(mask_hwd, int(self.settings_config.evaluate.erode_mask), name,
                                slice_major=False)

  def dispatch(self, volumes: Sequence[tuple[np.ndarray, np.ndarray, int]], mesh) -> Pending:
    """Starts the maps of up to `mesh.size` volumes, one per device (asynchronous: `collect`).

    volumes: (preprocessed image [H, W, D], brain M [H, W, D] (`brain`), noise index) each, all
    of one shape. The threshold baseline needs no device (mesh may be None): its maps are
    computed here, on the host.
    """
    if self.method == "threshold":
      return Pending(None, [scoring.anomaly_for("threshold", "", x, brain, None, {},
                                                self.intensity_median)
                            for x, brain, _ in volumes], [])
    program = self.program(mesh)
    dhw = lambda a: np.transpose(a, (2, 0, 1))  # slice-major [D, H, W], as the cache stores it
    masks = [dhw(np.asarray(b) > 0) for _, b, _ in volumes]
    out = program.dispatch([dhw(x) for x, _, _ in volumes], masks,  # padded by the program
                           [i for _, _, i in volumes])
    # only what the maps are made of comes back to the host (not the reconstructions)
    needed = ("maps",) if program.on_device_median else ("residual", "prob")
    return Pending(program, {k: v for k, v in out.items() if k in needed}, masks)

  @staticmethod
  def collect(pending: Pending) -> list[np.ndarray]:
    """The anomaly maps [H, W, D] (working grid) of a `dispatch`, in its volumes' order."""
    if pending.program is None:
      return pending.outputs
    program, host = pending.program, jax.device_get(pending.outputs)
    rid = program.runs[0][0]
    return [np.transpose(program.maps(host, b, m)[rid], (1, 2, 0))
            for b, m in enumerate(pending.masks)]

  def infer(self, volumes: Sequence[tuple[np.ndarray, np.ndarray, int]], mesh) -> list[np.ndarray]:
    """`collect(dispatch(volumes, mesh))`: the maps [H, W, D] of up to `mesh.size` volumes."""
    return self.collect(self.dispatch(volumes, mesh))


@dataclasses.dataclass
class Pending:
  """Maps started by `Predictor.dispatch`: the program (None: computed on the host), its device
  outputs (or the host maps) and the volumes' brain masks [D, H, W]."""
  program: scoring.VolumeProgram | None
  outputs: Any
  masks: list


# ----------------------------------------------------------------------------- loading


def _read_json(path: str) -> dict:
  """An evaluation workdir's record; RunError naming it when it is missing or damaged."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    raise RunError(f"{path}: unreadable ({why}); run the evaluate stage in that workdir again") \
        from None


def _trained_orientation(run) -> tuple[str, str]:
  """(axis codes of an opened run's training data, where from); 'RAS' (logged) when the run
  (None: the threshold baseline) records none."""
  codes = (((run.meta if run is not None else None) or {}).get("run") or {}).get("orientation") or ""
  if codes:
    return orientation.check_codes(codes), f"training data of {run.workdir}"
  why = (f"{run.workdir} records no training-data orientation (trained before it was recorded)"
         if run is not None else "the threshold baseline has no trained model")
  logging.warning("predict: %s; assuming %s", why, orientation.DEFAULT)
  return orientation.DEFAULT, f"assumed ({why})"


def _select_run(runs: list[dict], wanted: str, where: str) -> dict:
  if wanted:
    for r in runs:
      if r["id"] == wanted:
        return r
    raise ValueError(f"{where}: no evaluation run {wanted!r}; available: "
                     f"{', '.join(r['id'] for r in runs)}")
  for method in ("sadm", "unet", "cddpm", "threshold"):
    for r in runs:
      if r["method"] == method:
        return r
  raise ValueError(f"{where}: no evaluated runs")


def _stored_tau(run: dict, wanted_set: str, order: list[str], where: str
                ) -> tuple[float | None, str]:
  """τ of `wanted_set`, else of the run's own pathology, else of the first evaluated data set."""
  taus = run.get("tau", {})
  own = planning.DRAEM_SET if run["train_anomalies"] == "draem" else run["train_anomalies"]
  if wanted_set:
    if wanted_set not in taus:
      raise ValueError(f"{where}: run {run['id']} has no τ for data set {wanted_set!r}; "
                       f"available: {', '.join(taus) or 'none'}")
    key = wanted_set
  elif own in taus:
    key = own
  elif taus:
    key = next((s for s in order if s in taus), next(iter(taus)))
  else:
    return None, ""
  return float(taus[key]), f"{key}_val ({run['id']})"


def _sadm_keys(path: str):
  """(opened SADM run, {recorded key: its weights' fingerprint}) of a SADM / input-only UNet run."""
  ckpt = inference.load_sadm(path)
  keys = {"segnet_key": variables_fingerprint(ckpt.segnet)}
  if ckpt.uses_residual:
    keys["cddpm_key"] = variables_fingerprint(ckpt.cddpm)
  return ckpt, keys


def _cddpm_keys(path: str):
  run = inference.load_cddpm(path)
  return run, {"cddpm_key": variables_fingerprint(inference.cddpm_variables(run))}


def _evaluated_model(run: dict, field: str, checkpoint_dir: str, load):
  """The model an evaluation tuned `run`'s τ for: the first place it may be (`run[field]`'s path
  relative to the evaluation workdir, then as recorded: `reference_candidates`) that holds the
  weights the evaluation recorded (`cddpm_key`, `segnet_key`; an older models.json has no
  `segnet_key`, so only its `cddpm_key` is checked). Refuses, naming the run, when none is there
  or the weights changed since."""
  ref = {"workdir": run[field], "relative": run.get("relative", {}).get(field, "")}
  found, changed, problems = find_recorded(
      reference_candidates(os.path.abspath(checkpoint_dir), ref), load,
      lambda loaded: [k for k, v in loaded[1].items() if run.get(k) and run[k] != v])
  if found is not None:
    return found[0]
  where = f"{checkpoint_dir}: run {run['id']} of this evaluation"
  if changed is not None:
    path, (_, keys), differ = changed
    used = ", ".join(f"{k} {run[k]}" for k in ("segnet_key", "cddpm_key") if run.get(k))
    raise RunError(f"{where} changed since it was evaluated ({path}: "
                   f"{', '.join(f'{k} {keys[k]}' for k in differ)}; the evaluation used {used}): "
                   "evaluate it again, or predict from its workdir with predict.threshold")
  raise RunError(f"{where} is gone or unusable ({'; '.join(problems)})")


def _evaluation_config(path: str) -> ml_collections.ConfigDict:
  """The config an evaluation was given (eval/config.json), its faithful placeholders resolved."""
  try:
    return config_lib.resolve(ml_collections.ConfigDict(_read_json(path)))
  except (KeyError, AttributeError, TypeError) as e:
    raise RunError(f"{path}: not an evaluation's config (no {e}); run the evaluate stage in that "
                   "workdir again") from None


def _from_evaluation(checkpoint_dir: str, config: ml_collections.ConfigDict) -> Predictor:
  eval_dir = os.path.join(checkpoint_dir, "eval")
  settings = _evaluation_config(os.path.join(eval_dir, "config.json"))
  saved = _read_json(os.path.join(eval_dir, "models.json"))
  runs = saved["runs"]
  run = _select_run(runs, config.predict.run, checkpoint_dir)
  pred = Predictor(settings, run["method"], run["combination"], f"evaluation {checkpoint_dir}")
  model_run = None  # the opened run whose training data set the orientation
  if run["sadm_workdir"]:
    ckpt = _evaluated_model(run, "sadm_workdir", checkpoint_dir, _sadm_keys)
    model_run = ckpt.run
    pred.segnet = inference.segnet_inference(ckpt, settings)
    if ckpt.uses_residual:
      pred.cddpm = inference.cddpm_inference(ckpt.cddpm_config, ckpt.cddpm, settings)
  elif run["method"] == "threshold":
    pred.intensity_median = float(run["intensity_median"])
  else:
    model_run = _evaluated_model(run, "cddpm_workdir", checkpoint_dir, _cddpm_keys)
    pred.cddpm = inference.cddpm_inference(model_run.config, inference.cddpm_variables(model_run),
                                           settings)
  pred.tau, pred.tau_source = _stored_tau(run, config.predict.threshold_set,
                                          saved.get("test_sets", []), checkpoint_dir)
  pred.orientation, pred.orientation_source = _trained_orientation(model_run)
  logging.info("predict: run %s of %s", run["id"], checkpoint_dir)
  return pred


def _with_grid(config, model_config) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  c.data.preprocess = ml_collections.ConfigDict(model_config.data.preprocess.to_dict())
  return c


def _from_model_workdir(checkpoint_dir: str, config: ml_collections.ConfigDict) -> Predictor:
  if not os.path.isdir(os.path.join(checkpoint_dir, "best")):
    raise RunError(f"{checkpoint_dir}: neither an evaluation workdir (eval/models.json) nor a "
                   "training workdir with a best checkpoint (best/)")
  for key in ("run", "threshold_set"):  # they choose among an evaluation's runs and τs only
    if config.predict[key]:
      raise ValueError(f"--config.predict.{key}={config.predict[key]} chooses among an evaluation "
                       f"workdir's runs and τs; {checkpoint_dir} is a training workdir (its own "
                       "model, τ from predict.threshold): unset it or give the evaluation's workdir")
  run = open_run(checkpoint_dir)  # any task; read once, reused below
  pred = _from_trained_run(run, config)
  pred.orientation, pred.orientation_source = _trained_orientation(run)
  return pred


def _from_trained_run(run, config: ml_collections.ConfigDict) -> Predictor:
  """A Predictor of an opened SADM / input-only UNet or cDDPM run (`open_run`)."""
  checkpoint_dir, task = run.workdir, run.task
  if task == "sadm":
    sadm = inference.load_sadm(checkpoint_dir, opened=(run,))
    settings = _with_grid(config, sadm.config)
    pred = Predictor(settings, "sadm" if sadm.uses_residual else "unet",
                     str(config.evaluate.combination) if sadm.uses_residual else "segmentation",
                     f"SADM run {checkpoint_dir}",
                     segnet=inference.segnet_inference(sadm, settings))
    if sadm.uses_residual:
      pred.cddpm = inference.cddpm_inference(sadm.cddpm_config, sadm.cddpm, settings)
    return pred
  if task == "cddpm":
    settings = _with_grid(config, run.config)
    return Predictor(settings, "cddpm", "residual", f"cDDPM run {checkpoint_dir}",
                     cddpm=inference.cddpm_inference(run.config, inference.cddpm_variables(run),
                                                     settings))
  raise ValueError(f"{checkpoint_dir}: a {task!r} run cannot predict anomalies (need an "
                   "evaluation, SADM or cDDPM workdir)")


def load_predictor(checkpoint_dir: str, config: ml_collections.ConfigDict) -> Predictor:
  """Loads an evaluation, SADM or cDDPM workdir's models once; `predict.threshold` overrides τ."""
  config = config_lib.resolve(config)
  checkpoint_dir = os.path.abspath(checkpoint_dir)
  if os.path.isfile(os.path.join(checkpoint_dir, "eval", "models.json")):
    pred = _from_evaluation(checkpoint_dir, config)
  else:
    pred = _from_model_workdir(checkpoint_dir, config)
  if config.predict.threshold is not None:
    pred.tau, pred.tau_source = float(config.predict.threshold), "predict.threshold"
  return pred
