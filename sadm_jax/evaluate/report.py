"""Evaluation outputs: metrics.csv/json, paper-style report.md, NIfTI and PNG per volume."""

from __future__ import annotations

import csv
import io as _io
import math
import os
from typing import Any, Sequence

import numpy as np

from sadm_jax.data.nifti import save_volume
from sadm_jax.utils import io, montage as mt

# metrics.csv's `tau_rows`: 'all', 'held-out (rows outside a:b)' or, with no held-out row left,
# TAU_ROWS_LEAKED (`planning.val_rows`).
TAU_ROWS_HELD_OUT = "held-out"
TAU_ROWS_LEAKED = "all (contains SegUnet training volumes, Q15)"

# Leading metrics.csv columns; every other numeric key of a row follows, sorted.
KEY_COLUMNS = ("method", "train_anomalies", "test_set", "fold", "n_volumes")
HEADLINE = ("dice", "best_dice", "auprc", "auroc")
# report.md: per data set, (column title, row key).
TABLE_METRICS = (("Dice", "dice"), ("⌈Dice⌉", "best_dice"), ("AUPRC", "auprc"))
EXTRA_METRICS = (("AUROC", "auroc"), ("AUPRC grid", "auprc_grid"), ("HD95 mm", "hd95_mm"),
                 ("det. AUROC", "detection_auroc"))
METHOD_NAMES = {"threshold": "Intensity threshold", "cddpm": "cDDPM", "sadm": "SADM",
                "unet": "Unet (input only)"}
SET_NAMES = {"Brats21": "BraTS21", "ATLAS_v2": "ATLAS v2", "DRAEM": "DRAEM (IXI test)",
             "MSLUB": "MSLUB", "WMH": "WMH", "IXI": "IXI (healthy)"}
MONTAGE_TITLES = ("input", "reconstruction", "anomaly map",
                  "prediction (red) vs ground truth (green)")


# ----------------------------------------------------------------------------- per-volume files


def nifti_order(a: np.ndarray) -> np.ndarray:
  """Slice-major [D, H, W] → NIfTI voxel order [H, W, D]: the one conversion, when writing files."""
  return np.ascontiguousarray(np.transpose(np.asarray(a), (1, 2, 0)))


def montage_slices(gt: np.ndarray | None, mask: np.ndarray, count: int = 4) -> list[int]:
  """Axial slices to show: the `count` with most lesion, else evenly spread through the brain."""
  depth = mask.shape[-1]
  if gt is not None and gt.any():
    per = gt.reshape(-1, depth).sum(0)
    picks = [int(k) for k in np.argsort(-per, kind="stable")[:count] if per[k] > 0]
    return sorted(picks)
  brain = np.flatnonzero(mask.reshape(-1, depth).any(0))
  if brain.size == 0:
    brain = np.arange(depth)
  return sorted({int(v) for v in np.linspace(brain[0], brain[-1], count + 2)[1:-1].round()})


def _brain_box(mask: np.ndarray, margin: int = 2) -> tuple[slice, slice, slice]:
  """In-plane bounding box of the brain over all slices, grown by `margin` (all if empty)."""
  inplane = np.asarray(mask).reshape(mask.shape[0], mask.shape[1], -1).any(-1)
  if not inplane.any():
    return slice(None), slice(None), slice(None)
  box = []
  for axis in (0, 1):
    idx = np.flatnonzero(inplane.any(1 - axis))
    box.append(slice(max(idx[0] - margin, 0), min(idx[-1] + margin + 1, mask.shape[axis])))
  return box[0], box[1], slice(None)


