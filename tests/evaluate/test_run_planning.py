"""Planning an evaluation: its runs, models, splits and τ rows; the report's tables and protocol."""

from __future__ import annotations

import os
import shutil

from sadm_jax import config as config_lib
from sadm_jax.data.splits import Row
from sadm_jax.evaluate import inference, passes as passes_lib, planning, report
from tests.evaluate.conftest import evaluate_tiny_config


def _rows(n):
  return [Row(f"v{i}", "Brats21_val", "Brats21", "val", i, 1, 50.0, f"/x/v{i}.nii.gz",
              f"/x/m{i}.nii.gz", f"/x/s{i}.nii.gz", "/x/Brats21_val.csv") for i in range(n)]


def test_weakly_supervised_runs_tune_only_on_held_out_rows():
  rows = _rows(8)
  run = planning.EvalRun("sadm", "Brats21", "repeat0", 0,
                        held_out=("Brats21", "brats", (2, 8), (0, 2)))
  keep, how = planning.val_rows(run, "Brats21", rows)
  assert [r.name for r in keep] == ["v0", "v1"] and how.startswith("held-out")
  keep, how = planning.val_rows(run, "ATLAS_v2", rows)  # another data set: all its val rows
  assert keep == rows and how == "all"
  # Reference rows (BraTS trains on 10-99) on a full-size split: τ from rows 0-9 only (Q15).
  ref = planning.EvalRun("sadm", "Brats21", "repeat0", 0, held_out=("Brats21", "brats", None, None))
  keep, _ = planning.val_rows(ref, "Brats21", _rows(100))
  assert [r.index for r in keep] == list(range(10))


def test_held_out_rows_are_those_stage_two_did_not_train_on():
  # Stage II read Brats21_val alone (12 rows: trains on 10:12 = v10, v11, the demo-size rule).
  # The evaluation reads it together with Brats21_test, and cleaning (test > val, Q17) drops v0,
  # which both hold: by position, 11 rows → training rows 10:11 = v11, and v10 — a training
  # volume — landed in the τ pool. By identity the pool is v1..v9.
  stage2 = _rows(12)
  evaluated = stage2[1:]
  run = planning.EvalRun("sadm", "Brats21", "repeat0", 0,
                        held_out=("Brats21", "brats", None, None))
  keep, how = planning.val_rows(run, "Brats21", evaluated, stage2)
  assert [r.name for r in keep] == [f"v{i}" for i in range(1, 10)] and how.startswith("held-out")
  passes = passes_lib.val_passes([run], {"Brats21_val": evaluated}, ["Brats21"], False,
                               {run.id: stage2})
  assert passes[0].rows[run.id] == keep


def test_stage_two_val_rows_are_read_as_stage_two_read_them(tmp_path):
  """`stage2_val_rows` reads <set>_val alone, cleaned with the run's own setting, whatever the
  evaluation's test split shares with it."""
  import ml_collections
  from sadm_jax.data import layout, splits as splits_lib
  from tests.data import fake_data
  row = lambda n: [n, "M", 1, 50, f"/Test/Brats21/t1/{n}_t1.nii.gz",
                   f"/Test/Brats21/mask/{n}_mask.nii.gz", f"/Test/Brats21/seg/{n}_seg.nii.gz"]
  base = tmp_path / "Data" / "splits"
  fake_data.write_csv(str(base / "Brats21_val.csv"), [row(f"v{i}") for i in range(12)])
  fake_data.write_csv(str(base / "Brats21_test.csv"), [row("v0"), row("t1")])
  root = layout.resolve_data_root(str(tmp_path))
  splits, _ = splits_lib.load_splits(root, ["Brats21_val", "Brats21_test"])
  assert [r.name for r in splits["Brats21_val"]][:2] == ["v1", "v2"]  # v0 kept in test only
  run = planning.EvalRun("sadm", "Brats21", "repeat0", 0, sadm_workdir="/w",
                        held_out=("Brats21", "brats", None, None))
  cfg = ml_collections.ConfigDict({"faithful": False, "data": {"clean_splits": None,
                                                                "skip_invalid": False}})
  stage2 = planning.stage2_val_rows(root, [run], {"/w": cfg}, ["Brats21"], "t1", lambda rows: set())
  # Stage II's split alone is cleaned against <set>_test on disk too (test > val, Q17), so it is
  # the evaluation's list: v1..v11; it trained on rows 10: (v11) and τ uses v1..v10.
  assert [r.name for r in stage2[run.id]] == [f"v{i}" for i in range(1, 12)]
  vals = passes_lib.val_passes([run], splits, ["Brats21"], False, stage2)
  assert [r.name for r in vals[0].rows[run.id]] == [f"v{i}" for i in range(1, 11)]
  # Without cleaning (the run's own setting) stage II read all twelve: it trained on v10, v11.
  cfg.data.clean_splits = False
  stage2 = planning.stage2_val_rows(root, [run], {"/w": cfg}, ["Brats21"], "t1", lambda rows: set())
  assert [r.name for r in stage2[run.id]] == [f"v{i}" for i in range(12)]
  vals = passes_lib.val_passes([run], splits, ["Brats21"], False, stage2)
  assert [r.name for r in vals[0].rows[run.id]] == [f"v{i}" for i in range(1, 10)]


