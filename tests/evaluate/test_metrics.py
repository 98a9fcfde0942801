"""Metrics: hand-computed tiny cases and cross-checks against scikit-learn / SciPy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.spatial import distance
from sklearn import metrics as skm

from sadm_jax.evaluate import metrics as mt
from sadm_jax.evaluate import thresholds as th


def _masks_2x2x2():
  pred = np.zeros((2, 2, 2), bool)
  gt = np.zeros((2, 2, 2), bool)
  pred[0, 0, 0] = pred[0, 0, 1] = True               # 2 predicted
  gt[0, 0, 1] = gt[1, 1, 0] = gt[1, 1, 1] = True     # 3 lesion, 1 shared
  return pred, gt


def test_dice_hand():
  pred, gt = _masks_2x2x2()
  assert mt.dice(pred, gt) == pytest.approx(2 * 1 / (2 + 3))
  assert mt.dice(gt, gt) == 1.0
  assert mt.dice(np.zeros(8), gt.ravel()) == 0.0


def test_dice_empty_empty():
  z = np.zeros((2, 2, 2), bool)
  assert mt.dice(z, z) == 1.0
  assert math.isnan(mt.dice(z, z, empty_value=float("nan")))
  assert mt.dice(z, z, empty_value=0.0) == 0.0


def test_confusion_hand():
  pred, gt = _masks_2x2x2()
  assert mt.confusion(pred, gt) == {"tp": 1, "fp": 1, "fn": 2, "tn": 4}
  mask = np.ones((2, 2, 2), bool)
  mask[1] = False                                     # keep only the first 4 voxels
  assert mt.confusion(pred, gt, mask) == {"tp": 1, "fp": 1, "fn": 0, "tn": 2}
  r = mt.rates(mt.confusion(pred, gt))
  assert r == pytest.approx({"precision": 0.5, "recall": 1 / 3, "fpr": 1 / 5, "fdr": 0.5})
  assert mt.fpr(pred, gt) == pytest.approx(0.2)
  assert mt.fdr(pred, gt) == pytest.approx(0.5)


def test_rates_zero_division_is_nan():
  z = np.zeros((2, 2, 2), bool)
  pred, gt = _masks_2x2x2()
  assert math.isnan(mt.precision(z, gt)) and math.isnan(mt.fdr(z, gt))
  assert math.isnan(mt.recall(pred, z))
  assert math.isnan(mt.fpr(np.ones(8), np.ones(8)))


def test_confusion_matches_sklearn():
  rng = np.random.default_rng(1)
  for _ in range(5):
    pred = rng.random((9, 8, 7)) < 0.3
    gt = rng.random((9, 8, 7)) < 0.2
    c = mt.confusion(pred, gt)
    tn, fp, fn, tp = skm.confusion_matrix(gt.ravel(), pred.ravel(), labels=[0, 1]).ravel()
    assert c == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    assert mt.precision(pred, gt) == pytest.approx(skm.precision_score(gt.ravel(), pred.ravel()))
    assert mt.recall(pred, gt) == pytest.approx(skm.recall_score(gt.ravel(), pred.ravel()))
    assert mt.dice(pred, gt) == pytest.approx(skm.f1_score(gt.ravel(), pred.ravel()))


def test_auroc_auprc_ties_hand():
  scores = np.array([0.1, 0.4, 0.4, 0.8])
  labels = np.array([0, 0, 1, 1])
  # pairs (pos, neg): (0.4, 0.1) win, (0.4, 0.4) tie = 1/2, (0.8, ·) two wins → 3.5 / 4
  assert mt.auroc(scores, labels) == pytest.approx(0.875)
  # thresholds 0.8: P = 1, R = 1/2; 0.4: P = 2/3, R = 1 → AP = 1/2·1 + 1/2·2/3
  assert mt.auprc(scores, labels) == pytest.approx(0.5 + 1 / 3)
  assert mt.auroc(scores, labels) == pytest.approx(skm.roc_auc_score(labels, scores))
  assert mt.auprc(scores, labels) == pytest.approx(skm.average_precision_score(labels, scores))


def test_auroc_auprc_one_class_nan():
  s = np.array([0.1, 0.2, 0.3])
  assert math.isnan(mt.auroc(s, np.zeros(3))) and math.isnan(mt.auprc(s, np.zeros(3)))
  assert math.isnan(mt.auroc(s, np.ones(3))) and math.isnan(mt.auprc(s, np.ones(3)))


@pytest.mark.parametrize("dtype,decimals", [(np.float64, None), (np.float32, 2), (np.float64, 1)])
def test_auroc_auprc_match_sklearn(dtype, decimals):
  rng = np.random.default_rng(2)
  for _ in range(4):
    labels = rng.random(3000) < 0.1
    scores = rng.random(3000) + 0.5 * labels
    if decimals is not None:
      scores = np.round(scores, decimals)                # many ties
    scores = scores.astype(dtype)
    assert mt.auroc(scores, labels) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert mt.auprc(scores, labels) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-12)


def _volume(seed=3, shape=(20, 18, 10)):
  rng = np.random.default_rng(seed)
  brain = np.zeros(shape, bool)
  brain[2:-2, 2:-2, 1:-1] = True
  gt = np.zeros(shape, bool)
  gt[6:11, 5:9, 3:7] = True
  score = np.where(brain, rng.random(shape) * 0.6 + 0.5 * gt, 0).astype(np.float32)
  return score, gt, brain


def test_voxel_auc_brain_and_grid_match_sklearn():
  score, gt, brain = _volume()
  r = mt.voxel_auc(score, gt, brain)
  assert r["auroc"] == pytest.approx(skm.roc_auc_score(gt[brain], score[brain]), abs=1e-12)
  assert r["auprc"] == pytest.approx(skm.average_precision_score(gt[brain], score[brain]), abs=1e-12)
  assert r["auroc_grid"] == pytest.approx(skm.roc_auc_score(gt.ravel(), score.ravel()), abs=1e-12)
  assert r["auprc_grid"] == pytest.approx(
      skm.average_precision_score(gt.ravel(), score.ravel()), abs=1e-12)
  assert r["auroc_grid"] > r["auroc"]                    # background zeros inflate AUROC (Q14)


def _brute_surface(b):
  p = np.pad(b, 1)
  inner = np.ones_like(b)
  for axis in range(3):
    for shift in (-1, 1):
      inner &= np.roll(p, shift, axis=axis)[1:-1, 1:-1, 1:-1]
  return b & ~inner


def _brute_hd(pred, gt, spacing, q):
  a = np.argwhere(_brute_surface(pred)) * np.asarray(spacing)
  b = np.argwhere(_brute_surface(gt)) * np.asarray(spacing)
  d = distance.cdist(a, b)
  d_ab, d_ba = d.min(axis=1), d.min(axis=0)
  if q == "max":
    hmax = max(distance.directed_hausdorff(a, b)[0], distance.directed_hausdorff(b, a)[0])
    assert hmax == pytest.approx(max(d_ab.max(), d_ba.max()))
    return hmax
  return max(np.percentile(d_ab, q), np.percentile(d_ba, q))


def test_hd95_hand_and_spacing():
  pred = np.zeros((8, 8, 8), bool)
  gt = np.zeros((8, 8, 8), bool)
  pred[1, 1, 1] = True
  gt[1, 1, 4] = True                                     # 3 voxels apart along the last axis
  assert mt.hd95(pred, gt, spacing=(1, 1, 1)) == pytest.approx(3.0)
  assert mt.hd95(pred, gt) == pytest.approx(6.0)          # 2 mm voxels
  assert mt.hd95(pred, gt, spacing=(1, 1, 3)) == pytest.approx(9.0)
  assert mt.hausdorff_max(pred, gt, spacing=(5, 5, 0.5)) == pytest.approx(1.5)


def test_hd95_empty_is_nan():
  pred = np.zeros((5, 5, 5), bool)
  gt = pred.copy()
  gt[2, 2, 2] = True
  assert math.isnan(mt.hd95(pred, gt)) and math.isnan(mt.hd95(gt, pred))
  assert math.isnan(mt.hausdorff_max(pred, pred))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (1.0, 1.5, 3.0)])
def test_hd95_and_max_match_brute_force(spacing):
  rng = np.random.default_rng(4)
  for _ in range(3):
    pred = rng.random((14, 12, 10)) < 0.15
    gt = np.zeros((14, 12, 10), bool)
    gt[3:9, 4:10, 2:6] = True
    gt[0, 0, 0] = True                                   # touches the array border
    assert mt.hd95(pred, gt, spacing) == pytest.approx(_brute_hd(pred, gt, spacing, 95))
    assert mt.hausdorff_max(pred, gt, spacing) == pytest.approx(_brute_hd(pred, gt, spacing, "max"))


def test_slice_detection_axis_matters():
  score = np.zeros((4, 4, 4), np.float32)
  score[0] = 1.0                                         # the whole first sagittal plane is hot
  gt = np.zeros((4, 4, 4), bool)
  gt[0, 0, 0] = True
  brain = np.ones((4, 4, 4), bool)
  # axis 0: plane scores [1, 0, 0, 0], labels [1, 0, 0, 0] → perfect
  assert mt.slice_detection(score, gt, brain, axis=0) == pytest.approx((1.0, 1.0))
  # axial: every slice has mean 4/16, labels [1, 0, 0, 0] → all tied: AUROC 1/2, AP = 1/4
  assert mt.slice_detection(score, gt, brain) == pytest.approx((0.5, 0.25))


def test_slice_scores_no_brain_is_zero():
  score = np.ones((3, 3, 2), np.float32)
  brain = np.zeros((3, 3, 2), bool)
  brain[:, :, 0] = True
  brain[0, 0, 0] = False
  score[0, 0, 0] = 100.0                                 # outside the brain: ignored
  s, lab = mt.slice_scores(score, np.zeros_like(brain), brain)
  np.testing.assert_allclose(s, [1.0, 0.0])
  assert not lab.any()


def test_slice_label_counts_lesion_inside_the_brain_by_default():
  """A slice whose only lesion voxels lie outside the brain mask is lesion-free by default (as
  for the voxel metrics: lesion ∩ brain), lesional in faithful mode (the whole lesion map)."""
  score = np.zeros((4, 4, 3), np.float32)
  score[..., 0] = 1.0                                    # axial slice 0 is hot
  brain = np.zeros((4, 4, 3), bool)
  brain[1:3, 1:3, :] = True
  gt = np.zeros((4, 4, 3), bool)
  gt[1, 1, 0] = True                                     # slice 0: lesion in the brain
  gt[0, 0, 1] = True                                     # slice 1: lesion outside the brain only
  v = mt.volume_metrics(score, gt, brain, 0.5)
  # labels [1, 0, 0], scores [1, 0, 0] → perfect; with the outside voxel slice 1 would be a
  # positive scored 0, tied with slice 2: AUROC 3/4, AP (1 + 2/3) / 2
  assert (v["slice_auroc"], v["slice_auprc"]) == pytest.approx((1.0, 1.0))
  assert mt.slice_detection(score, gt, brain) == pytest.approx((0.75, 5 / 6))
  f = mt.volume_metrics(score, gt, brain, 0.5, faithful=True, slice_axis=2)
  assert (f["slice_auroc"], f["slice_auprc"]) == pytest.approx((0.75, 5 / 6))


def test_volume_detection_auroc():
  # patho 0.15 beats 0.1, loses to 0.2; 0.3 beats both → 3/4
  assert mt.volume_detection_auroc([0.1, 0.2], [0.15, 0.3]) == pytest.approx(0.75)


def test_volume_detection_auroc_leaves_out_undefined_scores():
  # A volume without brain voxels has no score (NaN, `volume_score`): it is left out, as from the
  # means, instead of sorting above every score (a NaN "win" or "loss" for every pair).
  assert mt.volume_detection_auroc([0.1, 0.2], [0.15, np.nan]) == pytest.approx(0.5)
  assert mt.volume_detection_auroc([0.1, np.nan], [0.15, 0.3]) == pytest.approx(1.0)
  assert math.isnan(mt.volume_detection_auroc([np.nan], [0.15]))


def test_volume_metrics_consistent_with_parts():
  score, gt, brain = _volume()
  t = 0.45
  v = mt.volume_metrics(score, gt, brain, t)
  pred = (score > np.float32(t)) & brain
  c = mt.confusion(pred, gt, brain)
  assert {k: v[k] for k in c} == c
  assert v["dice"] == pytest.approx(mt.dice(pred, gt & brain))
  assert v["precision"] == pytest.approx(skm.precision_score(gt[brain], pred[brain]))
  assert v["recall"] == pytest.approx(skm.recall_score(gt[brain], pred[brain]))
  assert v["fpr"] == pytest.approx(c["fp"] / (c["fp"] + c["tn"]))
  assert v["fdr"] == pytest.approx(c["fp"] / (c["fp"] + c["tp"]))
  assert v["auroc"] == pytest.approx(skm.roc_auc_score(gt[brain], score[brain]))
  assert v["auprc_grid"] == pytest.approx(skm.average_precision_score(gt.ravel(), score.ravel()))
  assert v["hd95_mm"] == pytest.approx(mt.hd95(pred, gt & brain))
  assert v["hausdorff_max_mm"] == pytest.approx(mt.hausdorff_max(pred, gt & brain))
  assert (v["slice_auroc"], v["slice_auprc"]) == pytest.approx(
      mt.slice_detection(score, gt & brain, brain))
  assert (v["best_dice"], v["best_threshold"]) == th.exact_best_threshold(score[brain], gt[brain])
  assert v["best_dice"] >= v["dice"]
  assert v["lesion_voxels"] == c["tp"] + c["fn"] == np.count_nonzero(gt & brain)
  assert v["volume_score"] == pytest.approx(score[brain].mean())
  assert not v["empty_prediction"]


def test_volume_metrics_faithful_and_empty_prediction():
  score, gt, brain = _volume()
  f = mt.volume_metrics(score, gt, brain, 0.45, faithful=True)
  assert f["auroc"] == f["auroc_grid"]
  assert f["tn"] == score.size - f["tp"] - f["fp"] - f["fn"]
  assert (f["best_dice"], f["best_threshold"]) == th.bisection_search(score, gt,
                                                                      reference_arithmetic=True)
  assert (f["slice_auroc"], f["slice_auprc"]) == pytest.approx(
      mt.slice_detection(score, gt, brain, axis=0))
  e = mt.volume_metrics(score, gt, brain, 10.0)
  assert e["empty_prediction"] and e["dice"] == 0.0 and e["predicted_voxels"] == 0
  assert math.isnan(e["hd95_mm"]) and math.isnan(e["precision"]) and e["recall"] == 0.0


def test_volume_metrics_no_lesion_volume():
  score, _, brain = _volume()
  gt = np.zeros_like(brain)
  with warnings.catch_warnings():
    warnings.simplefilter("error")                       # no RuntimeWarnings from 0/0
    v = mt.volume_metrics(score, gt, brain, 10.0)
  assert v["dice"] == 1.0 and math.isnan(v["auroc"]) and math.isnan(v["slice_auroc"])
  assert math.isnan(v["recall"]) and v["lesion_voxels"] == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_volume_metrics_non_finite_map_names_volume(bad):
  score, gt, brain = _volume()
  score[0, 0, 0] = bad                                   # outside the brain: still refused
  with pytest.raises(mt.NonFiniteScoreError, match="volume 'BraTS/sub-7'"):
    mt.volume_metrics(score, gt, brain, 0.5, name="BraTS/sub-7")
  with pytest.raises(ValueError, match="score map: anomaly scores contain"):
    mt.volume_metrics(score, gt, brain, 0.5, faithful=True)
