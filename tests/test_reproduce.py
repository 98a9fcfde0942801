"""The Table-1 reproduction: its members, the three claims on hand-made rows (test and validation), table.md, the stage with a fake runner."""

import csv
import json
import os
import re

import pytest

from configs import reproduce as reproduce_config
from sadm_jax import reproduce
from sadm_jax.sweeps import members as members_lib
from sadm_jax.sweeps import runner

# Paper Table 1 ⌈Dice⌉ (BraTS, ATLAS; README "Reproducing Table 1") and made-up WMH numbers, in %, used as Dice.
PAPER = {("cddpm", "none"): (58.55, 24.74, 10.0), ("sadm", "draem"): (60.53, 27.78, 12.0),
         ("unet", "draem"): (40.75, 16.91, 5.0), ("unet", "Brats21"): (64.81, 11.82, 5.0),
         ("sadm", "Brats21"): (69.68, 26.77, 11.0), ("unet", "ATLAS_v2"): (35.13, 46.30, 5.0),
         ("sadm", "ATLAS_v2"): (58.85, 47.64, 10.5), ("threshold", "none"): (20.0, 4.4, 9.0)}
SETS = ("Brats21", "ATLAS_v2", "WMH")


def _rows(changes=None, folds=("fold0",), spread=0.0, drop=()):
  """Evaluation rows from PAPER (test Dice = validation Dice), with `changes`
  {(method, anomalies, set, 'test'|'val'): value in %}; fold i adds (-1)^i · spread points."""
  changes = changes or {}
  rows = []
  for (method, anomalies), values in PAPER.items():
    for s, v in zip(SETS, values):
      if (method, anomalies, s) in drop:
        continue
      for i, fold in enumerate(folds):
        d = spread * (-1) ** i
        test = changes.get((method, anomalies, s, "test"), v) + d
        val = changes.get((method, anomalies, s, "val"), v) + d
        rows.append({"method": method, "train_anomalies": anomalies, "test_set": s, "fold": fold,
                     "n_volumes": 5, "dice": test / 100, "best_dice": (test + 3) / 100,
                     "auprc": (test + 1) / 100, "val_pooled_dice": val / 100})
        if method == "sadm" and anomalies == s:  # a weak SADM's own set: its held-out rows
          same = changes.get((method, anomalies, s, "cddpm_same_rows"),
                             changes.get(("cddpm", "none", s, "val"), PAPER["cddpm", "none"][
                                 SETS.index(s)]))
          if same is not None:
            rows[-1][reproduce.SAME_ROWS] = (same + d) / 100
  return rows


def _verdicts(claims):
  return {k: (claims[k]["holds_on_test"], claims[k]["holds_on_validation"])
          for k in ("claim1", "claim2", "claim3")}


def test_the_papers_numbers_satisfy_all_three_claims():
  claims = reproduce.check_claims(_rows())
  assert _verdicts(claims) == {k: (True, True) for k in ("claim1", "claim2", "claim3")}
  assert claims["pathologies"] == list(SETS)
  assert claims["metric"] == {"test": "dice", "validation": "val_pooled_dice"}
  assert len(claims["claim1"]["comparisons"]) == 3
  assert len(claims["claim2"]["comparisons"]) == 2 * 3
  assert len(claims["claim3"]["comparisons"]) == 2 * (3 + 2 + 2)  # unseen sets × two conditions
  lift = claims["claim2"]["comparisons"][0]
  assert lift["rule"] == "SADM-BraTS >= cDDPM + 5 points" and lift["test_set"] == "Brats21"
  assert lift["test"] == {"SADM-BraTS": pytest.approx(0.6968), "cDDPM": pytest.approx(0.5855)}
  rules = {x["rule"] for x in claims["claim3"]["comparisons"]}
  assert {"UNet-DRAEM < cDDPM", "UNet-BraTS < 0.75 × SADM-BraTS"} <= rules
  assert "Brats21" not in {x["test_set"] for x in claims["claim3"]["comparisons"]
                           if x["rule"].startswith("UNet-BraTS")}  # its own pathology