def test_needed_splits_follow_test_sets_include_ixi_and_methods():
  """Which splits an evaluation loads and which passes it runs (known answers)."""
  import ml_collections
  avail = ["IXI_train_fold0", "IXI_val_fold0", "IXI_test", "Brats21_val", "Brats21_test",
           "ATLAS_v2_val", "ATLAS_v2_test", "WMH_val"]  # no WMH_test
  cfg = lambda sets, ixi: ml_collections.ConfigDict(
      {"evaluate": {"test_sets": sets, "include_ixi": ixi}})
  sadm = [planning.EvalRun("sadm", "Brats21", "repeat0", 0)]
  names, sets, ixi = planning.needed_splits(cfg(("Brats21", "ATLAS_v2"), False), sadm, avail)
  assert names == ["Brats21_val", "Brats21_test", "ATLAS_v2_val", "ATLAS_v2_test"]
  assert sets == ["Brats21", "ATLAS_v2"] and ixi is False
  names, sets, ixi = planning.needed_splits(cfg(("Brats21",), True), sadm, avail)
  assert names == ["IXI_val_fold0", "IXI_test", "Brats21_val", "Brats21_test"] and ixi is True
  # DRAEM needs the IXI splits even without the IXI passes; the threshold adds IXI_train;
  # a set without its test split is skipped.
  runs = [planning.EvalRun("threshold", "none", "fold0", 0)] + sadm
  names, sets, ixi = planning.needed_splits(cfg(("DRAEM", "WMH"), False), runs, avail)
  assert names == ["IXI_val_fold0", "IXI_test", "IXI_train_fold0"]
  assert sets == ["DRAEM"] and ixi is False


def test_csv_columns_and_fold_table():
  rows = [{"method": "sadm", "train_anomalies": "draem", "test_set": "Brats21", "fold": f"fold{k}",
           "n_volumes": 2, "dice": d, "dice_std": 0.1, "best_dice": d + 0.1, "auprc": 0.5,
           "auroc": 0.9, "zeta": 1.0, "zeta_std": 0.0, "alpha": 2.0}
          for k, d in enumerate((0.5, 0.7))]
  assert report.csv_columns(rows) == ["method", "train_anomalies", "test_set", "fold", "n_volumes",
                                      "dice", "best_dice", "auprc", "auroc", "dice_std", "alpha",
                                      "zeta", "zeta_std"]
  table = report.format_table(rows)
  assert "| SADM | draem | 2 | 60.00 ± 10.00 | 70.00 ± 10.00 | 50.00 ± 0.00 |" in table


def test_table_rows_follow_table_1():
  """Methods threshold, cDDPM, UNet, SADM; within each, DRAEM then BraTS then ATLAS labels."""
  combos = [("sadm", "ATLAS_v2"), ("unet", "draem"), ("sadm", "draem"), ("cddpm", "none"),
            ("sadm", "Brats21"), ("threshold", "none"), ("unet", "ATLAS_v2"), ("unet", "Brats21")]
  rows = [{"method": m, "train_anomalies": a, "test_set": "Brats21", "fold": "fold0", "dice": 0.5}
          for m, a in combos]
  lines = report.format_table(rows, metrics=(("Dice", "dice"),)).splitlines()[2:]
  U = report.METHOD_NAMES["unet"]
  assert [tuple(c.strip() for c in ln.split("|")[1:3]) for ln in lines] == [
      ("Intensity threshold", "—"), ("cDDPM", "—"), (U, "draem"), (U, "Brats21"),
      (U, "ATLAS_v2"), ("SADM", "draem"), ("SADM", "Brats21"), ("SADM", "ATLAS_v2")]


def test_each_checkpoint_is_read_once(eval_data_dir, tiny_cddpm_dir, tiny_sadm_dir, monkeypatch):
  """The SADM run's frozen cDDPM is the evaluated cDDPM: opened once, shared by both rows."""
  from sadm_jax import config as config_lib
  from sadm_jax.evaluate.planning import Models, plan_runs
  from sadm_jax.train import checkpoint
  opened = []
  real = checkpoint.Checkpointer.restore_saved
  monkeypatch.setattr(checkpoint.Checkpointer, "restore_saved",
                      lambda self, *a, **k: opened.append(os.path.dirname(self.best_dir)) or real(self, *a, **k))
  c = config_lib.resolve(evaluate_tiny_config(eval_data_dir, tiny_cddpm_dir, [tiny_sadm_dir]))
  models = Models(c)
  runs = plan_runs(c, models)
  assert sorted(r.method for r in runs) == ["cddpm", "sadm", "threshold"]
  assert sorted(map(os.path.abspath, opened)) == sorted(map(os.path.abspath,
                                                            [tiny_cddpm_dir, tiny_sadm_dir]))
  assert len(models.cddpms) == 1  # the rows share one reconstruction program


