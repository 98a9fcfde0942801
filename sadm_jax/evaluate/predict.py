"""The `predict` stage: anomaly maps and masks of new scans, written on each scan's own grid."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os

import jax
import ml_collections
import nibabel as nib
import numpy as np

from sadm_jax import config as config_lib
from sadm_jax.data import nifti, orientation
from sadm_jax.data.errors import DataError
from sadm_jax.data.preprocess import preprocess_volume
from sadm_jax.data.resample import affine_spacing
from sadm_jax.evaluate import inference, metrics
from sadm_jax.evaluate import planning, scoring
from sadm_jax.evaluate.scans import (OUTPUT_SUFFIXES, list_scans, load_scan, scan_stem,
                                     to_input_grid)
from sadm_jax.train.checkpoint import RunError
from sadm_jax.train.runs import (find_recorded, open_run, reference_candidates,
                                 variables_fingerprint)
from sadm_jax.utils import io


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

  def infer(self, image_hwd: np.ndarray, mask_hwd: np.ndarray, index: int
            ) -> tuple[np.ndarray, inference.VolumeInference | None]:
    """(anomaly map [H, W, D], inference) on the working grid."""
    outputs = None
    if self.method != "threshold":
      image = np.transpose(image_hwd, (2, 0, 1))  # slice-major, as the cache stores it
      outputs = inference.infer_volume(image, index, self.cddpm, self.segnet)
    a = scoring.anomaly_for(self.method, self.combination, image_hwd, mask_hwd, outputs,
                            scoring.map_settings(self.settings_config), self.intensity_median)
    return a, outputs


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


def _from_evaluation(checkpoint_dir: str, config: ml_collections.ConfigDict) -> Predictor:
  eval_dir = os.path.join(checkpoint_dir, "eval")
  settings = ml_collections.ConfigDict(_read_json(os.path.join(eval_dir, "config.json")))
  saved = _read_json(os.path.join(eval_dir, "models.json"))
  runs = saved["runs"]
  run = _select_run(runs, config.predict.get("run", ""), checkpoint_dir)
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
  pred.tau, pred.tau_source = _stored_tau(run, config.predict.get("threshold_set", ""),
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


# ----------------------------------------------------------------------------- one scan


def predict(pred: Predictor, image_path: str, mask_path: str | None, out_dir: str) -> dict:
  """Preprocesses one scan, infers, thresholds and writes the map and mask on the scan's grid.

  The scan (and mask) are first reoriented to the training data's axis order (`pred.orientation`,
  an exact flip/permutation), so the models see it as they saw their training data; the outputs
  are carried back to the scan's own voxel order, shape and affine. Writes
  `<stem>_anomaly_map.nii.gz` (float32), `<stem>_anomaly_mask.nii.gz` (uint8, only with a
  threshold) and `<stem>_prediction.json` into `out_dir`; returns the JSON's content.
  """
  img, mask = load_scan(image_path, mask_path)
  reo = orientation.reorientation(img.affine, img.data.shape, pred.orientation)
  image_t, brain_t = reo.apply(img.data), reo.apply(mask) > 0  # [H', W', D'] training order
  cfg = config_lib.preprocess_config(pred.settings_config)
  work = preprocess_volume(image_t, brain_t.astype(np.uint8), None, reo.affine, cfg,
                           source=image_path)
  a, _ = pred.infer(work.image, work.mask, inference.volume_index(os.path.basename(image_path)))

  def back(volume: np.ndarray, order: int) -> np.ndarray:
    """Working grid → the scan's own voxel order [H, W, D], zero outside the brain."""
    return reo.undo(to_input_grid(volume, work.affine, reo.affine, image_t.shape, order) * brain_t)

  a_in = back(a, 1)
  stem = scan_stem(image_path)
  out = {"input": os.path.abspath(image_path), "mask": os.path.abspath(mask_path) if mask_path else
         "image > 0", "model": pred.source, "method": pred.method, "combination": pred.combination,
         "threshold": pred.tau, "threshold_source": pred.tau_source,
         "input_orientation": reo.source, "model_orientation": pred.orientation,
         "model_orientation_source": pred.orientation_source,
         "volume_score": metrics.volume_score(a, work.mask), "working_grid": list(a.shape),
         "input_grid": list(img.data.shape), "input_spacing_mm": list(affine_spacing(img.affine)),
         "resampled_to_1mm": bool(work.resampled_to_1mm),
         "anomaly_map": os.path.join(out_dir, f"{stem}{OUTPUT_SUFFIXES[0]}.nii.gz")}
  mask_out = os.path.join(out_dir, f"{stem}{OUTPUT_SUFFIXES[1]}.nii.gz")
  p_in = None
  if pred.tau is not None:
    p_work = ((a > np.float32(pred.tau)) & (work.mask > 0)).astype(np.uint8)
    p_in = back(p_work, 0)
    out.update(anomaly_mask=mask_out, flagged_voxels_input_grid=int(p_in.sum()),
               flagged_voxels_working_grid=int(p_work.sum()))
  else:
    logging.warning("no threshold (evaluation τ or predict.threshold): writing the map only")
  _write_outputs(out, a_in, p_in, mask_out, os.path.join(out_dir, f"{stem}_prediction.json"),
                 nib.load(image_path))  # the scan's own header and affine: the maps sit on its grid
  return out


