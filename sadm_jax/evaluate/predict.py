"""The `predict` stage: anomaly map and mask of one new scan, written back on the scan's grid."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re

import ml_collections
import nibabel as nib
import numpy as np
from scipy import ndimage

from sadm_jax import config as config_lib
from sadm_jax.data import nifti
from sadm_jax.data.errors import DataError
from sadm_jax.data.preprocess import affine_spacing, preprocess_volume
from sadm_jax.evaluate import inference, metrics
from sadm_jax.evaluate import run as run_lib
from sadm_jax.utils import io

MAX_SPACING_MM = 3.0  # coarser scans cannot reach the 2 mm working grid without inventing detail
AFFINE_ATOL = 1e-3


@dataclasses.dataclass
class Predictor:
  """Models and settings loaded once; `predict` can then be called for many scans.

  settings_config: resolved config carrying evaluate.*, diffusion.ensemble_timesteps/shared_noise,
    seed and data.preprocess (the working grid) for this prediction.
  method: 'threshold' | 'cddpm' | 'sadm' | 'unet'; combination: `anomaly_map` combination.
  tau: the binarisation threshold (None: only the map is written); tau_source: where it came from.
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

  def infer(self, image_hwd: np.ndarray, mask_hwd: np.ndarray, index: int
            ) -> tuple[np.ndarray, inference.VolumeInference | None]:
    """(anomaly map [H, W, D], inference) on the working grid."""
    inf = None
    if self.method != "threshold":
      image = np.transpose(image_hwd, (2, 0, 1))  # slice-major, as the cache stores it
      inf = inference.infer_volume(image, index, self.cddpm, self.segnet)
    a = run_lib.anomaly_for(self.method, self.combination, image_hwd, mask_hwd, inf,
                            run_lib.map_settings(self.settings_config), self.intensity_median)
    return a, inf


# ----------------------------------------------------------------------------- loading