def test_claim1_fails_on_test_while_validation_agrees_with_the_paper():
  claims = reproduce.check_claims(_rows({("sadm", "draem", "WMH", "test"): 9.0}))
  assert _verdicts(claims)["claim1"] == (False, True)
  wmh = [x for x in claims["claim1"]["comparisons"] if x["test_set"] == "WMH"][0]
  assert wmh["test"] == {"SADM-DRAEM": pytest.approx(0.09), "cDDPM": pytest.approx(0.10)}
  assert wmh["validation"]["SADM-DRAEM"] == pytest.approx(0.12)
  assert _verdicts(claims)["claim2"] == (True, True)


def test_claim2_needs_a_large_lift_and_unseen_sets_at_the_cddpm_level():
  small_lift = reproduce.check_claims(_rows({("sadm", "Brats21", "Brats21", "test"): 62.0}))
  assert _verdicts(small_lift)["claim2"] == (False, True)  # +3.45 points is not "a lot"
  unseen = reproduce.check_claims(_rows({("sadm", "ATLAS_v2", "Brats21", "val"): 58.0}))
  assert _verdicts(unseen)["claim2"] == (True, False)  # 58.00 < cDDPM 58.55 on validation
  equal = reproduce.check_claims(_rows({("sadm", "ATLAS_v2", "Brats21", "test"): 58.55}))
  assert _verdicts(equal)["claim2"] == (True, True)  # "at or above"


def test_claim2_on_validation_compares_the_lift_on_the_weak_runs_held_out_rows():
  # SADM-BraTS tunes and scores its validation Dice on its held-out rows (69.68); the cDDPM on
  # all rows has 58.55, but on those same rows 66.0: the lift there is +3.68, not "a lot".
  claims = reproduce.check_claims(_rows({("sadm", "Brats21", "Brats21", "cddpm_same_rows"): 66.0}))
  assert _verdicts(claims)["claim2"] == (True, False)
  lift = claims["claim2"]["comparisons"][0]
  assert lift["validation"] == {"SADM-BraTS": pytest.approx(0.6968), "cDDPM": pytest.approx(0.66)}
  assert lift["test"]["cDDPM"] == pytest.approx(0.5855)  # test sets: every row on both sides
  assert lift["validation_rows"] == "cDDPM on SADM-BraTS's held-out rows"
  assert "validation 69.68 vs 66.00 (both on the held-out rows) ✗" in \
      "\n".join(reproduce.verdict_lines(claims))
  unseen = [x for x in claims["claim2"]["comparisons"] if x["test_set"] != "Brats21"
            and x["rule"].startswith("SADM-BraTS")]
  assert unseen and all("validation_rows" not in x for x in unseen)
  # Without the same-rows number the lift is not shown on validation (missing, never "holds").
  missing = reproduce.check_claims(_rows({("sadm", "ATLAS_v2", "ATLAS_v2", "cddpm_same_rows"): None}))
  assert _verdicts(missing)["claim2"] == (True, False)


def test_claim3_collapse_means_below_the_cddpm_and_below_three_quarters_of_sadm():
  near_sadm = reproduce.check_claims(_rows({("unet", "ATLAS_v2", "Brats21", "val"): 50.0}))
  assert _verdicts(near_sadm)["claim3"] == (True, False)  # 50 < 58.55 but 50 >= 0.75 · 58.85
  above_cddpm = reproduce.check_claims(_rows({("unet", "draem", "WMH", "test"): 10.0}))
  assert _verdicts(above_cddpm)["claim3"] == (False, True)  # not below the cDDPM's 10.0
  # On the pathology it was trained on the UNet may be as good as it likes.
  own = reproduce.check_claims(_rows({("unet", "Brats21", "Brats21", "test"): 90.0}))
  assert _verdicts(own)["claim3"] == (True, True)


def test_missing_numbers_fail_a_claim_and_are_reported_as_null():
  claims = reproduce.check_claims(_rows(drop={("unet", "Brats21", "WMH")}))
  assert _verdicts(claims)["claim3"] == (False, False)
  miss = [x for x in claims["claim3"]["comparisons"]
          if x["test_set"] == "WMH" and x["rule"].startswith("UNet-BraTS")]
  assert miss and all(x["test"]["UNet-BraTS"] is None for x in miss)
  assert _verdicts(reproduce.check_claims([]))["claim1"] == (False, False)  # nothing compared


