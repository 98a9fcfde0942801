"""Metrics' conventions (faithful or not): empty-lesion Dice, oracle, FPR thresholds, report."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from sadm_jax.evaluate import metrics as mt


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


def test_stale_volume_outputs_are_removed_and_nothing_else(tmp_path):
  """Of the files under report/volumes/ only those `write_volume_outputs` names and the current
  evaluation does not write go; then the folders left empty (never the root)."""
  from sadm_jax.evaluate import report
  root = tmp_path / "volumes"
  keep_dir, old_dir = root / "sadm" / "draem" / "fold0" / "A", root / "unet" / "draem" / "fold0" / "A"
  for d in (keep_dir, old_dir):
    d.mkdir(parents=True)
  kept = report.volume_output_paths(str(keep_dir), "v1", nifti=True, png=False, recon=True)
  old = [*kept.values(), str(keep_dir / "v1_montage.png"), str(keep_dir / "v2_anomaly.nii.gz"),
         *report.volume_output_paths(str(old_dir), "v1", png=True).values()]
  for path in old + [str(keep_dir / "README.txt")]:
    open(path, "w").close()
  assert report.remove_stale_outputs(str(root), set(kept.values())) == len(old) - len(kept)
  assert sorted(os.listdir(keep_dir)) == sorted(["README.txt", *map(os.path.basename, kept.values())])
  assert sorted(os.listdir(root)) == ["sadm"]  # unet/draem/fold0/A emptied: removed
  assert report.remove_stale_outputs(str(root), set()) == len(kept)
  assert os.listdir(keep_dir) == ["README.txt"] and os.path.isdir(root)


def test_temporary_files_of_killed_volume_writes_are_removed(tmp_path, monkeypatch):
  """A SIGKILL while a montage or map was being written leaves its hidden temporary file (no
  clean-up runs); the next evaluation's report removed none of them, and never the folder."""
  from sadm_jax.evaluate import report
  from sadm_jax.utils import io
  folder = tmp_path / "volumes" / "cddpm" / "none" / "fold0" / "A"
  paths = report.volume_output_paths(str(folder), "v1", nifti=True, png=True, recon=True)

  monkeypatch.setattr(io.os, "remove", lambda p: None)  # (no clean-up runs after a SIGKILL)
  for what, ext in (("montage", ".png"), ("anomaly", ".nii.gz")):  # as write_png, save_volume
    with pytest.raises(KeyboardInterrupt):
      with io.atomic_path(paths[what], suffix=ext) as tmp:
        open(tmp, "wb").close()  # begun, then killed
        raise KeyboardInterrupt
  monkeypatch.undo()
  left = os.listdir(folder)
  assert len(left) == 2 and all(n.startswith(".") and ".tmp" in n for n in left), left
  (folder / ".notes").write_text("mine")
  assert report.remove_stale_outputs(str(tmp_path / "volumes"), set()) == 2
  assert os.listdir(folder) == [".notes"]