def test_cddpm_rows_are_the_sadm_runs_frozen_cddpm_where_it_was_found(
    eval_data_dir, tiny_cddpm_dir, tiny_sadm_dir, tmp_path):
  """Without evaluate.cddpm_workdir the cDDPM rows evaluate the SADM runs' own cDDPM where
  `open_run` found it (here: copied together with the SADM run, at the recorded relative path),
  not at the SADM run's saved sadm.cddpm_workdir (the original, which may be gone or retrained)."""
  from sadm_jax.evaluate.planning import Models, plan_runs
  from sadm_jax.train.runs import open_run
  rel = open_run(tiny_sadm_dir).meta["run"]["cddpm"]["relative"]
  moved = tmp_path.joinpath(*[f"d{i}" for i in range(rel.split(os.sep).count(".."))], "sadm")
  moved_cddpm = os.path.normpath(os.path.join(moved, rel))
  assert moved_cddpm.startswith(str(tmp_path))
  shutil.copytree(tiny_sadm_dir, moved)
  shutil.copytree(tiny_cddpm_dir, moved_cddpm)
  c = config_lib.resolve(evaluate_tiny_config(eval_data_dir, "", [str(moved)]))
  models = Models(c)
  runs = {r.method: r for r in plan_runs(c, models)}
  assert runs["cddpm"].cddpm_workdir == moved_cddpm
  assert models.frozen_cddpm_workdirs == {str(moved): moved_cddpm}
  assert runs["cddpm"].cddpm_key == runs["sadm"].cddpm_key and len(models.cddpms) == 1


def test_the_protocol_names_the_noise_the_cddpm_draws(eval_data_dir):
  """The ensemble draws the noise kind the cDDPM was trained with (`NoiseSpec.from_configs`), not
  the evaluation config's diffusion.noise: the report states the model's."""
  c = evaluate_tiny_config(eval_data_dir, "")
  assert c.diffusion.noise == "simplex"
  model = evaluate_tiny_config(eval_data_dir, "")
  model.diffusion.noise = "gaussian"
  assert inference.NoiseSpec.from_configs(model, c).kind == "gaussian"
  proto = planning.protocol(config_lib.resolve(c), (8, 64, 64), 2.0, [model])
  assert proto["noise"] == "gaussian" and "(gaussian noise," in report.protocol_text(proto)
  assert planning.protocol(config_lib.resolve(c), (8, 64, 64), 2.0, [])["noise"] == "simplex"


def test_the_threshold_baseline_runs_on_the_folds_of_the_evaluated_cddpm():
  """methods=('threshold', 'cddpm') with a cDDPM trained on fold 2: the baseline takes its median
  from IXI_train_fold2 and its IXI/DRAEM rows from IXI_val_fold2, as the cDDPM row (it took
  config.data.fold, 0, so the two rows of the table came from different folds)."""
  import ml_collections

  class Stub:  # the one cDDPM `plan_runs` opens
    frozen_cddpm_workdirs: dict = {}
    cddpm_configs = {"k": ml_collections.ConfigDict({"data": {"fold": 2}})}

    def cddpm(self, workdir):
      return "k"

  c = ml_collections.ConfigDict({"data": {"fold": 0}, "evaluate": {
      "methods": ("threshold", "cddpm"), "sadm_workdirs": (), "cddpm_workdir": "/runs/c"}})
  runs = planning.plan_runs(c, Stub())
  assert [(r.method, r.fold, r.data_fold) for r in runs] == [("threshold", "fold2", 2),
                                                             ("cddpm", "fold2", 2)]


def test_fold_labels_are_unique_per_method_and_anomalies_only():
  """The SADM and the input-only UNet runs of one mode and fold are rows of their own
  ('sadm/Brats21/repeat0', 'unet/Brats21/repeat0'); only a second run of the same method, mode
  and fold gets a suffix. (The UNet's label was 'repeat0_1', as if it were a second repeat.)"""
  import ml_collections

  def cfg(mode, fold=0, repeat=0):
    return ml_collections.ConfigDict({"sadm": {"mode": mode, "repeat": repeat, "cddpm_workdir": "",
                                               "weak_train_rows": None, "weak_val_rows": None},
                                      "data": {"fold": fold}})

  runs = {"/s_brats": (cfg("brats"), "k"), "/u_brats": (cfg("brats"), ""),
          "/s_brats_again": (cfg("brats"), "k"), "/s_draem": (cfg("draem"), "k"),
          "/u_draem": (cfg("draem"), ""), "/u_draem_fold1": (cfg("draem", fold=1), "")}

  class Stub:  # the SADM runs `plan_runs` opens: (config, its cDDPM's key, '' = input only)
    frozen_cddpm_workdirs: dict = {}

    def sadm(self, workdir):
      return runs[workdir]

  c = ml_collections.ConfigDict({"data": {"fold": 0}, "evaluate": {
      "methods": ("sadm",), "sadm_workdirs": tuple(runs), "cddpm_workdir": "",
      "combination": "multiply"}})
  ids = [r.id for r in planning.plan_runs(c, Stub())]
  assert ids == ["sadm/Brats21/repeat0", "unet/Brats21/repeat0", "sadm/Brats21/repeat0_1",
                 "sadm/draem/fold0", "unet/draem/fold0", "unet/draem/fold1"]