def test_a_pathology_the_evaluation_skipped_fails_every_claim_instead_of_shrinking_it():
  # e.g. --config.evaluate.test_sets=('Brats21','ATLAS_v2'), or WMH's splits missing under data_dir:
  # "on every pathology" is not shown by the two that were evaluated.
  rows = [r for r in _rows() if r["test_set"] != "WMH"]
  claims = reproduce.check_claims(rows)
  assert claims["pathologies"] == list(SETS)
  assert _verdicts(claims) == {k: (False, False) for k in ("claim1", "claim2", "claim3")}
  wmh = [x for x in claims["claim1"]["comparisons"] if x["test_set"] == "WMH"]
  assert wmh and wmh[0]["test"] == {"SADM-DRAEM": None, "cDDPM": None}


def test_claims_compare_means_over_repeats():
  rows = _rows(folds=("fold0", "fold1"), spread=2.0)  # ±2 points cancel in the mean
  assert _verdicts(reproduce.check_claims(rows)) == \
      {k: (True, True) for k in ("claim1", "claim2", "claim3")}
  rows = [r for r in rows if not (r["method"] == "sadm" and r["train_anomalies"] == "draem"
                                  and r["test_set"] == "WMH" and r["fold"] == "fold0")]
  claims = reproduce.check_claims(rows)  # the one left is fold1: 12 - 2 = 10, not > 10
  assert _verdicts(claims)["claim1"] == (False, False)


PROTOCOL = {"threshold_method": "exact", "within_brain": True, "timesteps": [249, 499, 749],
            "shared_noise": False, "noise": "simplex", "combination": "sum",
            "residual_mode": "ssim", "median_size": 5, "dtype": "float32", "grid": [64, 64, 32],
            "spacing_mm": 3.0, "faithful": False, "faithful_metrics": False, "seed": 3141}


def test_table_has_table_1_shape_with_mean_and_std_over_repeats():
  rows = _rows(folds=("fold0", "fold1"), spread=1.0)
  md = reproduce.table_markdown(rows, PROTOCOL, reproduce.check_claims(rows), repeats=2)
  lines = md.splitlines()
  assert lines[0] == "# Table 1 on the demo cohort"
  assert "mean ± population std over 2 repeats" in md
  table = [l for l in lines if l.startswith("|")]
  assert table[0] == ("| Model | trained on anomalies of | folds | BraTS21 Dice | BraTS21 ⌈Dice⌉ | "
                      "BraTS21 AUPRC | ATLAS v2 Dice | ATLAS v2 ⌈Dice⌉ | ATLAS v2 AUPRC | WMH Dice "
                      "| WMH ⌈Dice⌉ | WMH AUPRC |")
  assert [l.split(" | ")[0:2] for l in table[2:]] == [
      ["| Intensity threshold", "—"], ["| cDDPM", "—"], ["| Unet (input only)", "draem"],
      ["| Unet (input only)", "Brats21"], ["| Unet (input only)", "ATLAS_v2"], ["| SADM", "draem"],
      ["| SADM", "Brats21"], ["| SADM", "ATLAS_v2"]]  # Table 1's order
  assert table[3].startswith("| cDDPM | — | 2 | 58.55 ± 1.00 | 61.55 ± 1.00 | 59.55 ± 1.00 |")
  assert "Protocol: metrics on the 64×64×32 working grid" in md
  assert "    claim1 (SADM trained with DRAEM anomalies beats its own cDDPM on every pathology): " \
         "on test holds, on validation holds" in lines
  assert "      Brats21: SADM-DRAEM > cDDPM: test 60.53 vs 58.55 ✓, validation 60.53 vs 58.55 ✓" \
      in lines
  one = reproduce.table_markdown(_rows(), PROTOCOL, reproduce.check_claims(_rows()), repeats=1)
  assert "in %, one run." in one and "| cDDPM | — | 1 | 58.55 | 61.55 | 59.55 |" in one


# ----------------------------------------------------------------------------- members and stage


