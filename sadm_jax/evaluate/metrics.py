"""Segmentation and detection metrics of anomaly maps, pure NumPy (docs/method.md §4.4, Q12–Q14, Q30, Q34)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage, spatial

from sadm_jax.evaluate.thresholds import (NonFiniteScoreError, RankedScores,  # noqa: F401
                                          bisection_search_ranked, check_finite,
                                          exact_best_threshold_ranked)

# Conventions: `pred`, `gt`, `mask` are boolean-like volumes (value > 0 is True), `score_map` is float.
# Undefined ratios (0/0) are NaN, never silently 0 or 1, except Dice's documented `empty_value`.
# Score maps must be finite: NaN/±Inf raise `NonFiniteScoreError` (naming the volume when given).


def _bool(a) -> np.ndarray:
  a = np.asarray(a)
  return a if a.dtype == bool else a > 0


def _ratio(num: float, den: float) -> float:
  return float(num) / float(den) if den else float("nan")


# ----------------------------------------------------------------------------- binary overlap


def dice(pred, gt, empty_value: float = 1.0) -> float:
  """Dice 2|P∩G|/(|P|+|G|) of two binary volumes [...].

  Both empty is undefined (0/0, the reference returned NaN, Q34); it returns `empty_value` — 1.0 by
  default (a correct "nothing there, nothing found"), pass `float('nan')` to exclude such cases.
  """
  p, g = _bool(pred), _bool(gt)
  tp = np.count_nonzero(p & g)
  den = np.count_nonzero(p) + np.count_nonzero(g)
  return 2.0 * tp / den if den else float(empty_value)


def confusion(pred, gt, mask=None) -> dict[str, int]:
  """Voxel confusion counts (Q13, correct definitions): TP=Σ P·G, FP=Σ P·¬G, FN=Σ ¬P·G, TN=Σ ¬P·¬G.

  Args:
    pred: binary prediction [...].
    gt: binary ground truth [...].
    mask: optional region [...] (e.g. the brain); voxels outside it are not counted.
  Returns:
    {'tp', 'fp', 'fn', 'tn'} as Python ints.
  """
  p, g = _bool(pred), _bool(gt)
  if mask is not None:
    m = _bool(mask)
    p, g = p & m, g & m
    n = np.count_nonzero(m)
  else:
    n = p.size
  tp = int(np.count_nonzero(p & g))
  n_pred, n_gt = int(np.count_nonzero(p)), int(np.count_nonzero(g))
  fp, fn = n_pred - tp, n_gt - tp
  return {"tp": tp, "fp": fp, "fn": fn, "tn": int(n) - tp - fp - fn}


def rates(counts: dict[str, int]) -> dict[str, float]:
  """precision, recall, fpr, fdr from confusion counts; NaN where the denominator is 0."""
  tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
  return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
          "fpr": _ratio(fp, fp + tn), "fdr": _ratio(fp, fp + tp)}


def precision(pred, gt, mask=None) -> float:
  """TP/(TP+FP); NaN when nothing is predicted (sklearn would warn and return 0)."""
  return rates(confusion(pred, gt, mask))["precision"]


def recall(pred, gt, mask=None) -> float:
  """TP/(TP+FN) (= TPR, sensitivity); NaN when there is no lesion."""
  return rates(confusion(pred, gt, mask))["recall"]


def fpr(pred, gt, mask=None) -> float:
  """False-positive rate FP/(FP+TN); NaN without negatives (the reference's "FPR" was the FDR, Q13)."""
  return rates(confusion(pred, gt, mask))["fpr"]


def fdr(pred, gt, mask=None) -> float:
  """False-discovery rate FP/(FP+TP) = 1 − precision; NaN when nothing is predicted."""
  return rates(confusion(pred, gt, mask))["fdr"]


# ----------------------------------------------------------------------------- ranking metrics


def auroc_ranked(ranked: RankedScores) -> float:
  """ROC AUC (sklearn `roc_auc_score`, trapezoid) as the tie-aware Mann–Whitney statistic.

  AUROC = (#{neg < pos} + ½·#{neg = pos}) / (P·N) over all (positive, negative) pairs, which equals the
  trapezoidal area under the ROC curve with tied scores. NaN when one class is absent (Q34).
  """
  if ranked.n_pos == 0 or ranked.n_neg == 0:
    return float("nan")
  lt = np.searchsorted(ranked.neg, ranked.pos, side="left")
  le = np.searchsorted(ranked.neg, ranked.pos, side="right")
  wins = lt.sum(dtype=np.float64) + 0.5 * (le - lt).sum(dtype=np.float64)
  return float(wins / (float(ranked.n_pos) * float(ranked.n_neg)))


def auprc_ranked(ranked: RankedScores) -> float:
  """Average precision (sklearn `average_precision_score`): Σ_k (R_k − R_{k−1})·P_k over thresholds.

  Recall only changes at distinct positive scores v, so AP = Σ_v (#pos = v)/P · precision(score ≥ v).
  NaN when one class is absent (Q34).
  """
  n_pos, n_neg = ranked.n_pos, ranked.n_neg
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  pos = ranked.pos
  starts = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])
  counts = np.diff(np.r_[starts, n_pos])
  pos_ge = n_pos - starts
  neg_ge = n_neg - np.searchsorted(ranked.neg, pos[starts], side="left")
  return float(np.sum(counts * (pos_ge / (pos_ge + neg_ge))) / n_pos)