def _read_json(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


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
  own = run_lib.DRAEM_SET if run["train_anomalies"] == "draem" else run["train_anomalies"]
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


def _from_evaluation(checkpoint_dir: str, config: ml_collections.ConfigDict) -> Predictor:
  eval_dir = os.path.join(checkpoint_dir, "eval")
  settings = ml_collections.ConfigDict(_read_json(os.path.join(eval_dir, "config.json")))
  saved = _read_json(os.path.join(eval_dir, "models.json"))
  runs = saved["runs"]
  run = _select_run(runs, config.predict.get("run", ""), checkpoint_dir)
  pred = Predictor(settings, run["method"], run["combination"], f"evaluation {checkpoint_dir}")
  if run["method"] == "threshold":
    pred.intensity_median = float(run["intensity_median"])
  elif run["sadm_workdir"]:
    ckpt = inference.load_sadm(run["sadm_workdir"])
    pred.segnet = inference.segnet_inference(ckpt, settings)
    if ckpt.uses_residual:
      pred.cddpm = inference.cddpm_inference(ckpt.cddpm_config, ckpt.cddpm, settings)
  else:
    cfg, variables = inference.load_cddpm(run["cddpm_workdir"])
    pred.cddpm = inference.cddpm_inference(cfg, variables, settings)
  pred.tau, pred.tau_source = _stored_tau(run, config.predict.get("threshold_set", ""),
                                          saved.get("test_sets", []), checkpoint_dir)
  logging.info("predict: run %s of %s", run["id"], checkpoint_dir)
  return pred


def _with_grid(config, model_config) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  c.data.preprocess = ml_collections.ConfigDict(model_config.data.preprocess.to_dict())
  return c


def _from_model_workdir(checkpoint_dir: str, config: ml_collections.ConfigDict) -> Predictor:
  if not os.path.isdir(os.path.join(checkpoint_dir, "best")):
    raise FileNotFoundError(f"{checkpoint_dir}: neither an evaluation workdir (eval/models.json) "
                            "nor a training workdir with a best checkpoint (best/)")
  from sadm_jax.train.checkpoint import Checkpointer
  ckpt = Checkpointer(checkpoint_dir, async_save=False)
  try:
    task = ckpt.best_meta().get("task")
  finally:
    ckpt.close()
  if task == "sadm":
    sadm = inference.load_sadm(checkpoint_dir)
    settings = _with_grid(config, sadm.config)
    pred = Predictor(settings, "sadm" if sadm.uses_residual else "unet",
                     str(config.evaluate.combination) if sadm.uses_residual else "segmentation",
                     f"SADM run {checkpoint_dir}",
                     segnet=inference.segnet_inference(sadm, settings))
    if sadm.uses_residual:
      pred.cddpm = inference.cddpm_inference(sadm.cddpm_config, sadm.cddpm, settings)
    return pred
  if task == "cddpm":
    cfg, variables = inference.load_cddpm(checkpoint_dir)
    settings = _with_grid(config, cfg)
    return Predictor(settings, "cddpm", "residual", f"cDDPM run {checkpoint_dir}",
                     cddpm=inference.cddpm_inference(cfg, variables, settings))
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


# ----------------------------------------------------------------------------- scans


def _check_header(path: str) -> None:
  """DataError when the header's qform and sform disagree about the voxel grid."""
  hdr = nib.load(path).header
  qform, qcode = hdr.get_qform(coded=True)
  sform, scode = hdr.get_sform(coded=True)
  if qcode and scode and not np.allclose(qform, sform, atol=AFFINE_ATOL):
    raise DataError(f"{path}: inconsistent header: qform spacing "
                    f"{tuple(round(s, 4) for s in affine_spacing(qform))} and sform spacing "
                    f"{tuple(round(s, 4) for s in affine_spacing(sform))} describe different grids")


def load_scan(image_path: str, mask_path: str | None = None
              ) -> tuple[nifti.Volume, np.ndarray]:
  """(image volume, brain mask [H, W, D] uint8) with every check that names the offending file."""
  img = nifti.load_volume(image_path)
  _check_header(image_path)
  spacing = affine_spacing(img.affine)
  if not all(np.isfinite(spacing)) or min(spacing) <= 0:
    raise DataError(f"{image_path}: invalid voxel spacing {spacing}")
  if max(spacing) > MAX_SPACING_MM:
    shown = tuple(round(s, 3) for s in spacing)
    raise DataError(f"{image_path}: voxel spacing {shown} mm is coarser "
                    f"than {MAX_SPACING_MM} mm; the models work on 1 mm scans (2 mm after the ×2 "
                    "downsampling) and cannot resample such a scan reliably")
  if not mask_path:
    return img, (img.data > 0).astype(np.uint8)
  mask = nifti.load_volume(mask_path)
  _check_header(mask_path)
  if mask.data.shape != img.data.shape:
    raise DataError(f"{mask_path}: mask shape {mask.data.shape} differs from the image grid "
                    f"{img.data.shape} ({image_path})")
  if not np.allclose(mask.affine, img.affine, atol=AFFINE_ATOL):
    mine, theirs = (tuple(round(s, 4) for s in v.spacing) for v in (mask, img))
    raise DataError(f"{mask_path}: mask affine (spacing {mine}) differs from the image affine "
                    f"(spacing {theirs}, {image_path}): not the same grid")
  if not np.any(mask.data > 0):
    raise DataError(f"{mask_path}: brain mask is empty")
  return img, (mask.data > 0).astype(np.uint8)


def to_input_grid(volume: np.ndarray, work_affine: np.ndarray, input_affine: np.ndarray,
                  input_shape, order: int) -> np.ndarray:
  """Resamples a working-grid volume [h, w, d] onto the input grid `input_shape` via the affines.

  Input voxel v sits at world point A_in·v, i.e. at working-grid index A_work⁻¹·A_in·v; `order` 1
  (trilinear) for maps, 0 (nearest) for masks. Points outside the working grid (cropped away) get 0.
  """
  m = np.linalg.solve(np.asarray(work_affine, np.float64), np.asarray(input_affine, np.float64))
  return ndimage.affine_transform(np.asarray(volume, np.float32 if order else volume.dtype),
                                  m[:3, :3], offset=m[:3, 3], output_shape=tuple(input_shape),
                                  order=order, mode="constant", cval=0.0, prefilter=False)


def _save_like(path: str, data: np.ndarray, reference: str, dtype) -> None:
  ref = nib.load(reference)
  hdr = ref.header.copy()
  hdr.set_data_dtype(dtype)
  hdr.set_slope_inter(1.0, 0.0)
  img = nib.Nifti1Image(np.asarray(data, dtype), ref.affine, header=hdr)
  with io.atomic_path(path, suffix=".nii.gz") as tmp:
    nib.save(img, tmp)


def _stem(path: str) -> str:
  return re.sub(r"\.nii(\.gz)?$", "", os.path.basename(path))


def predict(pred: Predictor, image_path: str, mask_path: str | None, out_dir: str) -> dict:
  """Preprocesses one scan, infers, thresholds and writes the map and mask on the scan's grid.

  Writes `<stem>_anomaly_map.nii.gz` (float32), `<stem>_anomaly_mask.nii.gz` (uint8, only with a
  threshold) and `<stem>_prediction.json` into `out_dir`; returns the JSON's content.
  """
  img, mask = load_scan(image_path, mask_path)
  cfg = config_lib.preprocess_config(pred.settings_config)
  work = preprocess_volume(img.data, mask, None, img.affine, cfg, source=image_path)
  a, _ = pred.infer(work.image, work.mask, inference.volume_index(os.path.basename(image_path)))
  brain = mask > 0
  a_in = to_input_grid(a, work.affine, img.affine, img.data.shape, order=1) * brain
  stem = _stem(image_path)
  out = {"input": os.path.abspath(image_path), "mask": os.path.abspath(mask_path) if mask_path else
         "image > 0", "model": pred.source, "method": pred.method, "combination": pred.combination,
         "threshold": pred.tau, "threshold_source": pred.tau_source,
         "volume_score": metrics.volume_score(a, work.mask), "working_grid": list(a.shape),
         "input_grid": list(img.data.shape), "input_spacing_mm": list(affine_spacing(img.affine)),
         "resampled_to_1mm": bool(work.resampled_to_1mm),
         "anomaly_map": os.path.join(out_dir, f"{stem}_anomaly_map.nii.gz")}
  _save_like(out["anomaly_map"], a_in, image_path, np.float32)
  if pred.tau is not None:
    p_work = ((a > np.float32(pred.tau)) & (work.mask > 0)).astype(np.uint8)
    p_in = to_input_grid(p_work, work.affine, img.affine, img.data.shape, order=0) * brain
    out["anomaly_mask"] = os.path.join(out_dir, f"{stem}_anomaly_mask.nii.gz")
    out["flagged_voxels_input_grid"] = int(p_in.sum())
    out["flagged_voxels_working_grid"] = int(p_work.sum())
    _save_like(out["anomaly_mask"], p_in, image_path, np.uint8)
  else:
    logging.warning("no threshold (evaluation τ or predict.threshold): writing the map only")
  io.write_json(os.path.join(out_dir, f"{stem}_prediction.json"), out)
  return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`stage=predict`: one scan through the models of `predict.checkpoint_dir`."""
  p = config.predict
  if not p.checkpoint_dir or not p.input:
    raise ValueError("set --config.predict.checkpoint_dir=<evaluation|SADM|cDDPM workdir> and "
                     "--config.predict.input=<scan.nii.gz>")
  pred = load_predictor(p.checkpoint_dir, config)
  out = predict(pred, p.input, p.mask or None, p.output or workdir)
  tau = ("none" if out["threshold"] is None else
         f"{out['threshold']:.6g} ({out['threshold_source']})")
  print(f"predict: {out['input']} -> {out['anomaly_map']}"
        + (f", {out['anomaly_mask']} ({out['flagged_voxels_input_grid']} voxels flagged)"
           if "anomaly_mask" in out else "") + f"; method {out['method']}, τ {tau}, "
        f"volume score {out['volume_score']:.4g}")
  return out