def test_members_are_the_table_1_runs_with_their_dependencies():
  c = reproduce_config.get_config("tiny")
  ms = reproduce.members(c, "/w", "/data")
  assert [m.name for m in ms] == ["prepare", "cddpm-0", "sadm_draem-0", "sadm_brats-0",
                                  "sadm_atlas-0", "unet_draem-0", "unet_brats-0", "unet_atlas-0",
                                  "evaluate"]
  by = {m.name: m for m in ms}
  assert by["sadm_brats-0"].after == ("cddpm-0",) and by["unet_atlas-0"].after == ("prepare",)
  assert by["evaluate"].after == tuple(m.name for m in ms[2:8]) and by["evaluate"].report
  configs = {m.name: members_lib.member_config(m, "/w") for m in ms}
  assert c.stage == "reproduce" and configs["prepare"].stage == "prepare"
  assert {n: configs[n].data.data_dir for n in by} == {n: "/data" for n in by}
  assert configs["cddpm-0"].train.num_steps == c.demo.cddpm_steps
  assert configs["cddpm-0"].optimizer.learning_rate == c.demo.cddpm_learning_rate
  for name, (mode, with_cddpm) in reproduce.VARIANTS.items():
    s = configs[f"{name}-0"]
    assert (s.stage, s.sadm.mode, s.sadm.use_cddpm) == ("sadm", mode, with_cddpm)
    assert s.sadm.cddpm_workdir == ("/w/cddpm-0" if with_cddpm else "")
    assert s.train.num_steps == c.demo.sadm_steps
    assert s.optimizer.learning_rate == c.demo.sadm_learning_rate
  e = configs["evaluate"]
  assert e.evaluate.sadm_workdirs == tuple(f"/w/{m.name}" for m in ms[2:8])
  assert e.evaluate.cddpm_workdir == "" and e.evaluate.methods == ("threshold", "cddpm", "sadm")
  assert set(e.evaluate.test_sets) == {"Brats21", "ATLAS_v2", "WMH", "DRAEM"}
  full = reproduce_config.get_config()
  assert full.model.unet.model_channels == 16 and full.evaluate.test_sets == e.evaluate.test_sets


def test_repeats_train_every_model_per_fold_and_bad_budgets_fail(tmp_path):
  c = reproduce_config.get_config("tiny")
  c.reproduce.repeats = 2
  c.demo.spark_steps = 3
  ms = reproduce.members(c, "/w", "/data")
  by = {m.name: members_lib.member_config(m, "/w") for m in ms}
  assert len(ms) == 1 + 2 * 8 + 1
  assert by["sadm_atlas-1"].sadm.repeat == 1 and by["sadm_atlas-1"].data.fold == 1
  assert by["sadm_draem-1"].sadm.cddpm_workdir == "/w/cddpm-1"
  assert by["cddpm-1"].model.encoder.pretrained_workdir == "/w/spark-1"
  assert {m.name: m.after for m in ms}["cddpm-1"] == ("prepare", "spark-1")
  assert len(by["evaluate"].evaluate.sadm_workdirs) == 12
  for key, value, msg in (("reproduce.repeats", 0, "--config.reproduce.repeats=0 must be >= 1"),
                          ("demo.sadm_steps", 0, "--config.demo.sadm_steps=0 must be >= 1")):
    bad = reproduce_config.get_config("tiny")
    section, field = key.split(".")
    bad[section][field] = value
    with pytest.raises(ValueError, match=msg):
      reproduce.members(bad, "/w", "/data")


def test_cohort_has_enough_labelled_volumes_for_weak_supervision(tmp_path, monkeypatch):
  from sadm_jax.data import synthetic
  seen = []
  monkeypatch.setattr(synthetic, "generate_cohort",
                      lambda root, cfg: seen.append((root, cfg)) or {"skipped": False})
  assert reproduce.cohort(reproduce_config.get_config("tiny"), str(tmp_path)) == \
      str(tmp_path / "demo_data")
  cfg = seen[0][1]
  assert (cfg.n_brats21_val, cfg.n_atlas_v2_val, cfg.n_wmh_val) == (2, 2, 1)  # tiny + labels
  reproduce.cohort(reproduce_config.get_config(), str(tmp_path))
  assert seen[1][1] == synthetic.CohortConfig.default()  # already has 5 labelled volumes
  # The demo builds the same cohorts, so the reproduction can run on a demo run's.
  from configs import demo as demo_cfg
  from sadm_jax import demo_job
  for arg, (_, want) in zip(("tiny", None), seen):
    assert demo_job.demo_config(demo_cfg.get_config(arg)) == want