def montage(image: np.ndarray, anomaly: np.ndarray, pred: np.ndarray, mask: np.ndarray,
            recon: np.ndarray | None = None, gt: np.ndarray | None = None,
            slices: Sequence[int] | None = None) -> np.ndarray:
  """One row per axial slice, titled columns: input | reconstruction | anomaly map | prediction
  (red) vs ground truth (green), and the anomaly map's colour bar over [0, vmax] on the right.

  The prediction panel shows the input with the prediction in red and the GT contour in green.
  All inputs are [H, W, D] volumes (recon/gt optional: a black panel titled "reconstruction
  (none)" / no contour), cropped to the brain's bounding box; slices (default `montage_slices`)
  are rotated so that the second voxel axis points up; small grids are enlarged (nearest) for
  legibility. vmax = max(anomaly) + 0.01 (the reference's plotting range).
  Returns uint8 [title strip + rows·(W·s + gap), 4·(H·s + gap) + colour bar, 3] (`utils.montage.grid`).
  """
  slices = list(slices) if slices is not None else montage_slices(gt, mask)
  vmax = float(np.max(anomaly)) + 0.01
  box = _brain_box(mask)
  crop = lambda v: None if v is None else v[box]
  image, anomaly, pred, recon, gt = map(crop, (image, anomaly, pred, recon, gt))
  scale = max(1, 192 // max(image.shape[0], image.shape[1]))
  enlarge = lambda p: np.repeat(np.repeat(np.rot90(p), scale, axis=0), scale, axis=1)
  rows = []
  for k in slices:
    x = image[..., k]
    blank = np.zeros(x.shape + (3,), np.uint8)
    panels = [mt.grey(x), mt.grey(recon[..., k]) if recon is not None else blank,
              mt.colormap(anomaly[..., k], vmax)]
    over = mt.grey(x)
    p = pred[..., k] > 0
    over[p] = (0.55 * over[p] + 0.45 * np.array([255, 0, 0])).astype(np.uint8)
    if gt is not None:
      over[mt.contour(gt[..., k] > 0)] = (0, 255, 0)
    panels.append(over)
    rows.append([np.ascontiguousarray(enlarge(pnl)) for pnl in panels])
  titles = list(MONTAGE_TITLES)
  if recon is None:
    titles[1] = "reconstruction (none)"
  gap, background = 4, 48  # dark grey between the (black-background) panels
  height = sum(r[0].shape[0] for r in rows) + gap * max(len(rows) - 1, 0)
  bar = mt.colour_bar(max(height, 96), 0.0, vmax, "anomaly score", background=background)
  return mt.grid(rows, col_titles=titles, right=bar, gap=gap, background=background)


NIFTI_OUTPUTS = ("anomaly", "recon", "pred")  # `volume_output_paths`' NIfTI maps, in order
# the end of every file name `volume_output_paths` gives
OUTPUT_SUFFIXES = tuple(f"_{k}.nii.gz" for k in NIFTI_OUTPUTS) + ("_montage.png",)


def volume_output_paths(out_dir: str, name: str, nifti: bool = True, png: bool = False,
                        recon: bool = False) -> dict[str, str]:
  """What `write_volume_outputs` writes: 'anomaly', 'recon' (with a reconstruction), 'pred'
  (NIfTI) and 'montage' (PNG) -> `<out_dir>/<name>_<what>.nii.gz|.png`."""
  nii = [k for k in NIFTI_OUTPUTS if recon or k != "recon"] if nifti else []
  out = {k: os.path.join(out_dir, f"{name}_{k}.nii.gz") for k in nii}
  if png:
    out["montage"] = os.path.join(out_dir, f"{name}_montage.png")
  return out



def write_volume_outputs(out_dir: str, name: str, affine: np.ndarray, image: np.ndarray,
                         anomaly: np.ndarray, pred: np.ndarray, mask: np.ndarray,
                         recon: np.ndarray | None = None, gt: np.ndarray | None = None,
                         nifti: bool = True, png: bool = False) -> list[str]:
  """Writes `<name>_{anomaly,recon,pred}.nii.gz` on the working grid (`affine` of the cached input)
  and optionally `<name>_montage.png`. Volumes are slice-major [D, H, W]; returns the written paths."""
  image, anomaly, pred, mask = map(nifti_order, (image, anomaly, pred, mask))
  recon, gt = (None if v is None else nifti_order(v) for v in (recon, gt))
  paths = volume_output_paths(out_dir, name, nifti, png, recon is not None)
  data = {"anomaly": lambda: anomaly.astype(np.float32), "pred": lambda: (pred > 0).astype(np.uint8),
          "recon": lambda: recon.astype(np.float32)}
  for what, path in paths.items():
    if what == "montage":
      io.write_png(path, montage(image, anomaly, pred, mask, recon, gt))
    else:
      save_volume(path, data[what](), affine)
  return list(paths.values())


def remove_stale_outputs(root: str, keep: set[str]) -> int:
  """Removes the per-volume files under `root` (report/volumes/) that `write_volume_outputs`
  names but `keep` does not (an earlier evaluation's, with other output settings, methods or
  volumes), and the temporary files of writes a kill interrupted (called once every process has
  written its share), then the folders left empty; other files stay. Returns how many were
  removed."""
  keep = {os.path.abspath(k) for k in keep}
  removed = 0
  for folder, _, files in sorted(os.walk(root), reverse=True):  # the deepest first
    for f in files:
      path = os.path.abspath(os.path.join(folder, f))
      unfinished = io.unfinished_target(f)  # a killed write's temporary file
      if (f.endswith(OUTPUT_SUFFIXES) and path not in keep) or (
          unfinished is not None and unfinished.endswith(OUTPUT_SUFFIXES)):
        os.remove(path)
        removed += 1
    if folder != root and not os.listdir(folder):
      os.rmdir(folder)
  return removed


# ----------------------------------------------------------------------------- tables


def _finite(v: Any) -> bool:
  return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and \
      math.isfinite(float(v))


def csv_columns(rows: Sequence[dict]) -> list[str]:
  """KEY_COLUMNS, HEADLINE, then every other key sorted, each followed by its `_std` column."""
  keys = {k for r in rows for k in r} - set(KEY_COLUMNS)
  stds = {k for k in keys if k.endswith("_std") and k[:-4] in keys}
  rest = sorted(keys - stds - set(HEADLINE))
  cols = list(KEY_COLUMNS) + list(HEADLINE) + [f"{h}_std" for h in HEADLINE if f"{h}_std" in stds]
  for k in rest:
    cols += [k, f"{k}_std"] if f"{k}_std" in stds else [k]
  return cols


def _cell(v: Any) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return ""
  if isinstance(v, float):
    return repr(v)
  return str(v)


def metrics_csv(rows: Sequence[dict]) -> str:
  cols = csv_columns(rows)
  buf = _io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(cols)
  for r in rows:
    w.writerow([_cell(r.get(c)) for c in cols])
  return buf.getvalue()


def _jsonable(v: Any) -> Any:
  if isinstance(v, dict):
    return {k: _jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_jsonable(x) for x in v]
  if isinstance(v, (np.bool_, bool)):
    return bool(v)
  if isinstance(v, (np.integer, int)):
    return int(v)
  if isinstance(v, (np.floating, float)):
    return float(v) if math.isfinite(float(v)) else None
  return v


def fold_summary(rows: Sequence[dict], key: str
                 ) -> dict[tuple[str, str, str], tuple[float, float, int]]:
  """(method, train_anomalies, test_set) -> (mean, population std, #folds) of `key` over folds."""
  groups: dict[tuple[str, str, str], list[float]] = {}
  for r in rows:
    v = r.get(key)
    if _finite(v):
      groups.setdefault((r["method"], r["train_anomalies"], r["test_set"]), []).append(float(v))
  return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in groups.items()}


