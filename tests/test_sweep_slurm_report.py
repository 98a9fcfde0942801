"""Sweeps: Slurm scripts rendered from the launch template, and the sweep report."""

import json
import os
import subprocess

import pytest

from sadm_jax import sweep as sweep_cli
from sadm_jax.sweeps import slurm
from tests.helpers import REPO
from tests.sweep_common import write_sweep


# ----------------------------------------------------------------------------- slurm


def _fake_bin(tmp_path):
  """scontrol, srun (runs the task as task 0) and a python that prints its arguments."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in {"scontrol": "#!/bin/sh\necho node1\n",
                     "srun": "#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n"
                             "SLURM_PROCID=0 SLURM_LOCALID=0 exec \"$@\"\n",
                     "fakepython": "#!/bin/bash\nprintf '[%s]' \"$@\"; echo\n"}.items():
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  return bin_dir


def test_slurm_scripts_are_the_launch_template_running_one_member(tmp_path):
  spec = write_sweep(tmp_path / "s.py", "Member('b', 'configs/cddpm.py:tiny', after=['a']), "
                                        "Member('a', 'configs/cddpm.py:tiny'), "
                                        "Member('c', 'configs/cddpm.py:tiny', after=['a', 'b'])")
  work = tmp_path / "w"
  assert sweep_cli.cli(["x", f"--sweep={spec}", f"--workdir={work}", "--mode=slurm", "--",
                        "--config.data.data_dir=/d x"]) == 0
  out = work / "slurm"
  assert sorted(os.listdir(out)) == ["a.sbatch", "b.sbatch", "c.sbatch", "submit.sh"]
  script = (out / "b.sbatch").read_text()
  template = open(os.path.join(REPO, "launch", "slurm.sbatch")).read()
  assert "#SBATCH --job-name=s.b" in script and f"#SBATCH --output={out}/b-%j.out" in script
  assert len(script.splitlines()) == len(template.splitlines()) + 1  # + the 'rendered' comment
  submit = (out / "submit.sh").read_text()
  assert submit.index("a.sbatch") < submit.index("b.sbatch") < submit.index("c.sbatch")
  assert 'sbatch --parsable --dependency=afterok:${job[a]}:${job[b]} "$@"' in submit
  for path in [out / "submit.sh"] + [out / f"{m}.sbatch" for m in "abc"]:
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
  bin_dir = _fake_bin(tmp_path)
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "fakepython"),
         "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node1", "SLURM_NNODES": "1",
         "SLURM_NTASKS": "1", "HOME": str(tmp_path)}
  res = subprocess.run(["bash", str(out / "b.sbatch")], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
  assert res.returncode == 0, res.stderr
  assert res.stdout.splitlines()[-1] == (f"[-m][sadm_jax.sweep][--sweep={spec}][--workdir={work}]"
                                         "[--members=b][--][--config.data.data_dir=/d x]")
  assert not any((work / m).exists() for m in "abc")  # nothing ran or was submitted


def test_slurm_rendering_fails_when_the_template_changes():
  with pytest.raises(ValueError, match="expected the line '#SBATCH --job-name=sadm_jax' once"):
    slurm.render("j", "o", [], template="#!/bin/bash\necho hi\n")


# ----------------------------------------------------------------------------- report


def _report_rows(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  keys = ("method", "train_anomalies", "test_set", "fold", "n_volumes", "dice", "best_dice",
          "auprc")
  json.dump({"protocol": {}, "rows": [dict(zip(keys, r)) for r in rows]}, open(path, "w"))


def test_report_tabulates_every_member_with_the_evaluation_tables(tmp_path, capsys):
  spec = write_sweep(tmp_path / "r.py", "Member('full', 'configs/evaluate.py'), "
                                        "Member('absent', 'configs/evaluate.py'), "
                                        "Member('trainer', 'configs/cddpm.py', report=False)")
  work = tmp_path / "w"
  _report_rows(str(work / "full" / "report" / "metrics.json"), [
      ["cddpm", "none", "Brats21", "fold0", 10, 0.50, 0.58, 0.59],
      ["cddpm", "none", "Brats21", "fold1", 10, 0.52, 0.60, 0.61],
      ["sadm", "draem", "Brats21", "fold0", 10, 0.55, 0.6053, None]])
  (work / "full" / "DONE").write_text("{}")
  assert sweep_cli.cli(["x", f"--sweep={spec}", f"--workdir={work}", "--report"]) == 0
  md = (work / "sweep_report.md").read_text()
  assert capsys.readouterr().out == md
  lines = md.splitlines()
  assert lines[:3] == ["# Sweep r", "", "## full"]
  assert lines[6] == "| cDDPM | — | 2 | 51.00 ± 1.00 | 59.00 ± 1.00 | 60.00 ± 1.00 |"
  assert lines[7] == "| SADM | draem | 1 | 55.00 | 60.53 | – |"
  assert lines[-1] == "Missing (no report/metrics.json, 1): absent"
  assert "trainer" not in md
  csv_lines = (work / "sweep_report.csv").read_text().splitlines()
  assert csv_lines[0].startswith("method,train_anomalies,test_set,fold,n_volumes,dice,best_dice,")
  assert len(csv_lines) == 4 and all(l.endswith(",True,full") for l in csv_lines[1:])
  assert csv_lines[0].endswith(",finished,member")


def _two_evaluated_members(tmp_path, a: str, b: str):
  """(sweep file, workdir) of a sweep of two evaluation members `a`, `b`, each with one report
  row (no DONE)."""
  spec = write_sweep(tmp_path / "r.py", f"Member('{a}', 'configs/evaluate.py'), "
                                        f"Member('{b}', 'configs/evaluate.py')")
  work = tmp_path / "w"
  for name in (a, b):
    _report_rows(str(work / name / "report" / "metrics.json"),
                 [["cddpm", "none", "Brats21", "fold0", 10, 0.50, 0.58, 0.59]])
  return spec, work


def test_a_report_without_its_members_done_is_marked_not_finished(tmp_path, capsys):
  """A member evaluated by hand, or whose run did not end: its rows were reported like a
  finished member's, with nothing to tell them apart."""
  spec, work = _two_evaluated_members(tmp_path, "done", "by_hand")
  (work / "done" / "DONE").write_text("{}")
  assert sweep_cli.cli(["x", f"--sweep={spec}", f"--workdir={work}", "--report"]) == 0
  md = capsys.readouterr().out.splitlines()
  assert "## done" in md and ("## by_hand (not finished: no DONE; evaluated by hand, or the "
                              "sweep's run of it did not end)") in md
  csv_lines = (work / "sweep_report.csv").read_text().splitlines()
  assert csv_lines[1].endswith(",True,done") and csv_lines[2].endswith(",False,by_hand")


