"""Sweeps: the tiny demo runs locally (config.json, DONE, skip on re-run), Slurm arrays, the aggregated report."""

import csv
import json
import os
import subprocess
import sys
import time

import pytest

from sadm_jax import sweep as sweep_lib
from tests.data import fake_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "sweeps", "tiny_demo.py")


def _sweep_cmd(workdir, *extra):
  return [sys.executable, "-m", "sadm_jax.sweep", f"--sweep={TINY}", f"--workdir={workdir}",
          *extra]


def _env():
  return {**os.environ, "PYTHONUNBUFFERED": "1",
          "JAX_COMPILATION_CACHE_DIR": os.path.join(REPO, ".jax_cache")}


def test_tiny_demo_runs_members_and_skips_finished_ones(tmp_path):
  data = str(tmp_path / "data")
  fake_data.write_data_dir(data, n_ixi=12, n_patho=1)
  work = tmp_path / "sweep"
  sets = [f"--set=data.data_dir={data}", f"--set=data.cache_dir={tmp_path / 'cache'}"]
  res = subprocess.run(_sweep_cmd(work, *sets), cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=900)
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  for name, lr in (("lr_2e-3", 2e-3), ("lr_1e-4", 1e-4)):
    mdir = work / name
    config = json.load(open(mdir / "config.json"))
    assert config["optimizer"]["learning_rate"] == lr
    assert config["train"]["num_steps"] == 2 and config["data"]["data_dir"] == data
    assert config["data"]["slice_sampling"] == "brain"  # faithful placeholders resolved
    # The run itself used exactly this config (the loop stores it in every checkpoint).
    meta = json.load(open(mdir / "checkpoints" / "2" / "meta" / "metadata"))
    assert meta["config"] == config
    assert json.load(open(mdir / sweep_lib.DONE))["member"] == name
    with open(mdir / "metrics.jsonl") as f:
      assert [json.loads(l)["step"] for l in f if "train/loss" in l] == [1, 2]
    log = open(mdir / "log.txt").read()
    assert "process 0/1, 8 devices (8 local, cpu), mesh data=8" in log
  # A re-run skips both members without starting anything.
  t0 = time.time()
  again = subprocess.run(_sweep_cmd(work, *sets), cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=120)
  assert again.returncode == 0, again.stderr
  assert again.stdout.count("done already, skipped") == 2
  assert time.time() - t0 < 30
  # A changed sweep-wide setting is reported for finished members, never silently re-run.
  changed = subprocess.run(_sweep_cmd(work, *sets, "--set=seed=5", "--members=lr_1e-4"),
                           cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
  assert "lr_1e-4 finished with a different config" in changed.stdout
  assert "lr_2e-3" not in changed.stdout


def test_slurm_mode_writes_a_job_array_without_submitting(tmp_path):
  work = tmp_path / "w"
  res = subprocess.run(_sweep_cmd(work, "--mode=slurm", "--set=data.data_dir=/data/x"), cwd=REPO,
                       env=_env(), capture_output=True, text=True, timeout=120)
  assert res.returncode == 0, res.stderr
  script = (work / "sweep.sbatch").read_text()
  assert "#SBATCH --array=0-1" in script and "members=(lr_2e-3 lr_1e-4)" in script
  assert f"--sweep={TINY}" in script and f"--workdir={work}" in script
  assert '--set=data.data_dir=/data/x --members="$member"' in script
  assert "exec srun" in script and ': "${SLURM_ARRAY_TASK_ID:?' in script
  assert subprocess.run(["bash", "-n", str(work / "sweep.sbatch")]).returncode == 0
  assert not (work / "submit.sh").exists()  # one phase: sbatch the array directly
  assert not any((work / m).exists() for m in ("lr_2e-3", "lr_1e-4"))


def _write_sweep(path, members, config="configs/cddpm.py:tiny"):
  path.write_text(f"def get_sweep():\n  return {{'config': {config!r}, 'members': {members!r}}}\n")
  return str(path)


def test_phases_chain_with_dependencies_and_workdir_placeholders(tmp_path):
  spec = _write_sweep(tmp_path / "s.py", [
      {"name": "b", "phase": 1, "overrides": {"model.encoder.pretrained_workdir": "{workdir}/a"}},
      {"name": "a", "phase": 0},
      {"name": "c", "phase": 1, "report": False}])
  s = sweep_lib.load_sweep(spec)
  assert [m.name for m in s.members] == ["a", "b", "c"]
  config = sweep_lib.resolve_member(s.members[1], "/w", [("seed", "9")])
  assert config.model.encoder.pretrained_workdir == "/w/a" and config.seed == 9
  paths = sweep_lib.write_slurm(s, str(tmp_path / "w"), s.members)
  submit = open(paths[1]).read()
  assert "--array=0-0" in submit and "--array=1-2" in submit
  assert 'dep=(--dependency=afterok:"${job%%;*}")' in submit
  assert subprocess.run(["bash", "-n", paths[1]]).returncode == 0


def test_bad_sweeps_fail_before_running(tmp_path):
  dup = _write_sweep(tmp_path / "dup.py", [{"name": "a"}, {"name": "a"}])
  with pytest.raises(ValueError, match=r"duplicate member names \['a'\]"):
    sweep_lib.load_sweep(dup)
  bad = _write_sweep(tmp_path / "bad.py", [{"name": "a/b"}])
  with pytest.raises(ValueError, match="invalid name 'a/b'"):
    sweep_lib.load_sweep(bad)
  typo = sweep_lib.load_sweep(_write_sweep(tmp_path / "typo.py", [
      {"name": "a", "overrides": {"optimizer.learning_rat": 1.0}}]))
  with pytest.raises(KeyError, match="no config field 'optimizer.learning_rat'"):
    sweep_lib.run_local(typo, str(tmp_path / "w"), typo.members)
  missing = sweep_lib.load_sweep(_write_sweep(tmp_path / "m.py", [{"name": "a"}],
                                              config="configs/not_yet.py"))
  with pytest.raises(FileNotFoundError, match="configs/not_yet.py: no such file"):
    sweep_lib.write_slurm(missing, str(tmp_path / "w"), missing.members)
  assert not (tmp_path / "w").exists()
  with pytest.raises(ValueError, match="unknown member"):
    missing.select(["zzz"])


def test_grid_names_members_by_their_values():
  members = sweep_lib.grid({"optimizer.learning_rate": [1e-3, 1e-4], "sadm.use_residual": [True]},
                           name="lr_{}", overrides={"seed": 1})
  assert [m["name"] for m in members] == ["lr_learning_rate=0.001,use_residual=True",
                                          "lr_learning_rate=0.0001,use_residual=True"]
  assert members[1]["overrides"] == {"seed": 1, "optimizer.learning_rate": 1e-4,
                                     "sadm.use_residual": True}


def test_sadm_ablation_sweep_covers_the_table_rows():
  s = sweep_lib.load_sweep(os.path.join(REPO, "configs", "sweeps", "sadm_ablation.py"))
  phases = {p: [m for m in s.members if m.phase == p] for p in (0, 1, 2)}
  assert [m.name for m in phases[0]] == ["cddpm"] and len(phases[1]) == 7 * 5
  rows = {m.name: dict(m.overrides) for m in s.members if m.report}
  assert set(rows) == {m.name for m in phases[2]}
  assert dict(s.members[1].overrides)["sadm.cddpm_workdir"] == "{workdir}/cddpm"
  assert {r["evaluate.sadm_workdirs"][0] for r in rows.values()} >= {
      "{workdir}/train-sadm_draem-f0", "{workdir}/train-unet_brats-f0"}
  assert {rows[n].get("diffusion.ensemble_timesteps") for n in rows} >= {(249,), (499,), (749,)}
  assert rows["sadm_draem_lam0.25"]["evaluate.combination"] == "weighted"
  trained = {m.name: dict(m.overrides) for m in phases[1]}
  assert trained["train-sadm_draem_no_residual-f0"]["sadm.use_residual"] is False
  assert trained["train-unet_atlas-f4"]["sadm.use_cddpm"] is False
  assert trained["train-sadm_brats-f3"]["sadm.repeat"] == 3
  configs = {m.config for m in s.members}
  if all(os.path.exists(os.path.join(REPO, c)) for c in configs):  # stage-II configs may lag
    for m in s.members:
      sweep_lib.resolve_member(m, "/w")  # every override names a real field


METRICS_HEADER = ["method", "train_anomalies", "test_set", "fold", "n_volumes", "dice",
                  "best_dice", "auprc", "auroc"]


def _metrics(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(METRICS_HEADER)
    w.writerows(rows)


def test_report_aggregates_members_like_table_1(tmp_path):
  spec = _write_sweep(tmp_path / "r.py", [{"name": "full"}, {"name": "one_fold"},
                                          {"name": "absent"}, {"name": "trainer", "report": False}])
  work = tmp_path / "w"
  _metrics(str(work / "full" / "report" / "metrics.csv"), [
      ["cddpm", "none", "Brats21", "fold0", 10, 0.50, 0.58, 0.59, 0.9],
      ["cddpm", "none", "Brats21", "fold1", 10, 0.52, 0.60, 0.61, 0.9],
      ["cddpm", "none", "ATLAS_v2", "fold0", 8, 0.20, 0.24, 0.21, 0.8],
      ["cddpm", "none", "ATLAS_v2", "fold1", 8, 0.22, 0.26, 0.23, 0.8],
      ["sadm", "draem", "Brats21", "fold0", 10, 0.55, 0.6053, 0.6027, 0.95],
      ["sadm", "draem", "Brats21", "fold1", 10, 0.55, 0.6153, 0.6127, 0.95],
      ["sadm", "draem", "ATLAS_v2", "fold0", 8, 0.25, 0.2778, 0.2457, ""],
      ["sadm", "draem", "ATLAS_v2", "fold1", 8, 0.25, 0.2778, 0.2457, ""],
      ["sadm", "draem", "IXI", "fold0", 44, "", "", "", ""]])
  _metrics(str(work / "one_fold" / "report" / "metrics.csv"), [
      ["sadm", "Brats21", "Brats21", "repeat0", 90, 0.6, 0.6968, 0.7334, 0.97]])
  res = subprocess.run([sys.executable, "-m", "sadm_jax.sweep", f"--sweep={spec}",
                        f"--workdir={work}", "--report"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
  assert res.returncode == 0, res.stderr
  md = (work / "sweep_report.md").read_text()
  assert res.stdout == md
  lines = md.splitlines()
  assert lines[0] == "# Sweep r"
  table = [l for l in lines if l.startswith("|")]
  assert table[0] == ("| member | model | trained on anomalies of | folds | Brats21 ⌈Dice⌉ | "
                      "Brats21 AUPRC | ATLAS_v2 ⌈Dice⌉ | ATLAS_v2 AUPRC |")
  assert table[2] == "| full | cddpm | — | 2 | 59.00 ± 1.00 | 60.00 ± 1.00 | 25.00 ± 1.00 | 22.00 ± 1.00 |"
  assert table[3] == "| full | sadm | draem | 2 | 61.03 ± 0.50 | 60.77 ± 0.50 | 27.78 ± 0.00 | 24.57 ± 0.00 |"
  assert table[4] == "| one_fold | sadm | Brats21 | 1 | 69.68 | 73.34 | – | – |"
  assert table[5] == "| absent | missing (no report/metrics.csv) |  |  |  |  |  |  |"
  assert len(table) == 6  # 'trainer' (report=False) is no row
  assert lines[-1] == "Missing (1): absent"
  with open(work / "sweep_report.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [(r["member"], r["status"], r["method"], r["test_set"]) for r in rows] == [
      ("full", "ok", "cddpm", "Brats21"), ("full", "ok", "cddpm", "ATLAS_v2"),
      ("full", "ok", "sadm", "Brats21"), ("full", "ok", "sadm", "ATLAS_v2"),
      ("full", "ok", "sadm", "IXI"), ("one_fold", "ok", "sadm", "Brats21"),
      ("absent", "missing", "", "")]
  assert float(rows[0]["best_dice_mean"]) == pytest.approx(0.59)
  assert float(rows[0]["best_dice_std"]) == pytest.approx(0.01)  # population std over 2 folds
  assert float(rows[0]["n_volumes_mean"]) == 10 and rows[0]["n_folds"] == "2"
  assert rows[3]["auroc_mean"] == "" and rows[4]["best_dice_mean"] == ""


def test_member_command_line_parses_to_the_resolved_config(tmp_path):
  """The subprocess runner's `--config.k=v` flags give main exactly the config.json config."""
  from absl import flags
  from ml_collections import config_flags
  spec = _write_sweep(tmp_path / "c.py", [{"name": "m", "overrides": {
      "diffusion.ensemble_timesteps": (249,), "sadm.use_residual": False, "evaluate.lam": 0.25,
      "evaluate.sadm_workdirs": ("{workdir}/a", "{workdir}/b"), "data.fold": 3,
      "evaluate.combination": "weighted", "optimizer.learning_rate": 3e-4}}])
  member = sweep_lib.load_sweep(spec).members[0]
  sets = sweep_lib.parse_set(["data.data_dir=/d x", "seed=9", "sadm.use_cddpm=False"])
  cmd = sweep_lib.main_command(member, "/w", sets)
  assert cmd[1:5] == ["-m", "sadm_jax.main", f"--config={REPO}/configs/cddpm.py:tiny",
                      "--workdir=/w/m"]
  argv = ["main"] + cmd[3:]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  fv(argv)
  want = sweep_lib.resolve_member(member, "/w", sets)
  assert fv.config.to_dict() == want.to_dict()
  assert want.evaluate.sadm_workdirs == ("/w/a", "/w/b") and want.data.data_dir == "/d x"
  assert want.seed == 9 and want.sadm.use_cddpm is False