def auroc(scores, labels) -> float:
  """Tie-aware ROC AUC of `scores` [...] against binary `labels` [...]; NaN if only one class."""
  return auroc_ranked(RankedScores.from_arrays(scores, labels))


def auprc(scores, labels) -> float:
  """Average precision of `scores` [...] against binary `labels` [...]; NaN if only one class."""
  return auprc_ranked(RankedScores.from_arrays(scores, labels))


def _brain_and_grid(score_map, gt, brain_mask) -> tuple[RankedScores, RankedScores]:
  m = _bool(brain_mask)
  inside = RankedScores.from_arrays(score_map, gt, m)
  outside = RankedScores.from_arrays(score_map, gt, ~m)
  return inside, RankedScores.merge(inside, outside)


def voxel_auc(score_map, gt, brain_mask=None) -> dict[str, float]:
  """Voxel AUROC/AUPRC inside the brain and over the whole grid (Q14).

  Args:
    score_map: anomaly map [H, W, D].
    gt: binary lesion volume [H, W, D].
    brain_mask: brain mask [H, W, D]; None means the whole grid for both.
  Returns:
    {'auroc', 'auprc'} within the brain, {'auroc_grid', 'auprc_grid'} over all voxels (reference).
  """
  if brain_mask is None:
    grid = inside = RankedScores.from_arrays(score_map, gt)
  else:
    inside, grid = _brain_and_grid(score_map, gt, brain_mask)
  return {"auroc": auroc_ranked(inside), "auprc": auprc_ranked(inside),
          "auroc_grid": auroc_ranked(grid), "auprc_grid": auprc_ranked(grid)}


# ----------------------------------------------------------------------------- surface distances

_FACE = ndimage.generate_binary_structure(3, 1)


def _surface(binary: np.ndarray) -> np.ndarray:
  """Surface voxels: in the set, not in its 6-connected erosion (outside the array counts as empty)."""
  return binary & ~ndimage.binary_erosion(binary, structure=_FACE, border_value=0)


