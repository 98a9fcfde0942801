"""Sweeps: members and their `--config.k=v` overrides, the resumable runner, Slurm scripts from the template, the report."""

import json
import os
import subprocess
import sys
import time

import ml_collections
import pytest

from sadm_jax import config as config_lib
from sadm_jax import sweep as sweep_cli
from sadm_jax.sweeps import members as members_lib
from sadm_jax.sweeps import runner, slurm
from sadm_jax.sweeps.members import Member, flag, grid, member_config, ordered
from tests.data import fake_data
from tests.helpers import REPO

TINY = os.path.join(REPO, "configs", "sweeps", "tiny_demo.py")
CDDPM = "configs/cddpm.py:tiny"


def _env():
  return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _write_sweep(path, members_src):
  path.write_text("from sadm_jax.sweeps import Member\n\n\ndef get_sweep():\n"
                  f"  return [{members_src}]\n")
  return str(path)


# ----------------------------------------------------------------------------- members


def test_members_are_checked_when_built():
  with pytest.raises(ValueError, match="member name 'a/b' is invalid"):
    Member("a/b", CDDPM)
  with pytest.raises(ValueError, match="'seed=3' is not a --config.key=value override"):
    Member("a", CDDPM, ["seed=3"])
  with pytest.raises(ValueError, match="overrides must be a list of strings"):
    Member("a", CDDPM, "--config.seed=3")
  m = Member("a", CDDPM, ["--config.seed=3"], after=["b"])
  assert m.overrides == ("--config.seed=3",) and m.after == ("b",)


def test_flag_writes_values_as_the_config_flags_read_them():
  assert flag("evaluate.sadm_workdirs", ["/w/a", "/w/b"]) == \
      "--config.evaluate.sadm_workdirs=('/w/a', '/w/b')"
  assert flag("diffusion.ensemble_timesteps", (249,)) == \
      "--config.diffusion.ensemble_timesteps=(249,)"
  assert flag("optimizer.learning_rate", 3e-4) == "--config.optimizer.learning_rate=0.0003"
  assert flag("sadm.use_cddpm", False) == "--config.sadm.use_cddpm=False"
  assert flag("data.data_dir", "/d x") == "--config.data.data_dir=/d x"


def test_grid_names_members_by_their_values():
  ms = grid({"optimizer.learning_rate": [1e-3, 1e-4], "sadm.use_residual": [True]}, CDDPM,
            name="lr_{}", overrides=["--config.seed=1"], after=("cddpm",))
  assert [m.name for m in ms] == ["lr_learning_rate=0.001,use_residual=True",
                                  "lr_learning_rate=0.0001,use_residual=True"]
  assert ms[1].overrides == ("--config.seed=1", "--config.optimizer.learning_rate=0.0001",
                             "--config.sadm.use_residual=True")
  assert ms[1].after == ("cddpm",)


def test_ordered_follows_dependencies_stably_and_rejects_bad_graphs():
  a, b, c = Member("a", CDDPM, after=["c"]), Member("b", CDDPM), Member("c", CDDPM)
  assert [m.name for m in ordered([a, b, c])] == ["b", "c", "a"]
  with pytest.raises(ValueError, match=r"duplicate member names \['b'\]"):
    ordered([b, b])
  with pytest.raises(ValueError, match="member a depends on c: neither in the run nor finished"):
    ordered([a, b])
  assert [m.name for m in ordered([a, b], done={"c"})] == ["a", "b"]
  with pytest.raises(ValueError, match="dependency cycle among a, c"):
    ordered([a, Member("c", CDDPM, after=["a"])])


def test_member_config_is_what_main_builds_from_the_same_arguments():
  m = Member("m", CDDPM, [
      flag("diffusion.ensemble_timesteps", (249,)), "--config.sadm.use_residual=False",
      "--config.evaluate.sadm_workdirs=('{workdir}/a', '{workdir}/b')", "--config.data.fold=3",
      "--config.evaluate.combination=weighted", "--config.optimizer.learning_rate=3e-4",
      "--config.sadm.weak_train_rows=(1, 4)", "--config.seed=1"])
  c = member_config(m, "/w", ["--config.data.data_dir=/d x", "--config.seed=9"])
  assert c.diffusion.ensemble_timesteps == (249,) and c.sadm.use_residual is False
  assert c.evaluate.sadm_workdirs == ("/w/a", "/w/b") and c.data.fold == 3
  assert c.optimizer.learning_rate == 3e-4 and c.sadm.weak_train_rows == (1, 4)
  assert c.data.data_dir == "/d x" and c.seed == 9  # extra overrides come last and win
  assert c.train.batch_size == 8  # the ':tiny' argument of the spec was applied
  assert members_lib.main_command(m, "/w")[1:5] == [
      "-m", "sadm_jax.main", f"--config={REPO}/configs/cddpm.py:tiny", "--workdir=/w/m"]