def _write_outputs(out: dict, a_in: np.ndarray, p_in: np.ndarray | None, mask_out: str,
                   record: str, ref: nib.Nifti1Image) -> None:
  """Writes one scan's map, mask (without τ: removes an earlier run's) and record, each whole; a
  failure after the first write removes all three (no mix of this run's and an earlier run's)."""
  started = False
  try:
    nifti.save_volume(out["anomaly_map"], a_in, ref.affine, header=ref.header, dtype=np.float32)
    started = True
    if p_in is not None:
      nifti.save_volume(mask_out, p_in, ref.affine, header=ref.header, dtype=np.uint8)
    elif os.path.lexists(mask_out):
      os.remove(mask_out)  # an earlier run's, with τ: not this map's
    io.write_json(record, out)
  except BaseException:
    if started:
      for path in (out["anomaly_map"], mask_out, record):
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
    raise


# ----------------------------------------------------------------------------- many scans


class PredictFailed(DataError):
  """Some scans failed (one line naming them); `summary` holds every scan's status."""

  def __init__(self, message: str, summary: dict):
    super().__init__(message)
    self.summary = summary


def _one_line(e: Exception) -> str:
  text = " ".join(str(e).split())
  if not isinstance(e, DataError):
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
  return text[:400]


def _gather(records: list[dict]) -> list[dict]:
  """Every process's records (the union, ordered by scan index) on every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    data = np.frombuffer(json.dumps(records).encode("utf-8"), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64)))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    every = np.asarray(multihost_utils.process_allgather(padded))  # [processes, max size]
    records = [r for row, n in zip(every, sizes.reshape(-1))
               for r in json.loads(row[:int(n)].tobytes().decode("utf-8"))]
  return sorted(records, key=lambda r: r["index"])


def _table(records: list[dict]) -> str:
  rows = [("scan", "status", "message", "output dir")] + [
      (r["scan"], r["status"], r["message"], r["output_dir"] or "-") for r in records]
  widths = [min(max(len(r[i]) for r in rows), 80) for i in range(3)]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3]
                   for r in rows)


def _ok_message(out: dict) -> str:
  flagged = (f"{out['flagged_voxels_input_grid']} voxels flagged at τ {out['threshold']:.6g}"
             if "anomaly_mask" in out else "map only (no threshold)")
  turned = ("" if out["input_orientation"] == out["model_orientation"] else
            f", reoriented {out['input_orientation']}→{out['model_orientation']}")
  return f"volume score {out['volume_score']:.4g}, {flagged}{turned}"


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`stage=predict`: every scan of `predict.input` through the models of `predict.checkpoint_dir`.

  Scans are split over processes by index (process p predicts scans p, p + P, ...); a scan that
  fails is reported by name and the others go on. Process 0 writes `predict_summary.json` (every
  scan's status) into the output folder and prints the table. Returns the summary; raises
  PredictFailed (a DataError: exit code 2 from the command line) when any scan failed.
  """
  p = config.predict
  if not p.checkpoint_dir or not p.input:
    raise ValueError("set --config.predict.checkpoint_dir=<evaluation|SADM|cDDPM workdir> and "
                     "--config.predict.input=<scan.nii.gz | a,b,... | folder | scans.csv>")
  scans, batch = list_scans(p.input, p.mask, p.get("mask_suffix", "_mask"))
  out_root = os.path.abspath(p.output or workdir)
  pred = load_predictor(p.checkpoint_dir, config)
  pid, nproc = jax.process_index(), jax.process_count()
  records = []
  for i in range(pid, len(scans), nproc):
    s = scans[i]
    rec = {"index": i, "scan": s.name, "image": os.path.abspath(s.image),
           "mask": os.path.abspath(s.mask) if s.mask else "image > 0", "process": pid}
    out_dir = os.path.join(out_root, s.name) if batch else out_root
    try:
      out = predict(pred, s.image, s.mask, out_dir)
    except Exception as e:  # noqa: BLE001  (one bad scan must not stop the others)
      if not isinstance(e, (DataError, OSError)):  # a bug: with its traceback
        logging.exception("predict: %s failed", s.name)
      rec.update(status="failed", message=_one_line(e), output_dir="")
      logging.error("predict: %s failed: %s", s.name, rec["message"])
    else:
      rec.update(status="ok", message=_ok_message(out), output_dir=out_dir, prediction=out)
      logging.info("predict: %s -> %s", s.name, out["anomaly_map"])
    records.append(rec)
  records = _gather(records)
  failed = [r for r in records if r["status"] != "ok"]
  summary = {"model": pred.source, "method": pred.method, "threshold": pred.tau,
             "threshold_source": pred.tau_source, "model_orientation": pred.orientation,
             "model_orientation_source": pred.orientation_source, "num_scans": len(records),
             "num_ok": len(records) - len(failed), "num_failed": len(failed),
             "processes": nproc, "scans": records}
  path = os.path.join(out_root, "predict_summary.json")
  if pid == 0:
    io.write_json(path, summary)
    tau = "none" if pred.tau is None else f"{pred.tau:.6g} ({pred.tau_source})"
    print(f"predict: {len(records)} scan(s), method {pred.method}, τ {tau}, model orientation "
          f"{pred.orientation}\n{_table(records)}\nsummary: {path}")
  if failed:
    what = (f"{failed[0]['scan']} ({failed[0]['message']})" if len(failed) == 1 else
            ", ".join(r["scan"] for r in failed[:20]) + (", ..." if len(failed) > 20 else ""))
    raise PredictFailed(f"predict: {len(failed)} of {len(records)} scan(s) failed: {what}; "
                        f"every scan's status in {path}", summary)
  return summary