def surface_distances(pred, gt, spacing: Sequence[float] = (2.0, 2.0, 2.0)
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Distances (in the units of `spacing`) between the surface voxels of two binary volumes [H, W, D].

  Surface voxels are found as MONAI does (the set minus its 6-connected erosion, with everything
  outside the array empty), within the bounding box of both sets. Each surface voxel's distance to
  the nearest surface voxel of the other set is an exact nearest-neighbour query in a k-d tree of
  physical coordinates — the same values as Euclidean distance transforms (MONAI's route), but its
  cost grows with the number of surface voxels rather than the box volume (3× faster when a low
  threshold predicts much of the brain).
  Returns:
    (pred surface → nearest gt surface) [Sp], (gt surface → nearest pred surface) [Sg]; both empty if
    either volume is empty.
  """
  p, g = _bool(pred), _bool(gt)
  if p.shape != g.shape or p.ndim != len(spacing):
    raise ValueError(f"pred {p.shape}, gt {g.shape} and spacing {tuple(spacing)} do not match")
  if not p.any() or not g.any():
    return np.zeros(0), np.zeros(0)
  box = ndimage.find_objects((p | g).astype(np.int8))[0]
  scale = np.asarray(spacing, dtype=np.float64)
  xp = np.argwhere(_surface(p[box])) * scale
  xg = np.argwhere(_surface(g[box])) * scale
  return spatial.cKDTree(xg).query(xp)[0], spatial.cKDTree(xp).query(xg)[0]


def _hd95_from(d_pg: np.ndarray, d_gp: np.ndarray) -> float:
  if d_pg.size == 0 or d_gp.size == 0:
    return float("nan")
  return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))


def _hmax_from(d_pg: np.ndarray, d_gp: np.ndarray) -> float:
  if d_pg.size == 0 or d_gp.size == 0:
    return float("nan")
  return float(max(d_pg.max(), d_gp.max()))


def hd95(pred, gt, spacing: Sequence[float] = (2.0, 2.0, 2.0)) -> float:
  """Symmetric 95th-percentile Hausdorff distance in mm (Q30): max of the two directed 95th percentiles.

  Same convention as MONAI's `compute_hausdorff_distance(percentile=95)` (surface voxels, linear
  percentile), but scaled by the voxel `spacing` (2 mm on the working grid). NaN when either volume is
  empty — the caller counts empty predictions separately (see `volume_metrics`'s `empty_prediction`).
  """
  return _hd95_from(*surface_distances(pred, gt, spacing))


def hausdorff_max(pred, gt, spacing: Sequence[float] = (2.0, 2.0, 2.0)) -> float:
  """Symmetric maximum Hausdorff distance between surfaces in mm; NaN when either volume is empty.

  The reference's `HausPerVol` is this value in voxel units: pass spacing=(1, 1, 1) (or divide by 2 mm).
  """
  return _hmax_from(*surface_distances(pred, gt, spacing))


# ----------------------------------------------------------------------------- slice/volume detection


def slice_scores(score_map, gt, brain_mask, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
  """Per-slice anomaly score and label along `axis` (docs/method.md §4.4, Q12).

  Score = mean of the map over the brain voxels of the slice (0 if the slice has no brain); label =
  the slice contains lesion (`volume_metrics` passes the lesion inside the brain by default, the
  whole lesion map in faithful mode). `axis=-1` gives the 50 axial slices; `axis=0` the reference's 96 sagittal
  planes.
  Returns:
    scores [S] float64, labels [S] bool.
  """
  s = np.asarray(score_map)
  m, g = _bool(brain_mask), _bool(gt)
  axis = axis % s.ndim
  others = tuple(i for i in range(s.ndim) if i != axis)
  sums = np.where(m, s, 0).sum(axis=others, dtype=np.float64)
  counts = np.count_nonzero(m, axis=others)
  scores = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
  return scores, g.any(axis=others)


def slice_detection(score_map, gt, brain_mask, axis: int = -1) -> tuple[float, float]:
  """Slice-level detection (AUROC, AUPRC) over the slices along `axis`; NaN if only one class."""
  scores, labels = slice_scores(score_map, gt, brain_mask, axis)
  ranked = RankedScores.from_arrays(scores, labels)
  return auroc_ranked(ranked), auprc_ranked(ranked)


def volume_score(score_map, brain_mask) -> float:
  """Sample-level score: mean of the map inside the brain (the reference's AnomalyScoreRecoPerVol)."""
  m = _bool(brain_mask)
  n = np.count_nonzero(m)
  return float(np.asarray(score_map)[m].sum(dtype=np.float64) / n) if n else float("nan")


def volume_detection_auroc(healthy_scores, patho_scores) -> float:
  """Volume-level AUROC of per-volume scores: healthy volumes negative, pathological positive.

  A volume without a score (NaN: no brain voxel, `volume_score`) is left out, as from the means;
  NaN when a class has no scored volume.
  """
  h = np.asarray(healthy_scores, dtype=np.float64).ravel()
  p = np.asarray(patho_scores, dtype=np.float64).ravel()
  h, p = h[np.isfinite(h)], p[np.isfinite(p)]
  return auroc_ranked(RankedScores(np.sort(p), np.sort(h)))


# ----------------------------------------------------------------------------- everything for one volume


def volume_metrics(score_map, gt, brain_mask, threshold: float,
                   spacing: Sequence[float] = (2.0, 2.0, 2.0), faithful: bool = False,
                   name: str | None = None, slice_axis: int | None = None) -> dict:
  """Every per-volume metric of one pathological volume at once (docs/method.md §4.4).

  Voxel metrics live in a domain: the brain mask by default, the whole grid with `faithful=True`
  (as the reference). Dice, confusion counts, rates, HD and the oracle `best_dice` use that domain;
  `auroc`/`auprc` too, and `auroc_grid`/`auprc_grid` are always the whole-grid values (Q14).
  Binarisation is `score_map > threshold`. One sort per label class serves AUROC, AUPRC, the counts
  and the oracle search.

  Faithful mode also switches the oracle to the reference's 10-step bisection in its float32
  arithmetic (Q15), the slice detection to the first axis (Q12), and the Dice of a volume with no
  lesion and an empty prediction to NaN (0/0, the reference's value, dropped by the NaN-ignoring
  mean) instead of 1.0 (Q34); confusion counts and rates stay correctly defined (Q13).
  A volume without lesion (in the domain) has the oracle threshold max(A), which predicts
  nothing, so its `best_dice` is that same empty–empty Dice: 1.0, never below its Dice at any τ
  (faithful: the reference's bisection result, 0).

  Args:
    score_map: anomaly map A [H, W, D].
    gt: binary lesion volume [H, W, D].
    brain_mask: brain mask [H, W, D].
    threshold: τ (e.g. from `thresholds.select_threshold` on the validation set).
    spacing: voxel size in mm for HD95 (2 mm on the working grid).
    faithful: reproduce the reference's metric choices.
    name: the volume's name for errors.
    slice_axis: axis of the slices for slice detection; default the last (axial slices of an
      [H, W, D] volume), the first in faithful mode; 0 (or 1 faithful) for [D, H, W] volumes.
  Raises:
    NonFiniteScoreError: the map holds NaN or ±Inf (the message names `name`).
  Returns:
    dict with dice, best_dice, best_threshold, threshold, auroc, auprc, auroc_grid, auprc_grid,
    hd95_mm, hausdorff_max_mm, precision, recall, fpr, fdr, tp, fp, fn, tn, slice_auroc, slice_auprc,
    lesion_voxels (in the domain), predicted_voxels, empty_prediction, volume_score.
  """
  s = np.asarray(score_map)
  check_finite(s, name)
  g, m = _bool(gt), _bool(brain_mask)
  if not s.shape == g.shape == m.shape:
    raise ValueError(f"shapes differ: score {s.shape}, gt {g.shape}, mask {m.shape}")
  inside, grid = _brain_and_grid(s, g, m)
  ranked = grid if faithful else inside
  empty_dice = float("nan") if faithful else 1.0  # no lesion, nothing predicted (Q34)
  if faithful:
    best_dice, best_t = bisection_search_ranked(grid, reference_arithmetic=True)
  else:
    best_dice, best_t = exact_best_threshold_ranked(inside)
    if inside.n_pos == 0:  # its threshold (the max score) predicts nothing: empty vs empty
      best_dice = empty_dice

  tp, fp = ranked.count_above(threshold)
  counts = {"tp": tp, "fp": fp, "fn": ranked.n_pos - tp, "tn": ranked.n_neg - fp}
  pred = s > ranked.pos.dtype.type(threshold)  # compared in the map's dtype, like `count_above`
  if not faithful:
    pred, g_dom = pred & m, g & m
  else:
    g_dom = g
  d_pg, d_gp = surface_distances(pred, g_dom, spacing)
  slice_auroc, slice_auprc = slice_detection(  # a slice's label: lesion in its domain
      s, g_dom, m, axis=slice_axis if slice_axis is not None else (0 if faithful else -1))

  out = {
      "dice": 2.0 * tp / (tp + fp + ranked.n_pos) if tp + fp + ranked.n_pos else empty_dice,
      "best_dice": best_dice, "best_threshold": best_t, "threshold": float(threshold),
      "auroc": auroc_ranked(ranked), "auprc": auprc_ranked(ranked),
      "auroc_grid": auroc_ranked(grid), "auprc_grid": auprc_ranked(grid),
      "hd95_mm": _hd95_from(d_pg, d_gp), "hausdorff_max_mm": _hmax_from(d_pg, d_gp),
      **rates(counts), **counts,
      "slice_auroc": slice_auroc, "slice_auprc": slice_auprc,
      "lesion_voxels": ranked.n_pos, "predicted_voxels": tp + fp,
      "empty_prediction": tp + fp == 0,
      "volume_score": volume_score(s, m),
  }
  return out