def test_member_config_errors_are_one_line_and_name_the_member(tmp_path):
  with pytest.raises(ValueError) as e:
    member_config(Member("a", CDDPM, ["--config.optimizer.learning_rat=1.0"]), "/w")
  assert str(e.value) == ("member a: --config.optimizer.learning_rat: no such config key "
                          "'learning_rat'. Did you mean \"learning_rate\" instead of "
                          "\"learning_rat\"?")
  with pytest.raises(ValueError, match="member a: .*Non-boolean argument"):
    member_config(Member("a", CDDPM, ["--config.sadm.use_cddpm=maybe"]), "/w")
  with pytest.raises(FileNotFoundError, match="member a: configs/not_yet.py: no such file"):
    member_config(Member("a", "configs/not_yet.py"), "/w")
  # The config file's own errors: the line `python -m sadm_jax.main` prints, no traceback.
  for i, (source, expected) in enumerate([
      ("def get_config(:\n", "cannot load the config file: SyntaxError: "),
      ("import no_such_module_x\n", "cannot load the config file: ModuleNotFoundError: "),
      ("x = 1\n", "the config file defines no get_config()"),
      ("def get_config():\n  return 3\n", "get_config() returned int, not the "),
  ]):
    bad = tmp_path / f"bad{i}.py"
    bad.write_text(source)
    with pytest.raises(ValueError) as e:
      member_config(Member("a", str(bad)), "/w")
    assert str(e.value).startswith(f"member a: --config={bad}: {expected}"), str(e.value)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
  with pytest.raises(ValueError) as e:
    member_config(Member("a", "configs/cddpm.py:huge"), "/w")
  assert str(e.value).endswith("Error whilst parsing config file: ValueError: unknown config "
                               "argument 'huge'; expected 'tiny' or nothing"), str(e.value)


def test_an_in_memory_base_config_is_copied_not_changed():
  base = ml_collections.ConfigDict({"stage": "x", "train": {"num_steps": 1}})
  c = member_config(Member("a", base, ["--config.train.num_steps=5"]), "/w")
  assert c.train.num_steps == 5 and base.train.num_steps == 1


def test_load_sweep_rejects_duplicates_and_unknown_dependencies(tmp_path):
  dup = _write_sweep(tmp_path / "dup.py", "Member('a', 'configs/cddpm.py'), "
                                          "Member('a', 'configs/cddpm.py')")
  with pytest.raises(ValueError, match=r"dup.py: duplicate member names \['a'\]"):
    members_lib.load_sweep(dup)
  dep = _write_sweep(tmp_path / "dep.py", "Member('a', 'configs/cddpm.py', after=['zzz'])")
  with pytest.raises(ValueError, match="dep.py: member a depends on zzz"):
    members_lib.load_sweep(dep)
  s = members_lib.load_sweep(TINY)
  with pytest.raises(ValueError, match="unknown member"):
    s.select(["zzz"])


# ----------------------------------------------------------------------------- running


class FakeRunner:
  """Records the members it is asked to run; fails those named in `fail`."""

  def __init__(self, fail=()):
    self.calls, self.fail = [], set(fail)

  def __call__(self, member, config, mdir, command):
    assert os.path.isfile(os.path.join(mdir, "config.json"))  # written before the run
    self.calls.append((member.name, config.seed, command[3:5]))
    return member.name not in self.fail


def _chain():
  return [Member("eval", CDDPM, ["--config.seed=3"], after=["train"]),
          Member("train", CDDPM, ["--config.seed=2"], after=["prep"]),
          Member("prep", CDDPM, ["--config.seed=1"]), Member("other", CDDPM)]