@pytest.mark.parametrize("text,why", [("{}", "KeyError: 'rows'"),
                                      ("garbage", "JSONDecodeError: Expecting value"),
                                      ('{"rows": [{"dice": 1}]}', "KeyError: ")])
def test_a_report_that_is_not_an_evaluations_is_one_line_naming_it(tmp_path, capsys, text, why):
  spec = write_sweep(tmp_path / "r.py", "Member('ev', 'configs/evaluate.py')")
  path = tmp_path / "w" / "ev" / "report" / "metrics.json"
  path.parent.mkdir(parents=True)
  path.write_text(text)
  assert sweep_cli.cli(["x", f"--sweep={spec}", f"--workdir={tmp_path / 'w'}", "--report"]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: {path}: not an evaluation's report ({why}") and err.endswith(
      f"); remove {tmp_path / 'w' / 'ev'} to run member ev again\n")
  assert not (tmp_path / "w" / "sweep_report.md").exists()


def test_a_slurm_script_finds_a_repository_whose_path_needs_quoting(tmp_path, monkeypatch):
  repo = tmp_path / "my repo's copy"
  (repo / "sadm_jax").mkdir(parents=True)
  (repo / "sadm_jax" / "main.py").write_text("")
  monkeypatch.setattr(slurm.members_lib, "REPO", str(repo))
  script = tmp_path / "job.sbatch"
  script.write_text(slurm.render("s.m", "out-%j.out", ["--members=m"]))
  bin_dir = _fake_bin(tmp_path)
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "fakepython"),
         "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node1", "SLURM_NNODES": "1",
         "SLURM_NTASKS": "1", "HOME": str(tmp_path)}
  res = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
  assert res.returncode == 0, res.stderr  # was: "REPO_DIR='...' is not the sadm_jax repository"
  assert res.stdout.splitlines()[-1] == "[-m][sadm_jax.sweep][--members=m]"


