"""The `predict` stage: anomaly maps and masks of new scans, written on each scan's own grid."""

from __future__ import annotations

import contextlib
import logging
import os

import jax
import ml_collections
import nibabel as nib
import numpy as np

from sadm_jax import config as config_lib, distributed
from sadm_jax.data import nifti, orientation
from sadm_jax.data.errors import DataError
from sadm_jax.data.preprocess import preprocess_volume
from sadm_jax.data.resample import affine_spacing
from sadm_jax.evaluate import inference, metrics
from sadm_jax.evaluate.predictor import Predictor, load_predictor
from sadm_jax.evaluate.scans import (OUTPUT_SUFFIXES, list_scans, load_scan, scan_stem,
                                     to_input_grid)
from sadm_jax.utils import io


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
  return sorted((r for rows in distributed.allgather_json(records) for r in rows),
                key=lambda r: r["index"])


def _start(p: ml_collections.ConfigDict, config: ml_collections.ConfigDict):
  """(scans, batch, predictor) of this process; with several processes, every process first
  learns whether the others started too and listed the same scans, so that a process that could
  not start (an unreadable input or checkpoint on its host) stops them all instead of leaving
  them waiting for its records forever, and no scan is predicted twice or never."""
  with distributed.together("predict's start"):
    scans, batch = list_scans(p.input, p.mask, p.mask_suffix)
    predictor = load_predictor(p.checkpoint_dir, config)
  every = distributed.allgather_json([s.name for s in scans])
  mine = every[jax.process_index()]
  for k, other in enumerate(every):
    if other != mine:
      raise DataError(
          f"predict.input {p.input!r} lists {len(other)} scan(s) on process {k} but "
          f"{len(mine)} (or others) on process {jax.process_index()}: is it on a file "
          "system every host sees the same, and unchanged while predict starts?")
  return scans, batch, predictor


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

  Scans are split over processes by index (process p predicts scans p, p + P, ...), once every
  process has started and listed the same scans (otherwise all stop: `_start`); a scan that
  fails is reported by name and the others go on. Process 0 writes `predict_summary.json` (every
  scan's status) into the output folder and prints the table. Returns the summary; raises
  PredictFailed (a DataError: exit code 2 from the command line) when any scan failed.
  """
  p = config.predict
  if not p.checkpoint_dir or not p.input:
    raise ValueError("set --config.predict.checkpoint_dir=<evaluation|SADM|cDDPM workdir> and "
                     "--config.predict.input=<scan.nii.gz | a,b,... | folder | scans.csv>")
  out_root = os.path.abspath(p.output or workdir)
  scans, batch, pred = _start(p, config)
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
  if nproc > 1:  # the summary is process 0's: the others' outputs must be where it says they are
    unseen = distributed.allgather_json(
        [r["index"] for r in records
         if r["status"] == "ok" and not os.path.isfile(r["prediction"]["anomaly_map"])]
        if pid == 0 else None)[0]
    for r in (r for r in records if r["index"] in unseen):
      r.update(status="failed", output_dir="", message=(
          f"written by process {r['process']} but not found by process 0: is "
          f"{out_root} a folder every host shares?"))
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
