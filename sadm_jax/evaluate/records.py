"""Per-volume records, one builder per pass kind, and their summaries (report rows); maps [D, H, W]."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sadm_jax.evaluate import metrics
from sadm_jax.evaluate.scoring import recon_errors

VAL_KEYS = ("best_dice", "best_threshold", "auroc", "auprc", "auroc_grid", "auprc_grid",
            "volume_score", "lesion_voxels")


def slice_major_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
  """Voxel size (H, W, D) in mm → (D, H, W), the order of the slice-major arrays."""
  return float(spacing[2]), float(spacing[0]), float(spacing[1])


def _volume_metrics(a, gt, mask, tau: float, spacing, faithful: bool) -> dict:
  # Slice detection runs over the axial slices (axis 0 here), the reference's over the first
  # NIfTI axis (sagittal: axis 1 here) (Q12).
  return metrics.volume_metrics(a, gt, mask, tau, spacing=slice_major_spacing(spacing),
                                faithful=faithful, slice_axis=1 if faithful else 0)


def base(name: str, x, recon, mask, gt) -> dict:
  """Name and (with a reconstruction) the reconstruction errors."""
  rec: dict[str, Any] = {"name": name}
  if recon is not None:
    rec.update(recon_errors(x, recon, mask, gt))
  return rec


def val_record(rec: dict, a, gt, mask, spacing, faithful: bool) -> dict:
  """A pathological val volume: the oracle and ranking metrics (τ is chosen from the pooled maps)."""
  m = _volume_metrics(a, gt, mask, float("inf"), spacing, faithful)
  return {**rec, **{k: m[k] for k in VAL_KEYS}}


def test_record(rec: dict, a, gt, mask, spacing, faithful: bool, tau: float,
                fpr_thresholds: dict) -> dict:
  """A pathological test volume: every metric at τ, and the Dice at each healthy-FPR threshold."""
  out = {**rec, **_volume_metrics(a, gt, mask, tau, spacing, faithful)}
  if faithful:  # the reference stored τ as BestThresholdPerVol
    out["best_threshold"] = out["threshold"]
  dom = mask if not faithful else np.ones_like(mask)
  empty = float("nan") if faithful else 1.0  # the Dice-at-τ convention of `volume_metrics` (Q34)
  for name, t in fpr_thresholds.items():
    out[f"dice_at_{name}"] = metrics.dice((a > np.float32(t)) & dom, gt & dom, empty_value=empty)
  return out


def healthy_record(rec: dict, a, mask, faithful: bool, fpr_thresholds: dict) -> dict:
  """A healthy IXI volume: its score and the voxel false-positive rate at each FPR threshold."""
  dom = mask if not faithful else np.ones_like(mask)
  out = {**rec, "volume_score": metrics.volume_score(a, mask)}
  n = int(np.count_nonzero(dom))
  for name, t in fpr_thresholds.items():  # no brain voxel: no rate (NaN), not 0
    out[f"voxel_fpr_at_{name}"] = \
        float(np.count_nonzero((a > np.float32(t)) & dom)) / n if n else float("nan")
  return out


def summarise(records: Sequence[dict]) -> dict:
  """Means (NaN-ignoring) and stds over volumes of every numeric field; counts for booleans."""
  out: dict[str, Any] = {"n_volumes": len(records)}
  keys = sorted({k for r in records for k in r if k not in ("name", "fingerprint")})
  for k in keys:
    vals = [r.get(k) for r in records]
    if all(isinstance(v, bool) for v in vals if v is not None):
      out[f"n_{k}"] = int(sum(bool(v) for v in vals if v is not None))
      continue
    arr = np.array([np.nan if v is None else float(v) for v in vals], np.float64)
    finite = arr[np.isfinite(arr)]
    out[k] = float(finite.mean()) if finite.size else float("nan")
    out[f"{k}_std"] = float(finite.std()) if finite.size else float("nan")
  if "lesion_voxels" in out:
    out["n_empty_gt"] = int(sum(1 for r in records if r.get("lesion_voxels") == 0))
  return out


def row(run, set_name: str, records: Sequence[dict], **extra) -> dict:
  """One metrics.csv row: a run on a data set."""
  return {"method": run.method, "train_anomalies": run.train_anomalies, "test_set": set_name,
          "fold": run.fold, **summarise(records), **extra}