def test_a_report_of_a_workdir_that_does_not_exist_makes_nothing(tmp_path, capsys):
  spec = write_sweep(tmp_path / "r.py", "Member('ev', 'configs/evaluate.py')")
  work = tmp_path / "typo" / "w"
  assert sweep_cli.cli(["x", f"--sweep={spec}", f"--workdir={work}", "--report"]) == 2
  assert capsys.readouterr().err == (f"error: --workdir={work}: no such directory (--report reads "
                                     "the members' reports of a sweep run there)\n")
  assert not (tmp_path / "typo").exists()


def test_a_finished_member_without_a_report_is_not_called_missing(tmp_path, capsys):
  """The shipped tiny sweep's members (two cDDPM trainings) were 'Missing' once finished."""
  spec = write_sweep(tmp_path / "r.py", "Member('train', 'configs/cddpm.py:tiny'), "
                                        "Member('later', 'configs/cddpm.py:tiny')")
  (tmp_path / "w" / "train").mkdir(parents=True)
  (tmp_path / "w" / "train" / "DONE").write_text("{}")
  assert sweep_cli.cli(["x", f"--sweep={spec}", f"--workdir={tmp_path / 'w'}", "--report"]) == 0
  assert capsys.readouterr().out.splitlines()[-2:] == [
      "Missing (no report/metrics.json, 1): later",
      "Finished without report/metrics.json (not an evaluation; Member(..., report=False) leaves "
      "it out, 1): train"]


def test_a_report_of_some_members_has_only_those(tmp_path, capsys):
  """--members was ignored by --report: every member was reported."""
  spec, work = _two_evaluated_members(tmp_path, "one", "two")
  assert sweep_cli.cli(["x", f"--sweep={spec}", f"--workdir={work}", "--report",
                        "--members=two"]) == 0
  md = capsys.readouterr().out
  assert "## two" in md and "one" not in md
  assert sweep_cli.cli(["x", f"--sweep={spec}", f"--workdir={work}", "--report",
                        "--members=three"]) == 2
  assert capsys.readouterr().err.startswith("error: unknown member(s) three; the sweep has ")


@pytest.mark.parametrize("args,dropped", [
    (["--mode=slurm"], "--mode=slurm"), (["--mode=local", "--runner=inprocess"],
                                         "--mode=local and --runner=inprocess"),
    (["--", "--config.data.data_dir=/d"], "what follows --"),
    (["--mode=slurm", "--", "-v", "1"], "--mode=slurm and what follows --")])
def test_a_report_refuses_the_flags_of_a_run_instead_of_ignoring_them(tmp_path, capsys, args,
                                                                      dropped):
  spec = write_sweep(tmp_path / "r.py", "Member('ev', 'configs/evaluate.py')")
  (tmp_path / "w").mkdir()
  assert sweep_cli.cli(["x", f"--sweep={spec}", f"--workdir={tmp_path / 'w'}", "--report",
                        *args]) == 2
  assert capsys.readouterr().err == ("error: --report runs no member (it reads "
                                     f"W/<member>/report/metrics.json): drop {dropped}\n")
  assert os.listdir(tmp_path / "w") == []