def _pct(stat: tuple[float, float, int] | None, percent: bool = True) -> str:
  if stat is None:
    return "–"
  mean, std, n = stat
  f = 100.0 if percent else 1.0
  return f"{f * mean:.2f} ± {f * std:.2f}" if n > 1 else f"{f * mean:.2f}"


def _model_rows(rows: Sequence[dict]) -> list[tuple[str, str]]:
  """(method, training anomalies) in Table 1's order: methods, then DRAEM, BraTS, ATLAS labels."""
  order = {"threshold": 0, "cddpm": 1, "unet": 2, "sadm": 3}
  anomalies = {"none": 0, "draem": 1, "Brats21": 2, "ATLAS_v2": 3}
  seen = {(r["method"], r["train_anomalies"]) for r in rows}
  return sorted(seen, key=lambda mt: (order.get(mt[0], 9), anomalies.get(mt[1], 9), mt[1]))


def _sets(rows: Sequence[dict], healthy: bool = False) -> list[str]:
  out = []
  for r in rows:
    if (r["test_set"] == "IXI") == healthy and r["test_set"] not in out:
      out.append(r["test_set"])
  return out


def format_table(rows: Sequence[dict], metrics=TABLE_METRICS, percent: bool = True) -> str:
  """Markdown table: rows = method × training anomalies, columns = data set × metric, mean ± std
  over folds (× 100 when `percent`)."""
  sets = _sets(rows)
  stats = {key: fold_summary(rows, key) for _, key in metrics}
  head = ["Model", "trained on anomalies of", "folds"]
  head += [f"{SET_NAMES.get(s, s)} {title}" for s in sets for title, _ in metrics]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for method, anomalies in _model_rows(rows):
    folds = {r["fold"] for r in rows if (r["method"], r["train_anomalies"]) == (method, anomalies)}
    cells = [METHOD_NAMES.get(method, method), "—" if anomalies == "none" else anomalies,
             str(len(folds))]
    for s in sets:
      for _, key in metrics:
        pct = percent and key not in ("hd95_mm",)
        cells.append(_pct(stats[key].get((method, anomalies, s)), pct))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def format_healthy_table(rows: Sequence[dict]) -> str:
  """Markdown table of the healthy IXI rows: voxel-FPR thresholds and test false-positive rates."""
  keys = (("t @1% FPR", "t_fpr1", False), ("t @5% FPR", "t_fpr5", False),
          ("t @10% FPR", "t_fpr10", False), ("test FPR @1%", "voxel_fpr_at_t_fpr1", True),
          ("test FPR @5%", "voxel_fpr_at_t_fpr5", True),
          ("test FPR @10%", "voxel_fpr_at_t_fpr10", True),
          ("score", "volume_score", False))
  healthy = [r for r in rows if r["test_set"] == "IXI"]
  if not healthy:
    return ""
  stats = {key: fold_summary(healthy, key) for _, key, _ in keys}
  head = ["Model", "trained on anomalies of"] + [t for t, _, _ in keys]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for method, anomalies in _model_rows(healthy):
    cells = [METHOD_NAMES.get(method, method), "—" if anomalies == "none" else anomalies]
    for _, key, pct in keys:
      st = stats[key].get((method, anomalies, "IXI"))
      if pct or st is None:
        cells.append(_pct(st, pct))
      else:
        cells.append(f"{st[0]:.4f} ± {st[1]:.4f}" if st[2] > 1 else f"{st[0]:.4f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


RESIDUALS = {"ssim": "(1 − SSIM3D(x̄, x))", "l1": "|x − x̄|", "l2": "(x − x̄)²"}


def _empty_dice_text(p: dict) -> str:
  """The Dice convention for a volume without lesion (in the metric domain) and nothing predicted."""
  if p.get("faithful_metrics"):
    return ("A volume with no lesion and an empty prediction has an undefined Dice (0/0 = NaN, as in"
            " the reference) and is left out of the mean.")
  return ("A volume with no lesion and an empty prediction counts as Dice 1 (nothing there, nothing"
          " found) and is included in the mean (the reference left it out as NaN, Q34).")


def protocol_text(protocol: dict) -> str:
  """One paragraph stating how every number was computed."""
  p = protocol
  grid = "×".join(str(n) for n in p["grid"])
  domain = ("inside the brain mask" if p["within_brain"] else
            "over the whole grid (background included)")
  search = {"exact": "exact Dice optimum",
            "bisection": "10-step bisection (reference)"}[p["threshold_method"]]
  noise = ("one shared noise field per step for all slices" if p["shared_noise"] else
           "independent noise per slice")
  residual = f"median{p['median_size']}³({RESIDUALS[p['residual_mode']]} · M)"
  seg = "" if p["combination"] == "residual" else " and mean σ(S) · M"
  ts = ", ".join(str(t) for t in p["timesteps"])
  return " ".join([
      f"Protocol: metrics on the {grid} working grid ({p['spacing_mm']:g} mm voxels), {domain};",
      f"Dice at one threshold τ per data set and fold, chosen by {search} on the pooled",
      f"validation voxels {domain} and applied to the test set; ⌈Dice⌉ = per-volume oracle",
      "threshold; AUPRC/AUROC per volume (average precision / tie-aware ROC AUC); means over",
      "volumes, then mean ± std over folds (in %).",
      _empty_dice_text(p),
      f"Reconstruction: single-step ensemble over t ∈ {{{ts}}} ({p['noise']} noise, {noise}),",
      f"compute dtype {p['dtype']}. Anomaly maps: cDDPM {residual}; SADM {residual}{seg}",
      f"(combination '{p['combination']}'); intensity threshold |x − m| · M with m the median",
      "brain intensity of the healthy IXI training volumes; input-only UNet mean σ(S) · M.",
      "Weakly supervised SADM runs tune τ",
      "on their held-out rows only (Q15).",
      f"faithful={p['faithful']}, faithful_metrics={p['faithful_metrics']}, seed={p['seed']}."])


FOOTNOTE = ("AUPRC grid = whole-grid average precision as the reference computed it (Q14); HD95 "
            "in mm, volumes without lesion and empty predictions excluded (the latter counted as "
            "n_empty_prediction in metrics.csv); "
            "det. AUROC = volume-level detection of the pathological test volumes against the "
            "healthy IXI test volumes by the mean anomaly score inside the brain.")


def tau_exceptions(rows: Sequence[dict]) -> str:
  """The runs whose τ was tuned on rows including their SegUnet's training volumes (no held-out
  row left, `planning.val_rows`): the protocol's held-out sentence does not hold for them."""
  leaked = [f"{r['method']}/{r['train_anomalies']}/{r['fold']} on {r['test_set']}" for r in rows
            if r.get("tau_rows") == TAU_ROWS_LEAKED]
  if not leaked:
    return ""
  return ("Exception (Q15): τ of " + ", ".join(leaked) + " was tuned on every validation row, "
          "including its SegUnet's training volumes (no held-out row was left).")


def write_report(workdir: str, rows: Sequence[dict], protocol: dict) -> str:
  """Writes report/{metrics.csv, metrics.json, report.md} under `workdir`; returns the markdown."""
  out = os.path.join(workdir, "report")
  io.write_text(os.path.join(out, "metrics.csv"), metrics_csv(rows))
  io.write_json(os.path.join(out, "metrics.json"), {"protocol": _jsonable(protocol),
                                                     "rows": _jsonable(list(rows))})
  protocol_par = " ".join(filter(None, [protocol_text(protocol), tau_exceptions(rows)]))
  parts = ["# SADM evaluation", "", protocol_par, "",
           "## Segmentation (test sets; mean ± std over folds, %)", "", format_table(rows), "",
           "## Further metrics", "", format_table(rows, EXTRA_METRICS), "",
           FOOTNOTE]
  healthy = format_healthy_table(rows)
  if healthy:
    parts += ["", "## Healthy IXI (voxel false-positive-rate thresholds from IXI val)", "", healthy]
  text = "\n".join(parts) + "\n"
  io.write_text(os.path.join(out, "report.md"), text)
  return text
