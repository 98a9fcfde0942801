"""Weak supervision end to end: SADM trained on labelled BraTS rows, evaluated with τ from held-out rows."""

from __future__ import annotations

import csv
import os

from configs import sadm_brats
from sadm_jax import main as main_lib
from tests.evaluate.conftest import evaluate_tiny_config
from tests.helpers import with_data


def test_sadm_brats_trains_and_is_evaluated_on_held_out_rows(eval_data_dir, tiny_cddpm_dir,
                                                              tmp_path):
  sadm_dir = str(tmp_path / "sadm_brats")
  c = with_data(sadm_brats.get_config("tiny"), eval_data_dir)
  c.sadm.cddpm_workdir = tiny_cddpm_dir
  c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = 2
  result = main_lib.run_stage(c, sadm_dir)
  assert result["step"] == 2 and result["best_val_loss"] > 0
  # 3 rows in the fake Brats21_val: row 0 validates, rows 1-2 train (train.sadm.weak_row_ranges).
  workdir = str(tmp_path / "evaluation")
  e = evaluate_tiny_config(eval_data_dir, tiny_cddpm_dir, [sadm_dir])
  e.evaluate.methods = ("sadm",)
  e.evaluate.test_sets = ("Brats21", "ATLAS_v2")
  e.evaluate.include_ixi = False
  summary = main_lib.run_stage(e, workdir)
  assert summary["volumes_computed"] == 1 + 3 + 3 + 3  # Brats21 val: only the held-out row
  with open(os.path.join(workdir, "report", "metrics.csv")) as f:
    rows = {r["test_set"]: r for r in csv.DictReader(f)}
  assert set(rows) == {"Brats21", "ATLAS_v2"}
  for r in rows.values():
    assert (r["method"], r["train_anomalies"], r["fold"]) == ("sadm", "Brats21", "repeat0")
    assert int(r["n_volumes"]) == 3 and 0.0 <= float(r["dice"]) <= 1.0
  # τ on BraTS from the held-out row only (Q15); on ATLAS (never trained on) from all its rows.
  assert rows["Brats21"]["tau_rows"].startswith("held-out") and rows["Brats21"]["n_val_volumes"] == "1"
  assert rows["ATLAS_v2"]["tau_rows"] == "all" and rows["ATLAS_v2"]["n_val_volumes"] == "3"