def test_a_workdir_with_a_space_gets_its_job_logs_from_the_sbatch_command_line(tmp_path,
                                                                                  capsys):
  """`#SBATCH --output=/a b/slurm/m-%j.out` was written as it is: sbatch does not unquote an
  #SBATCH line reliably (the log went to '/a'). The sweep file's name is the job name's start."""
  spec = write_sweep(tmp_path / "my sweep.py", "Member('a', 'configs/cddpm.py:tiny'), "
                                               "Member('b', 'configs/cddpm.py:tiny', after=['a'])")
  work = tmp_path / "w dir"
  assert sweep_cli.cli(["x", f"--sweep={spec}", f"--workdir={work}", "--mode=slurm"]) == 0
  out = work / "slurm"
  assert capsys.readouterr().out == (f"wrote 2 job script(s) under {out}; submit with bash "
                                     f"'{out}/submit.sh' [sbatch options]\n")  # (to copy)
  assert f"#   bash '{out}/submit.sh' --nodes=1 " in (out / "submit.sh").read_text()
  script = (out / "b.sbatch").read_text()
  assert "#SBATCH --job-name=my_sweep.b\n" in script
  assert "#SBATCH --output" not in script and "slurm-%x-%j.out" not in script
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "sbatch").write_text("#!/bin/bash\nprintf '[%s]' \"$@\" >> \"$SBATCH_CALLS\"\n"
                                  "echo >> \"$SBATCH_CALLS\"\necho 4$RANDOM\n")
  (bin_dir / "sbatch").chmod(0o755)
  calls = tmp_path / "calls"
  res = subprocess.run(["bash", str(out / "submit.sh"), "--time=1:00"], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "SBATCH_CALLS": str(calls),
                                                   "PATH": f"{bin_dir}:{os.environ['PATH']}"})
  assert res.returncode == 0, res.stderr
  a, b = calls.read_text().splitlines()
  assert a == f"[--parsable][--output={out}/a-%j.out][--time=1:00][{out}/a.sbatch]"
  assert b.startswith("[--parsable][--dependency=afterok:4") and b.endswith(
      f"][--output={out}/b-%j.out][--time=1:00][{out}/b.sbatch]")


def test_a_percent_sign_in_the_workdir_is_escaped_in_the_job_log_pattern(tmp_path):
  """sbatch reads '%' in --output as a replacement symbol ('%j' the job id): a workdir 'w%j' had
  its logs written under 'w<job id>'; '%%' is sbatch's '%'."""
  spec = write_sweep(tmp_path / "s.py", "Member('a', 'configs/cddpm.py:tiny')")
  work = tmp_path / "w%j"
  assert sweep_cli.cli(["x", f"--sweep={spec}", f"--workdir={work}", "--mode=slurm"]) == 0
  assert (f"#SBATCH --output={tmp_path}/w%%j/slurm/a-%j.out\n"
          in (work / "slurm" / "a.sbatch").read_text())


def test_a_member_named_for_the_report_that_does_not_report_is_listed(tmp_path, capsys):
  """`--report --members=cddpm` (report=False) wrote an empty report, exit 0, without a word."""
  spec = write_sweep(tmp_path / "r.py", "Member('ev', 'configs/evaluate.py'), "
                                        "Member('train', 'configs/cddpm.py', report=False)")
  (tmp_path / "w").mkdir()
  assert sweep_cli.cli(["x", f"--sweep={spec}", f"--workdir={tmp_path / 'w'}", "--report",
                        "--members=train"]) == 0
  assert capsys.readouterr().out.splitlines()[-1] == (
      "Not reporting (Member(..., report=False), 1): train")
  assert sweep_cli.cli(["x", f"--sweep={spec}", f"--workdir={tmp_path / 'w'}", "--report"]) == 0
  assert "train" not in capsys.readouterr().out  # (all members: the reporting ones)
