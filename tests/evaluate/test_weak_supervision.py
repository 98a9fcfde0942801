"""Weak supervision end to end: SADM and the UNet trained on labelled BraTS/ATLAS rows, evaluated with τ from held-out rows."""

from __future__ import annotations

import collections
import csv
import glob
import json
import os

import numpy as np
import pytest

from sadm_jax.evaluate import thresholds
from sadm_jax.train import sadm
from tests.helpers import metric_series


def test_weakly_supervised_runs_train_and_are_evaluated_on_held_out_rows(tiny_reproduction_run):
  """The Table-1 reproduction's weakly supervised members (tests/conftest.py: the CLI, in the
  background) and its evaluation of them: each computes only its held-out validation rows of
  the pathology it was trained on (the others train it), every row of the others, and takes τ
  from those rows (Q15)."""
  workdir = tiny_reproduction_run[0]
  for member in ("sadm_brats-0", "sadm_atlas-0", "unet_brats-0", "unet_atlas-0"):
    for key in ("train/loss", "val/loss"):
      series = metric_series(os.path.join(workdir, member), key)
      assert series and all(np.isfinite(v) for _, v in series), (member, key)
  evaluation = os.path.join(workdir, "evaluate")
  with open(os.path.join(evaluation, "eval", "process_0-of-1.json")) as f:
    computed = json.load(f)["computed"]
  # '<method>/<train anomalies>/<fold>/<test set>/<split>/<volume>' -> count per model and split
  count = collections.Counter(tuple(k.split("/")[i] for i in (0, 1, 3, 4)) for k in computed)
  val = {s: count["cddpm", "none", s, "val"] for s in ("Brats21", "ATLAS_v2")}
  assert min(val.values()) >= 2, val  # >= 1 row trains, >= 1 is held out
  with open(os.path.join(evaluation, "report", "metrics.csv"), newline="") as f:
    rows = {(r["method"], r["train_anomalies"], r["test_set"]): r for r in csv.DictReader(f)}
  for method in ("sadm", "unet"):
    for label, mode in (("Brats21", "brats"), ("ATLAS_v2", "atlas")):
      train, held_out = sadm.weak_row_ranges(mode, val[label])
      n_held = held_out[1] - held_out[0]
      assert n_held >= 1 and train[1] - train[0] >= 1
      for test_set in ("Brats21", "ATLAS_v2"):
        own = test_set == label
        want = n_held if own else val[test_set]
        assert count[method, label, test_set, "val"] == want, (method, label, test_set)
        r = rows[method, label, test_set]
        assert r["n_val_volumes"] == str(want), (method, label, test_set)
        tau_rows = r["tau_rows"]
        assert tau_rows.startswith("held-out") if own else tau_rows == "all", tau_rows
        assert r["fold"].startswith("repeat0") and 0.0 <= float(r["dice"]) <= 1.0


def _maps(folder: str, names) -> tuple[list, list, list]:
  out = ([], [], [])
  for name in names:
    with np.load(os.path.join(folder, f"{name}.npz")) as z:
      for acc, key in zip(out, ("anomaly", "gt", "mask")):
        acc.append(z[key])
  return out


def test_weak_sadm_rows_carry_their_cddpm_on_the_same_held_out_rows(tiny_reproduction_run):
  """A weakly supervised SADM's own-pathology validation Dice comes from its held-out rows only;
  its row also carries its cDDPM's pooled Dice at τ on exactly those rows (computed here again
  from the stored maps), which the reproduction's claim 2 compares it with. The input-only UNet
  (no cDDPM) and the unlabelled pathologies (all rows on both sides) carry none."""
  evaluation = os.path.join(tiny_reproduction_run[0], "evaluate")
  with open(os.path.join(evaluation, "report", "metrics.csv"), newline="") as f:
    rows = {(r["method"], r["train_anomalies"], r["test_set"]): r for r in csv.DictReader(f)}
  key = "cddpm_val_pooled_dice_same_rows"
  eval_dir = os.path.join(evaluation, "eval")
  for label in ("Brats21", "ATLAS_v2"):
    for test_set in ("Brats21", "ATLAS_v2"):
      if test_set != label:
        assert rows["sadm", label, test_set][key] == "", (label, test_set)
      assert rows["unet", label, test_set][key] == "", (label, test_set)
    own = glob.glob(os.path.join(eval_dir, "sadm", label, "repeat0", label, "val", "*.npz"))
    names = sorted(os.path.basename(p)[:-4] for p in own)
    (cddpm_dir,) = glob.glob(os.path.join(eval_dir, "cddpm", "none", "*", label, "val"))
    everything = sorted(os.path.basename(p)[:-4] for p in glob.glob(f"{cddpm_dir}/*.npz"))
    assert 1 <= len(names) < len(everything), (names, everything)
    want, _ = thresholds.select_threshold(*_maps(cddpm_dir, names), method="exact",
                                          within_brain=True)
    assert float(rows["sadm", label, label][key]) == pytest.approx(float(want), abs=1e-12)
