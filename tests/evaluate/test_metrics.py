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
  assert (v["slice_auroc"], v["slice_auprc"]) == pytest.approx(mt.slice_detection(score, gt, brain))
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


# ----------------------------------------------------------------------------- faithful conventions


def _three_volumes():
  """(score, gt, brain) of three 4×4×2 volumes with hand-known Dice at τ = 0.5 (scores 0.1 / 0.9).

  A: lesion 2 voxels, 2 predicted of which 1 in the lesion → 2·1/(2+2) = 0.5.
  B: lesion 2 voxels, exactly those predicted → 1.
  C: no lesion, nothing predicted → 0/0: 1 by default, NaN (reference) when faithful.
  """
  brain = np.ones((4, 4, 2), bool)
  vols = []
  for lesion, hot in (([0, 1], [1, 2]), ([0, 1], [0, 1]), ([], [])):
    gt, score = np.zeros(32, bool), np.full(32, 0.1, np.float32)
    gt[lesion], score[hot] = True, 0.9
    vols.append((score.reshape(brain.shape), gt.reshape(brain.shape), brain))
  return vols


def test_empty_gt_dice_default_one_faithful_nan_and_mean():
  from sadm_jax.evaluate import records
  for faithful, dices, mean in ((False, [0.5, 1.0, 1.0], 2.5 / 3), (True, [0.5, 1.0, None], 0.75)):
    recs = [mt.volume_metrics(s, g, b, 0.5, faithful=faithful) for s, g, b in _three_volumes()]
    for rec, d in zip(recs, dices):
      assert (math.isnan(rec["dice"]) if d is None else rec["dice"] == d)
    assert recs[2]["empty_prediction"] and recs[2]["lesion_voxels"] == 0
    assert records.summarise(recs)["dice"] == pytest.approx(mean)  # NaN drops out (nanmean)


def test_report_states_empty_gt_convention():
  from sadm_jax.evaluate import report
  base = {"grid": [96, 96, 50], "within_brain": True, "threshold_method": "exact",
          "shared_noise": False, "median_size": 5, "residual_mode": "ssim", "combination": "sum",
          "timesteps": [249, 499, 749], "spacing_mm": 2.0, "noise": "simplex", "dtype": "float32",
          "faithful": False, "faithful_metrics": False, "seed": 3141}
  text = report.protocol_text(base)
  assert "no lesion and an empty prediction counts as Dice 1" in text
  assert "input-only UNet mean σ(S) · M" in text  # the map of the 'Unet (input only)' rows
  assert "volumes without lesion and empty predictions excluded" in report.FOOTNOTE  # HD95
  text = report.protocol_text({**base, "faithful": True, "faithful_metrics": True})
  assert "undefined Dice (0/0 = NaN" in text and "left out of the mean" in text


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_volume_metrics_non_finite_map_names_volume(bad):
  score, gt, brain = _volume()
  score[0, 0, 0] = bad                                   # outside the brain: still refused
  with pytest.raises(mt.NonFiniteScoreError, match="volume 'BraTS/sub-7'"):
    mt.volume_metrics(score, gt, brain, 0.5, name="BraTS/sub-7")
  with pytest.raises(ValueError, match="score map: anomaly scores contain"):
    mt.volume_metrics(score, gt, brain, 0.5, faithful=True)


def _test_pass_record(faithful_metrics: bool, tau: float) -> dict:
  """`records.test_record` for one hand-made slice-major volume (no models, no files)."""
  from sadm_jax.evaluate import records
  # One lesion voxel scored 0.9, one background voxel 0.6, the rest 0.1: the oracle threshold
  # is 0.6 (only the lesion is predicted, Dice 1); τ = 0.5 also predicts the 0.6 voxel.
  score, seg = np.full((2, 4, 4), 0.1, np.float32), np.zeros((2, 4, 4), bool)
  score[1, 1, 1], seg[1, 1, 1], score[0, 2, 2] = 0.9, True, 0.6
  rec = records.base("vol-1", score, None, np.ones_like(seg), seg)
  return records.test_record(rec, score, seg, np.ones_like(seg), (2.0, 2.0, 2.0), faithful_metrics,
                             tau, {})


def test_test_pass_best_threshold_oracle_or_reference_overwrite():
  rec = _test_pass_record(False, 0.5)
  assert rec["dice"] == pytest.approx(2 / 3) and rec["threshold"] == 0.5
  assert (rec["best_dice"], rec["best_threshold"]) == (1.0, pytest.approx(0.6))  # per-volume oracle
  rec = _test_pass_record(True, 0.5)
  assert rec["best_dice"] == 1.0 and rec["best_threshold"] == 0.5  # the reference stored τ