def test_runner_runs_in_dependency_order_and_skips_finished_members(tmp_path, capsys):
  fake = FakeRunner()
  assert runner.run_local(_chain(), str(tmp_path), ["--config.data.fold=1"], fake) == []
  assert [c[0] for c in fake.calls] == ["prep", "train", "eval", "other"]
  assert fake.calls[0][2] == [f"--config={REPO}/configs/cddpm.py:tiny",
                              f"--workdir={tmp_path}/prep"]
  saved = json.load(open(tmp_path / "train" / "config.json"))
  assert saved["seed"] == 2 and saved["data"]["fold"] == 1
  assert saved["data"]["slice_sampling"] is None  # as given: the run resolves placeholders
  assert json.load(open(tmp_path / "eval" / runner.DONE))["member"] == "eval"
  again = FakeRunner()
  assert runner.run_local(_chain(), str(tmp_path), ["--config.data.fold=1"], again) == []
  assert again.calls == [] and capsys.readouterr().out.count("done already, skipped") == 4
  # A changed setting is reported for finished members, never silently re-run.
  runner.run_local(_chain()[2:3], str(tmp_path), ["--config.data.fold=2"], again)
  assert "prep finished with a different config" in capsys.readouterr().out and again.calls == []


def test_a_failed_member_blocks_its_dependents_and_reruns_next_time(tmp_path, capsys):
  fake = FakeRunner(fail={"train"})
  assert runner.run_local(_chain(), str(tmp_path), (), fake) == ["train", "eval"]
  assert [c[0] for c in fake.calls] == ["prep", "train", "other"]
  assert "eval: not started, train failed" in capsys.readouterr().out
  assert not (tmp_path / "train" / runner.DONE).exists()
  retry = FakeRunner()
  assert runner.run_local(_chain(), str(tmp_path), (), retry) == []
  assert [c[0] for c in retry.calls] == ["train", "eval"]


def test_a_subset_needs_its_dependencies_finished(tmp_path):
  with pytest.raises(ValueError, match="member train depends on prep: neither in the run nor"):
    runner.run_local(_chain()[1:2], str(tmp_path), (), FakeRunner())
  runner.run_local(_chain()[2:3], str(tmp_path), (), FakeRunner())
  fake = FakeRunner()
  assert runner.run_local(_chain()[1:2], str(tmp_path), (), fake) == [] and len(fake.calls) == 1


def test_config_errors_stop_the_run_before_any_member(tmp_path):
  bad = _chain() + [Member("typo", CDDPM, ["--config.optimizer.learning_rat=1.0"])]
  fake = FakeRunner()
  with pytest.raises(ValueError,
                     match="member typo: --config.optimizer.learning_rat: no such config key"):
    runner.run_local(bad, str(tmp_path), (), fake)
  assert fake.calls == [] and not any(tmp_path.iterdir())


def test_bad_values_stop_the_run_and_the_slurm_scripts_before_any_member(tmp_path):
  """What `sadm_jax.main` refuses before reading a file (stage, choices, training values) stops
  a sweep before its first member, and --mode=slurm before writing a script."""
  for bad, expected in [
      (Member("b", CDDPM, ["--config.stage=nosuch"]),
       "member b: --config.stage='nosuch' is not one of"),
      (Member("b", "configs/sadm_draem.py:tiny", ["--config.sadm.mode=dreem"]),
       "member b: --config.sadm.mode='dreem' is not one of 'draem', 'brats', 'atlas'"),
      (Member("b", CDDPM, ["--config.train.eval_every=0"]),
       "member b: --config.train.eval_every=0 must be > 0"),
  ]:
    fake = FakeRunner()
    with pytest.raises(ValueError, match=expected):
      runner.run_local([Member("a", CDDPM), bad], str(tmp_path), (), fake)
    assert fake.calls == [] and not any(tmp_path.iterdir())
    sweep = members_lib.Sweep("s", TINY, (Member("a", CDDPM), bad))
    with pytest.raises(ValueError, match=expected):
      slurm.write_slurm(sweep, str(tmp_path), list(sweep.members))
    assert not any(tmp_path.iterdir())


