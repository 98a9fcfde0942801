"""Predict's outputs of one scan: its map carried back to the scan's own grid, thresholded and written; JAX-free (worker processes run it)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from sadm_jax.data import nifti
from sadm_jax.data.resample import affine_spacing
from sadm_jax.evaluate import metrics, thresholds
from sadm_jax.evaluate.listing import OUTPUT_SUFFIXES, scan_stem
from sadm_jax.evaluate.scans import covered, to_input_grid
from sadm_jax.utils import io

if TYPE_CHECKING:
  from sadm_jax.evaluate.preparation import Prepared


@dataclasses.dataclass(frozen=True)
class Labels:
  """What a prediction record says of the model that made it (`Predictor.labels`)."""
  source: str
  method: str
  combination: str
  tau: float | None
  tau_source: str
  orientation: str
  orientation_source: str


def finish(labels: Labels, prep: Prepared, a: np.ndarray, out_dir: str,
           name: str | None = None) -> dict:
  """Thresholds one scan's map `a` [H, W, D] (working grid) at `labels.tau`, carries map and mask
  back to the scan's own voxel order, shape and affine, and writes `<name>_anomaly_map.nii.gz`
  (float32), `<name>_anomaly_mask.nii.gz` (uint8, only with a threshold) and
  `<name>_prediction.json` into `out_dir` (name: the scan's, `listing.Scan`; default its file's
  stem); returns the JSON's content."""
  image_path, mask_path, reo, work = prep.image_path, prep.mask_path, prep.reo, prep.work
  thresholds.check_finite(a, os.path.basename(image_path))  # NaN/Inf weights: no map written

  def back(volume: np.ndarray, order: int) -> np.ndarray:
    """Working grid → the scan's own voxel order [H, W, D], zero outside the brain."""
    return reo.undo(to_input_grid(volume, work.affine, reo.affine, prep.shape_t, order)
                    * prep.brain_t)

  a_in = back(a, 1)
  stem = name or scan_stem(image_path)
  # brain voxels the crop box leaves out (e.g. a 256-slice scan's top and bottom): their map is 0
  outside = int(np.count_nonzero(prep.brain_t & ~covered(work.affine, reo.affine, prep.shape_t,
                                                          a.shape)))
  out = {"input": os.path.abspath(image_path), "mask": os.path.abspath(mask_path) if mask_path else
         "image > 0", "model": labels.source, "method": labels.method,
         "combination": labels.combination, "threshold": labels.tau,
         "threshold_source": labels.tau_source, "input_orientation": reo.source,
         "model_orientation": labels.orientation,
         "model_orientation_source": labels.orientation_source,
         "volume_score": metrics.volume_score(a, work.mask), "working_grid": list(a.shape),
         "input_grid": list(prep.input_shape),
         "input_spacing_mm": list(affine_spacing(prep.input_affine)),
         "resampled_to_1mm": bool(work.resampled_to_1mm),
         "brain_voxels_input_grid": int(np.count_nonzero(prep.brain_t)),
         "brain_voxels_outside_crop": outside,
         "nonfinite_voxels_outside_brain": prep.nonfinite_outside_brain,
         "anomaly_map": os.path.join(out_dir, f"{stem}{OUTPUT_SUFFIXES[0]}.nii.gz")}
  mask_out = os.path.join(out_dir, f"{stem}{OUTPUT_SUFFIXES[1]}.nii.gz")
  p_in = None
  if labels.tau is not None:
    p_work = ((a > np.float32(labels.tau)) & (work.mask > 0)).astype(np.uint8)
    p_in = back(p_work, 0)
    out.update(anomaly_mask=mask_out, flagged_voxels_input_grid=int(p_in.sum()),
               flagged_voxels_working_grid=int(p_work.sum()))
  _write_outputs(out, a_in, p_in, mask_out, os.path.join(out_dir, f"{stem}_prediction.json"),
                 nib.load(image_path))  # the scan's own header and affine: the maps sit on its grid
  return out


def _write_outputs(out: dict, a_in: np.ndarray, p_in: np.ndarray | None, mask_out: str,
                   record: str, ref: nib.Nifti1Image) -> None:
  """Writes one scan's map, mask (without τ: removes an earlier run's) and record, each whole; a
  failure after the first write removes all three (no mix of this run's and an earlier run's).
  The earlier run's record and mask are removed once the new map is written, before it replaces
  theirs: a run killed between the writes (no clean-up then) leaves this run's map (and mask)
  without a record, never beside the earlier run's record."""
  started = False
  try:
    with io.atomic_path(out["anomaly_map"], suffix=".nii.gz") as tmp:
      nifti.save_volume(tmp, a_in, ref.affine, header=ref.header, dtype=np.float32)
      for path in (record, mask_out):  # an earlier run's: not this map's
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
    started = True
    if p_in is not None:
      nifti.save_volume(mask_out, p_in, ref.affine, header=ref.header, dtype=np.uint8)
    io.write_json(record, out)
  except BaseException:
    if started:
      for path in (out["anomaly_map"], mask_out, record):
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
    raise