def test_no_lesion_oracle_follows_the_empty_dice_convention():
  # No lesion; one voxel scored 0.9, the rest 0.1. The oracle's threshold (the max score, 0.9)
  # predicts nothing: empty vs empty, Dice 1 by the default convention (Q34) — as the Dice at a
  # τ that predicts nothing — never below the Dice at any τ. Faithful: the reference's bisection
  # keeps its initial 0 (its 0/0 Dice is NaN and loses every comparison).
  brain = np.ones((4, 4, 2), bool)
  score = np.full(brain.shape, 0.1, np.float32)
  score[0, 0, 0] = 0.9
  gt = np.zeros_like(brain)
  for tau, dice in ((0.5, 0.0), (1.0, 1.0)):
    v = mt.volume_metrics(score, gt, brain, tau)
    assert v["dice"] == dice and v["best_dice"] == 1.0
    assert v["best_threshold"] == pytest.approx(0.9)
    assert np.count_nonzero(score > np.float32(v["best_threshold"])) == 0
  f = mt.volume_metrics(score, gt, brain, 1.0, faithful=True)
  assert math.isnan(f["dice"]) and f["best_dice"] == 0.0


def test_dice_at_fpr_thresholds_follow_the_empty_dice_convention():
  # A volume without lesion, nothing above τ = 1 nor above the FPR threshold 0.95: the Dice at
  # the FPR threshold is the same empty–empty Dice as the Dice at τ — 1, or NaN when faithful.
  from sadm_jax.evaluate import records
  seg = np.zeros((2, 4, 4), bool)
  score = np.full(seg.shape, 0.1, np.float32)
  score[0, 0, 0] = 0.9
  for faithful in (False, True):
    rec = records.test_record(records.base("v", score, None, np.ones_like(seg), seg), score, seg,
                              np.ones_like(seg), (2.0, 2.0, 2.0), faithful, 1.0,
                              {"t_fpr1": 0.95, "t_fpr5": 0.5})
    empty = math.isnan if faithful else (lambda d: d == 1.0)
    assert empty(rec["dice"]) and empty(rec["dice_at_t_fpr1"])
    assert rec["dice_at_t_fpr5"] == 0.0                  # one voxel predicted, no lesion


def test_healthy_record_fpr_hand_and_undefined_without_brain():
  from sadm_jax.evaluate import records
  a = np.zeros((2, 2, 2), np.float32)
  a[0, 0, 0], a[1, 1, 1] = 0.9, 0.6                      # 1 of 4 brain voxels above 0.7
  mask = np.zeros((2, 2, 2), bool)
  mask[0] = True
  mask[1, 1, 1] = False
  mask[1, 0, 0] = True
  rec = records.healthy_record({"name": "h"}, a, mask, False, {"t_fpr1": 0.7})
  assert rec["voxel_fpr_at_t_fpr1"] == pytest.approx(1 / 5)  # 0.9 in the brain, 0.6 outside
  assert records.healthy_record({"name": "h"}, a, mask, True, {"t_fpr1": 0.5})[
      "voxel_fpr_at_t_fpr1"] == pytest.approx(2 / 8)        # faithful: whole grid
  # no brain voxel: no rate (NaN, left out of the mean), not 0 %
  rec = records.healthy_record({"name": "h"}, a, np.zeros_like(mask), False, {"t_fpr1": 0.7})
  assert math.isnan(rec["voxel_fpr_at_t_fpr1"]) and math.isnan(rec["volume_score"])


def test_oracle_is_never_below_the_dice_at_tau():
  # ⌈Dice⌉ is the best Dice over thresholds: a τ below every brain score predicts the whole brain,
  # which the oracle must count too (lesion at the lowest score: Dice 2·3/(3+4) = 6/7).
  brain = np.ones((2, 2, 1), bool)
  score = np.array([0.1, 0.1, 0.1, 0.5], np.float32).reshape(brain.shape)
  gt = np.array([1, 1, 1, 0], bool).reshape(brain.shape)
  v = mt.volume_metrics(score, gt, brain, 0.05)
  assert v["dice"] == pytest.approx(6 / 7)
  assert v["best_dice"] == pytest.approx(6 / 7) and v["best_threshold"] < 0.1


def test_report_names_runs_whose_tau_saw_their_training_volumes(tmp_path):
  # The protocol says weakly supervised runs tune τ on held-out rows; a run left without one
  # (`planning.val_rows` falls back to every row) must be named, not covered by that sentence.
  from sadm_jax.evaluate import report
  base = {"grid": [96, 96, 50], "within_brain": True, "threshold_method": "exact",
          "shared_noise": False, "median_size": 5, "residual_mode": "ssim", "combination": "sum",
          "timesteps": [249, 499, 749], "spacing_mm": 2.0, "noise": "simplex", "dtype": "float32",
          "faithful": False, "faithful_metrics": False, "seed": 3141}
  row = lambda set_name, how: {"method": "sadm", "train_anomalies": "Brats21", "fold": "repeat0",
                               "test_set": set_name, "n_volumes": 2, "dice": 0.5, "tau_rows": how}
  ok = [row("Brats21", "held-out (rows outside 1:3)"), row("ATLAS_v2", "all")]
  assert "SegUnet's training volumes" not in report.write_report(str(tmp_path), ok, base)
  bad = [row("Brats21", "all (contains SegUnet training volumes, Q15)"), row("ATLAS_v2", "all")]
  text = report.write_report(str(tmp_path), bad, base)
  assert "sadm/Brats21/repeat0 on Brats21" in text and "SegUnet's training volumes" in text