def test_non_primary_processes_write_no_markers(tmp_path):
  ran = []
  assert runner.run_local(_chain()[2:3], str(tmp_path), (),
                          lambda m, c, d, cmd: ran.append(m.name) or True, primary=False) == []
  assert ran == ["prep"] and not (tmp_path / "prep" / runner.DONE).exists()
  assert runner.is_primary({"SLURM_PROCID": "1"}) is False
  assert runner.is_primary({"JAX_PROCESS_ID": "0", "SLURM_PROCID": "3"}) is True


def test_each_process_of_a_member_logs_to_its_own_file(tmp_path, monkeypatch):
  assert runner.log_path("W/m", {}) == os.path.join("W/m", "log.txt")
  assert runner.log_path("W/m", {"SLURM_PROCID": "3"}) == os.path.join("W/m", "log.3.txt")
  assert runner.log_path("W/m", {"JAX_PROCESS_ID": "0", "SLURM_PROCID": "3"}).endswith("log.txt")
  monkeypatch.setenv("SLURM_PROCID", "1")
  monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
  assert runner.run_subprocess(Member("m", CDDPM), None, str(tmp_path),
                               [sys.executable, "-c", "print('from process 1')"])
  assert "from process 1" in (tmp_path / "log.1.txt").read_text()
  assert not (tmp_path / "log.txt").exists()


def test_subprocess_runner_logs_the_command_and_its_output(tmp_path, capsys):
  m = Member("m", CDDPM)
  ok = runner.run_subprocess(m, None, str(tmp_path), [sys.executable, "-c", "print('hello')"])
  log = (tmp_path / "log.txt").read_text()
  assert ok and log.startswith(f"$ {sys.executable} -c ") and "hello" in log
  bad = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
  assert not runner.run_subprocess(m, None, str(tmp_path), bad)
  assert "m failed (exit 3)" in capsys.readouterr().out
  with pytest.raises(ValueError, match="in-memory config: run it in-process"):
    runner.run_subprocess(Member("x", ml_collections.ConfigDict({"a": 1})), None, str(tmp_path),
                          [])


def test_inprocess_runner_validates_like_main_and_reports_a_user_error(tmp_path, capsys):
  m = Member("p", CDDPM, ["--config.stage=prepare", f"--config.data.data_dir={tmp_path}/none"])
  assert runner.run_local([m], str(tmp_path), (), runner.run_inprocess) == ["p"]
  err = capsys.readouterr()
  assert f"error: --config.data.data_dir={tmp_path}/none: no such directory" in err.err
  assert "p failed (exit 2)" in err.out and not (tmp_path / "p" / runner.DONE).exists()


def test_ctrl_c_stops_the_sweep_in_one_line_exit_130(tmp_path, monkeypatch, capsys):
  """An interrupted member (exit 130, in process or as a subprocess) stops the sweep: the next
  member does not start, and the sweep CLI prints one line and exits 130, no traceback."""
  from sadm_jax import main as main_lib
  calls = []
  monkeypatch.setattr(main_lib, "run_checked",
                      lambda config, mdir, **kw: calls.append(mdir) or main_lib.INTERRUPTED)
  a, b = Member("a", CDDPM), Member("b", CDDPM)
  with pytest.raises(KeyboardInterrupt):
    runner.run_local([a, b], str(tmp_path), (), runner.run_inprocess)
  assert calls == [str(tmp_path / "a")] and not (tmp_path / "a" / runner.DONE).exists()
  with pytest.raises(KeyboardInterrupt):  # a `python -m sadm_jax.main` that exits 130
    runner.run_subprocess(a, None, str(tmp_path / "a"),
                          [sys.executable, "-c", "raise SystemExit(130)"])
  capsys.readouterr()

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(runner, "run_local", interrupted)
  assert sweep_cli.cli(["x", f"--sweep={TINY}", f"--workdir={tmp_path / 'w'}"]) == 130
  assert capsys.readouterr().err == ("error: sweep interrupted (SIGINT); finished members keep "
                                     "DONE: run the same command again to resume\n")


