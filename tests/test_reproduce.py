"""The Table-1 reproduction: its members, the stage with a fake runner, and the tiny run end to end (its claims on hand-made rows: test_reproduce_claims.py)."""

import csv
import json
import os
import re

import pytest

from configs import reproduce as reproduce_config
from sadm_jax import reproduce
from sadm_jax.sweeps import members as members_lib
from sadm_jax.sweeps import runner
from tests.test_reproduce_claims import PROTOCOL, _rows, _verdicts


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
  for key, value, msg in (
      ("reproduce.repeats", 0, r"--config.reproduce.repeats=0 must be in \[1, 5\]"),
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


def test_a_refused_rerun_leaves_the_cohort_of_the_finished_runs_alone(tmp_path, monkeypatch):
  """Another demo.seed regenerated the cohort in place (minutes), under the finished runs trained
  on it, and only then was refused."""
  monkeypatch.setattr(runner, "run_inprocess", _fake_evaluation)
  built = []
  monkeypatch.setattr(reproduce, "cohort", lambda config, workdir: built.append(
      config.demo.seed) or os.path.join(workdir, "demo_data"))
  reproduce.run(reproduce_config.get_config("tiny"), str(tmp_path))
  changed = reproduce_config.get_config("tiny")
  changed.demo.seed = 5
  with pytest.raises(reproduce.ReproduceError, match=r"prepare \(config differs in data\.|"
                                                     r"prepare \(config differs in demo\.seed"):
    reproduce.run(changed, str(tmp_path))
  assert built == [0]  # the first run's cohort only


def test_a_member_marked_finished_by_hand_does_not_fail_the_report(tmp_path, monkeypatch, capsys):
  """`touch W/m/DONE` (the sweep's way to skip a member) failed the finished reproduction at its
  last step with 'Expecting value: line 1 column 1 (char 0)', naming no file."""
  monkeypatch.setattr(runner, "run_inprocess", _fake_evaluation)
  monkeypatch.setattr(reproduce, "cohort", lambda config, workdir: "/data")
  c = reproduce_config.get_config("tiny")
  reproduce.run(c, str(tmp_path))
  (tmp_path / "unet_atlas-0" / runner.DONE).write_text("")
  claims = reproduce.run(c, str(tmp_path))
  assert claims["member_seconds"]["unet_atlas-0"] is None
  assert json.load(open(tmp_path / "claims.json"))["member_seconds"]["unet_atlas-0"] is None
  assert "reproduce: " in capsys.readouterr().out


def _run_in_first(tmp_path, monkeypatch) -> tuple:
  """(config, names of the members run since) after a tiny reproduction in tmp_path/first with
  its cohort under the workdir (fake evaluation)."""
  ran = []
  monkeypatch.setattr(runner, "run_inprocess",
                      lambda *a: ran.append(a[0].name) or _fake_evaluation(*a))
  monkeypatch.setattr(reproduce, "cohort",
                      lambda config, workdir: os.path.join(workdir, "demo_data"))
  c = reproduce_config.get_config("tiny")
  reproduce.run(c, str(tmp_path / "first"))
  ran.clear()
  return c, ran


def test_a_field_added_to_the_base_config_since_a_member_ran_is_not_a_change(
    tmp_path, monkeypatch):
  """A member's config.json written before the base config had a field lacks it: compared like
  a resumed training run's (keys the saved config lacks are not compared), not stale; also after
  the workdir moved, with the field missing beside the paths (`data.data_dir`)."""
  c, ran = _run_in_first(tmp_path, monkeypatch)
  for name in os.listdir(tmp_path / "first"):
    path = tmp_path / "first" / name / "config.json"
    if path.exists():
      saved = json.load(open(path))
      del saved["predict"]["threshold_set"]  # as an older version wrote it
      del saved["data"]["prefetch_batches"]  # beside data.data_dir, a path under the workdir
      json.dump(saved, open(path, "w"))
  assert _verdicts(reproduce.run(c, str(tmp_path / "first")))["claim1"] == (True, True)
  os.rename(tmp_path / "first", tmp_path / "moved")
  assert _verdicts(reproduce.run(c, str(tmp_path / "moved")))["claim1"] == (True, True)
  assert ran == []


def test_a_moved_reproduction_reuses_its_finished_members(tmp_path, monkeypatch, capsys):
  """Every member's config.json holds absolute paths under the workdir (the cohort, the SparK and
  cDDPM runs, the evaluated SADM runs): after `mv W W2` a rerun in W2 refused every member as
  changed. The same run moved compares as if it had been there; a real change still counts."""
  c, ran = _run_in_first(tmp_path, monkeypatch)
  saved = json.load(open(tmp_path / "first" / "evaluate" / "config.json"))
  assert all(p.startswith(str(tmp_path / "first")) for p in saved["evaluate"]["sadm_workdirs"])
  os.rename(tmp_path / "first", tmp_path / "moved")
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