def test_stage_writes_table_metrics_and_claims_and_resumes(tmp_path, monkeypatch, capsys):
  """The stage's wiring with a fake member runner: the evaluation member writes hand-made rows."""
  ran = []

  def fake(member, config, mdir, command):
    ran.append(member.name)
    if member.name == "evaluate":
      os.makedirs(os.path.join(mdir, "report"))
      rows = _rows({("sadm", "draem", "WMH", "test"): 9.0})
      json.dump({"protocol": PROTOCOL, "rows": rows},
                open(os.path.join(mdir, "report", "metrics.json"), "w"))
    return True

  monkeypatch.setattr(runner, "run_inprocess", fake)
  monkeypatch.setattr(reproduce, "cohort", lambda config, workdir: "/data")
  c = reproduce_config.get_config("tiny")
  claims = reproduce.run(c, str(tmp_path))
  assert ran == [m.name for m in reproduce.members(c, str(tmp_path), "/data")]
  saved = json.load(open(tmp_path / "claims.json"))
  assert _verdicts(saved) == {"claim1": (False, True), "claim2": (True, True),
                              "claim3": (True, True)} == _verdicts(claims)
  assert set(saved["member_seconds"]) == set(ran)
  out = capsys.readouterr().out
  assert "claim1 (SADM trained with DRAEM anomalies beats its own cDDPM on every pathology): on " \
         "test does NOT hold, on validation holds" in out
  assert "  WMH: SADM-DRAEM > cDDPM: test 9.00 vs 10.00 ✗, validation 12.00 vs 10.00 ✓" in out
  table = (tmp_path / "report" / "table.md").read_text()
  assert "| SADM | draem | 1 | 60.53 | 63.53 | 61.53 |" in table
  with open(tmp_path / "report" / "metrics.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 8 * 3 and rows[0]["method"] == "cddpm"
  ran.clear()
  reproduce.run(c, str(tmp_path))  # a rerun skips every finished member
  assert ran == [] and capsys.readouterr().out.count("done already, skipped") == len(
      saved["member_seconds"])


def test_stage_stops_when_a_member_fails(tmp_path, monkeypatch):
  monkeypatch.setattr(runner, "run_inprocess", lambda m, c, d, cmd: m.name != "sadm_brats-0")
  monkeypatch.setattr(reproduce, "cohort", lambda config, workdir: "/data")
  with pytest.raises(reproduce.ReproduceError, match="reproduce: sadm_brats-0, evaluate failed"):
    reproduce.run(reproduce_config.get_config("tiny"), str(tmp_path))
  assert not (tmp_path / "claims.json").exists()


def _fake_evaluation(member, config, mdir, command):
  if member.name == "evaluate":
    os.makedirs(os.path.join(mdir, "report"), exist_ok=True)
    json.dump({"protocol": PROTOCOL, "rows": _rows()},
              open(os.path.join(mdir, "report", "metrics.json"), "w"))
  return True


def test_a_rerun_refuses_finished_members_that_the_changed_command_would_not_reproduce(
    tmp_path, monkeypatch):
  monkeypatch.setattr(runner, "run_inprocess", _fake_evaluation)
  monkeypatch.setattr(reproduce, "cohort", lambda config, workdir: "/data")
  c = reproduce_config.get_config("tiny")
  reproduce.run(c, str(tmp_path))
  # Another learning rate for SADM: the six stage-II runs and the evaluation are not this command's.
  changed = reproduce_config.get_config("tiny")
  changed.demo.sadm_learning_rate = 1e-3
  with pytest.raises(reproduce.ReproduceError) as e:
    reproduce.run(changed, str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg and "sadm_draem-0 (config differs in optimizer.learning_rate)" in msg
  assert "evaluate (built on sadm_draem-0" in msg and "cddpm-0" not in msg and "prepare" not in msg
  assert _verdicts(json.load(open(tmp_path / "claims.json"))) == \
      {k: (True, True) for k in ("claim1", "claim2", "claim3")}  # the old report is left alone
  # A global change (another seed) reaches every member.
  seed = reproduce_config.get_config("tiny")
  seed.seed = 7
  with pytest.raises(reproduce.ReproduceError, match=r"prepare \(config differs in seed\)"):
    reproduce.run(seed, str(tmp_path))
  # More repeats add members and change the evaluation's runs only.
  more = reproduce_config.get_config("tiny")
  more.reproduce.repeats = 2
  with pytest.raises(reproduce.ReproduceError) as e:
    reproduce.run(more, str(tmp_path))
  assert [p.split(" (")[0] for p in str(e.value).split(": ", 2)[2].split("; ")] == ["evaluate"]
  # A deleted dependency runs again, so what was built on it is stale too.
  import shutil
  shutil.rmtree(tmp_path / "cddpm-0")
  with pytest.raises(reproduce.ReproduceError) as e:
    reproduce.run(c, str(tmp_path))
  assert "sadm_draem-0 (built on cddpm-0, which will run again)" in str(e.value)
  assert "unet_draem-0" not in str(e.value)  # the input-only UNet uses no cDDPM
  # Once removed, they run again and the report is rewritten.
  for name in ("sadm_draem-0", "sadm_brats-0", "sadm_atlas-0", "evaluate"):
    shutil.rmtree(tmp_path / name)
  reproduce.run(c, str(tmp_path))
  assert (tmp_path / "claims.json").exists()


def test_a_moved_reproduction_reuses_its_finished_members(tmp_path, monkeypatch, capsys):
  """Every member's config.json holds absolute paths under the workdir (the cohort, the SparK and
  cDDPM runs, the evaluated SADM runs): after `mv W W2` a rerun in W2 refused every member as
  changed. The same run moved compares as if it had been there; a real change still counts."""
  ran = []
  monkeypatch.setattr(runner, "run_inprocess",
                      lambda *a: ran.append(a[0].name) or _fake_evaluation(*a))
  monkeypatch.setattr(reproduce, "cohort",
                      lambda config, workdir: os.path.join(workdir, "demo_data"))
  c = reproduce_config.get_config("tiny")
  reproduce.run(c, str(tmp_path / "first"))
  saved = json.load(open(tmp_path / "first" / "evaluate" / "config.json"))
  assert all(p.startswith(str(tmp_path / "first")) for p in saved["evaluate"]["sadm_workdirs"])
  os.rename(tmp_path / "first", tmp_path / "moved")
  ran.clear()
  claims = reproduce.run(c, str(tmp_path / "moved"))
  assert ran == [] and _verdicts(claims)["claim1"] == (True, True)
  assert "warning" not in capsys.readouterr().out  # nor did the sweep runner warn
  seed = reproduce_config.get_config("tiny")
  seed.seed = 7
  with pytest.raises(reproduce.ReproduceError, match=r"prepare \(config differs in seed\)"):
    reproduce.run(seed, str(tmp_path / "moved"))


def test_moved_paths_compare_as_if_here_and_nothing_else_does():
  here = {"a": "/new/w/x", "b": ["/new/w/y", "/elsewhere"], "c": 1, "d": "/new/w"}
  there = {"a": "/old/w/x", "b": ["/old/w/y", "/elsewhere"], "c": 1, "d": "/old/w"}
  assert runner.as_if_here(there, here, "/new/w") == here
  # One more real difference stays one; an outside path is not rewritten.
  assert runner.as_if_here(dict(there, c=2), here, "/new/w") == dict(here, c=2)
  other = dict(there, b=["/old/w/y", "/old/w/z"])
  assert runner.as_if_here(other, here, "/new/w")["b"] == ["/new/w/y", "/new/w/z"]
  # Two different earlier roots: not one move, nothing rewritten.
  assert runner.as_if_here(dict(there, d="/other"), here, "/new/w") == dict(there, d="/other")
  assert runner.as_if_here(here, here, "/new/w") == here


def test_a_failed_rerun_leaves_no_earlier_report_behind(tmp_path, monkeypatch):
  monkeypatch.setattr(runner, "run_inprocess", _fake_evaluation)
  monkeypatch.setattr(reproduce, "cohort", lambda config, workdir: "/data")
  c = reproduce_config.get_config("tiny")
  reproduce.run(c, str(tmp_path))
  import shutil
  shutil.rmtree(tmp_path / "evaluate")
  monkeypatch.setattr(runner, "run_inprocess", lambda m, c, d, cmd: m.name != "evaluate")
  with pytest.raises(reproduce.ReproduceError, match="evaluate failed"):
    reproduce.run(c, str(tmp_path))
  for path in ("claims.json", "report/table.md", "report/metrics.csv"):
    assert not (tmp_path / path).exists(), path


def test_a_finished_evaluation_without_its_rows_is_one_error_line(tmp_path, monkeypatch):
  monkeypatch.setattr(runner, "run_inprocess", _fake_evaluation)
  monkeypatch.setattr(reproduce, "cohort", lambda config, workdir: "/data")
  c = reproduce_config.get_config("tiny")
  reproduce.run(c, str(tmp_path))
  os.remove(tmp_path / "evaluate" / "report" / "metrics.json")
  with pytest.raises(reproduce.ReproduceError, match=r"the evaluation's rows cannot be read .*"
                     r"remove .*evaluate to evaluate again"):
    reproduce.run(c, str(tmp_path))
  assert not (tmp_path / "claims.json").exists()


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_reproduction(tiny_reproduction_run, demo_tiny_run):
  """`configs/reproduce.py:tiny` for real, by the CLI (started in the background with the session,
  tests/conftest.py; it shares the session's compilation cache and cohort with the demo:tiny
  job)."""
  workdir, output = tiny_reproduction_run
  assert "reproduce:" in output and "written:" in output, output[-3000:]
  c = reproduce_config.get_config("tiny")
  c.train.async_checkpoints = False
  c.demo.root = os.path.join(demo_tiny_run[0], "demo_data")
  # The demo's cohort, complete: neither generated nor preprocessed again.
  assert f"demo cohort: {c.demo.root} (complete already, reused)" in output, output[-3000:]
  assert re.search(r"^0 volume\(s\) preprocessed, [1-9]\d* already cached", output, re.M), \
      output[-3000:]
  return workdir, c


def test_tiny_reproduction_trains_evaluates_and_checks_every_claim(tiny_reproduction, capsys):
  workdir, c = tiny_reproduction
  names = [m.name for m in reproduce.members(c, workdir, c.demo.root)]
  assert all(os.path.isfile(os.path.join(workdir, n, runner.DONE)) for n in names)
  with open(os.path.join(workdir, "report", "metrics.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  got = {(r["method"], r["train_anomalies"], r["test_set"]) for r in rows}
  models = [("threshold", "none"), ("cddpm", "none")] + [
      (m, a) for m in ("sadm", "unet") for a in ("draem", "Brats21", "ATLAS_v2")]
  for method, anomalies in models:
    for test_set in ("Brats21", "ATLAS_v2", "WMH", "DRAEM"):
      assert (method, anomalies, test_set) in got, (method, anomalies, test_set)
  lesions = [r for r in rows if r["test_set"] in reproduce.PATHOLOGIES + ("DRAEM",)]
  for r in lesions:
    assert 0.0 <= float(r["dice"]) <= float(r["best_dice"]) + 1e-9 <= 1.0 + 1e-9, r
  claims = json.load(open(os.path.join(workdir, "claims.json")))
  for k in ("claim1", "claim2", "claim3"):
    assert isinstance(claims[k]["holds_on_test"], bool)
    assert isinstance(claims[k]["holds_on_validation"], bool)
    for comparison in claims[k]["comparisons"]:  # every compared number was measured
      for side in ("test", "validation"):
        assert all(v is not None and 0.0 <= v <= 1.0 for v in comparison[side].values()), comparison
  # The verdicts follow from the numbers compared (recomputed from metrics.csv's rows).
  again = reproduce.check_claims([dict(r, **{k: float(r[k]) for k in ("dice", "val_pooled_dice")})
                                  for r in lesions])
  assert _verdicts(again) == _verdicts(claims)
  table = open(os.path.join(workdir, "report", "table.md")).read()
  assert table.startswith("# Table 1 on the demo cohort") and "| Unet (input only) | ATLAS_v2 |" in table
  # A second run skips every member and rewrites the same verdicts.
  from sadm_jax import main as main_lib
  capsys.readouterr()
  assert main_lib.run_checked(c, workdir) == 0
  assert capsys.readouterr().out.count("done already, skipped") == len(names)
  assert _verdicts(json.load(open(os.path.join(workdir, "claims.json")))) == _verdicts(claims)