def test_ctrl_c_in_an_in_process_member_is_reported_once_by_its_caller(tmp_path, monkeypatch,
                                                                        capsys):
  """The member's stage is interrupted: run_checked leaves the line to the sweep (or the
  reproduction), so the user reads one `error:` line, not the member's and then the caller's."""
  from sadm_jax import main as main_lib
  from sadm_jax import validate

  def stage(config, workdir):
    raise KeyboardInterrupt
  monkeypatch.setattr(main_lib, "run_stage", stage)
  monkeypatch.setattr(validate, "validate", lambda *a, **k: None)
  with pytest.raises(KeyboardInterrupt):
    runner.run_local([Member("a", CDDPM)], str(tmp_path), (), runner.run_inprocess)
  assert "error:" not in capsys.readouterr().err


def test_a_member_runs_through_main_with_its_spec_and_overrides(tmp_path):
  """The subprocess runner's command reaches `sadm_jax.main` intact (stage prepare: no training)."""
  data = str(tmp_path / "data")
  fake_data.write_data_dir(data, n_ixi=6, n_patho=1)
  spec = _write_sweep(tmp_path / "p.py", "Member('prep', 'configs/cddpm.py:tiny', "
                                         "['--config.stage=prepare', '--config.data.splits="
                                         "(\\'IXI_test\\',)', '--config.data.clean_splits=False'])")
  work = tmp_path / "sweep"
  cmd = [sys.executable, "-m", "sadm_jax.sweep", f"--sweep={spec}", f"--workdir={work}", "--",
         f"--config.data.data_dir={data}", f"--config.data.cache_dir={tmp_path / 'cache'}"]
  res = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  summary = json.load(open(work / "prep" / "prepare_summary.json"))
  assert list(summary["splits"]) == ["IXI_test"] and summary["clean_splits"] is False
  assert summary["cache_dir"].startswith(str(tmp_path / "cache"))
  tiny = config_lib.preprocess_config(member_config(Member("t", CDDPM), "/w")).key()
  assert summary["preprocess"] == tiny != config_lib.preprocess_config(  # the spec's ':tiny'
      member_config(Member("t", "configs/cddpm.py"), "/w")).key()
  assert json.load(open(work / "prep" / "config.json"))["data"]["data_dir"] == data
  assert (work / "prep" / "log.txt").read_text().startswith(f"$ {sys.executable} -m sadm_jax.main")
  t0 = time.time()
  again = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
  assert again.returncode == 0 and "done already, skipped" in again.stdout
  assert time.time() - t0 < 30


def test_cli_errors_are_one_line(tmp_path, capsys):
  assert sweep_cli.cli(["x", f"--sweep={TINY}", f"--workdir={tmp_path}", "stray"]) == 2
  assert "unexpected arguments: stray (member overrides go after --)" in capsys.readouterr().err
  assert sweep_cli.cli(["x", f"--sweep={TINY}", f"--workdir={tmp_path}", "--",
                        "--config.optimizer.learning_rat=1"]) == 2
  assert capsys.readouterr().err.startswith(
      "error: member lr_2e-3: --config.optimizer.learning_rat: no such config key 'learning_rat'. "
      "Did you mean")
  assert sweep_cli.cli(["x", f"--sweep={TINY}", f"--workdir={tmp_path}", "--config.seed=3"]) == 2
  assert capsys.readouterr().err.startswith(
      "error: Unknown command line flag 'config.seed' (member options such as --config.seed go "
      "after --)\n")

  afile = tmp_path / "afile"
  afile.write_text("")
  for mode in ("local", "slurm"):
    assert sweep_cli.cli(["x", f"--sweep={TINY}", f"--workdir={afile}", f"--mode={mode}"]) == 2
    assert capsys.readouterr().err == f"error: --workdir={afile} is a file, not a directory\n"
  assert sweep_cli.cli(["x", f"--sweep={TINY}", "--workdir=gs://bucket/w", "--mode=slurm"]) == 2
  assert capsys.readouterr().err.startswith("error: --workdir=gs://bucket/w is a URL; ")


@pytest.mark.parametrize("source,expected", [
    ("def get_sweep(:\n", "cannot load the sweep file: SyntaxError: invalid syntax (bad.py, line 1)"),
    ("def get_sweep():\n  return nope\n",
     "cannot load the sweep file: NameError: name 'nope' is not defined"),
    ("x = 1\n", "the sweep file defines no get_sweep()"),
])
def test_a_broken_sweep_file_is_one_line_naming_it(tmp_path, capsys, source, expected):
  bad = tmp_path / "bad.py"
  bad.write_text(source)
  assert sweep_cli.cli(["x", f"--sweep={bad}", f"--workdir={tmp_path / 'w'}"]) == 2
  assert capsys.readouterr().err == f"error: {bad}: {expected}\n"
  assert not os.path.exists(tmp_path / "w")


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
  spec = _write_sweep(tmp_path / "s.py", "Member('b', 'configs/cddpm.py:tiny', after=['a']), "
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


# ----------------------------------------------------------------------------- sweeps in configs/


def test_sadm_ablation_sweep_covers_the_table_rows():
  s = members_lib.load_sweep(os.path.join(REPO, "configs", "sweeps", "sadm_ablation.py"))
  by = {m.name: m for m in s.members}
  trained = [m for m in s.members if m.name.startswith("train-")]
  assert len(trained) == 7 * 5 and not by["cddpm"].report
  rows = [m for m in s.members if m.report]
  assert {m.name for m in rows} >= {"sadm_draem", "unet_atlas", "sadm_draem_t250",
                                    "sadm_draem_lam0.25"}
  assert by["train-unet_atlas-f4"].after == () and by["train-sadm_brats-f3"].after == ("cddpm",)
  assert by["sadm_draem"].after == ("cddpm",) + tuple(f"train-sadm_draem-f{k}" for k in range(5))
  configs = {m.name: member_config(m, "/w") for m in s.members}  # every override is a real field
  assert configs["train-sadm_draem_no_residual-f0"].sadm.use_residual is False
  assert configs["train-unet_atlas-f4"].sadm.use_cddpm is False
  assert configs["train-unet_atlas-f4"].sadm.cddpm_workdir == ""
  assert configs["train-sadm_brats-f3"].sadm.repeat == 3
  assert configs["train-sadm_brats-f3"].sadm.cddpm_workdir == "/w/cddpm"
  assert configs["unet_brats"].evaluate.sadm_workdirs[0] == "/w/train-unet_brats-f0"
  assert configs["sadm_draem_t250"].diffusion.ensemble_timesteps == (249,)
  assert configs["sadm_draem_lam0.25"].evaluate.combination == "weighted"
  assert configs["sadm_draem_lam0.25"].evaluate.lam == 0.25


SWEEP_FILES = sorted(f for f in os.listdir(os.path.join(REPO, "configs", "sweeps"))
                     if f.endswith(".py"))


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_every_shipped_sweep_has_distinct_valid_members(name):
  """Each member of configs/sweeps/* is a different run (its config differs from every other's)
  in its own W/<member>, and passes the checks sadm_jax.main makes before reading a file."""
  s = members_lib.load_sweep(os.path.join(REPO, "configs", "sweeps", name))
  seen = {}
  for m in s.members:
    c = member_config(m, "/w", ["--config.data.data_dir=/d"])
    members_lib.check_member_config(m, c)
    key = json.dumps(c.to_dict(), sort_keys=True, default=list)
    assert key not in seen, f"{m.name} is the same run as {seen.get(key)}"
    seen[key] = m.name
  assert len({members_lib.member_argv(m, "/w")[1] for m in s.members}) == len(s.members)


# ----------------------------------------------------------------------------- report


def _report_rows(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  keys = ("method", "train_anomalies", "test_set", "fold", "n_volumes", "dice", "best_dice",
          "auprc")
  json.dump({"protocol": {}, "rows": [dict(zip(keys, r)) for r in rows]}, open(path, "w"))


def test_report_tabulates_every_member_with_the_evaluation_tables(tmp_path, capsys):
  spec = _write_sweep(tmp_path / "r.py", "Member('full', 'configs/evaluate.py'), "
                                         "Member('absent', 'configs/evaluate.py'), "
                                         "Member('trainer', 'configs/cddpm.py', report=False)")
  work = tmp_path / "w"
  _report_rows(str(work / "full" / "report" / "metrics.json"), [
      ["cddpm", "none", "Brats21", "fold0", 10, 0.50, 0.58, 0.59],
      ["cddpm", "none", "Brats21", "fold1", 10, 0.52, 0.60, 0.61],
      ["sadm", "draem", "Brats21", "fold0", 10, 0.55, 0.6053, None]])
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
  assert len(csv_lines) == 4 and all(l.endswith(",full") for l in csv_lines[1:])
