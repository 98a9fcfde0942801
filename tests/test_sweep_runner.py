"""Sweeps: the resumable runner (in process or as subprocesses), Ctrl-C, the sweep CLI's errors."""

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
from sadm_jax.sweeps.members import Member, member_config
from sadm_jax.utils import signals
from tests.data import fake_data
from tests.helpers import REPO
from tests.sweep_common import CDDPM, TINY, write_sweep


def _env():
  return {**os.environ, "PYTHONUNBUFFERED": "1"}


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
  # A field the base config gained since a member ran (missing from its config.json) is no change.
  saved = json.load(open(tmp_path / "prep" / "config.json"))
  del saved["predict"]["threshold_set"]
  json.dump(saved, open(tmp_path / "prep" / "config.json", "w"))
  runner.run_local(_chain()[2:3], str(tmp_path), ["--config.data.fold=1"], again)
  assert "different config" not in capsys.readouterr().out and again.calls == []
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
  for code in ("130", "143", "-15"):  # a `python -m sadm_jax.main` interrupted (SIGINT), sent
    with pytest.raises(KeyboardInterrupt) as e:  # SIGTERM (exit 143), or killed by it: not a
      runner.run_subprocess(a, None, str(tmp_path / "a"), [  # failed member the next follows
          sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
          if code == "-15" else f"raise SystemExit({code})"])
    assert isinstance(e.value, signals.Terminated) == (code != "130")  # the sweep's exit code
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
  spec = write_sweep(tmp_path / "p.py", "Member('prep', 'configs/cddpm.py:tiny', "
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
    # a ValueError (a member's own check, or the file's) did not name the file
    ("from sadm_jax.sweep import Member\ndef get_sweep():\n  return [Member('a b', 'c.py')]\n",
     "member name 'a b' is invalid (letters, digits, ._=+-)"),
    ("def get_sweep():\n  return [int('2e-3')]\n",
     "invalid literal for int() with base 10: '2e-3'"),
    # an override that is not a string: "TypeError: expected string or bytes-like object"
    ("from sadm_jax.sweep import Member\ndef get_sweep():\n  return [Member('a', 'c.py', [5])]\n",
     "member a: 5 is not a --config.key=value override"),
    ("from sadm_jax.sweep import Member\ndef get_sweep():\n"
     "  return [Member('a', 'c.py', after=[Member('b', 'c.py')])]\n",
     "member a: after must list member names, got (Member("),
])
def test_a_broken_sweep_file_is_one_line_naming_it(tmp_path, capsys, source, expected):
  bad = tmp_path / "bad.py"
  bad.write_text(source)
  assert sweep_cli.cli(["x", f"--sweep={bad}", f"--workdir={tmp_path / 'w'}"]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: {bad}: {expected}") and err.count("\n") == 1
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("flag,values", [("workdir", ("a", "b")), ("sweep", (TINY, TINY)),
                                         ("mode", ("local", "slurm")), ("members", ("x", "y"))])
def test_a_sweep_flag_given_twice_is_refused_not_the_last_one_kept(tmp_path, capsys, flag, values):
  argv = ["x", f"--sweep={TINY}", f"--workdir={tmp_path / 'w'}", "--mode=slurm"]
  argv = [a for a in argv if not a.startswith(f"--{flag}=")]
  argv += [f"--{flag}={v if flag != 'workdir' else tmp_path / v}" for v in values]
  assert sweep_cli.cli(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: --{flag} is given 2 times (") and err.endswith("; give one\n")
  assert not os.listdir(tmp_path)  # no workdir made, no scripts written


@pytest.mark.parametrize("extra", [["--workdir=/elsewhere"], ["--workdir", "/elsewhere"]])
def test_a_workdir_after_the_double_dash_is_refused_not_dropped(tmp_path, capsys, extra):
  for mode in ("slurm", "local"):
    assert sweep_cli.cli(["x", f"--sweep={TINY}", f"--workdir={tmp_path / 'w'}", f"--mode={mode}",
                          "--", *extra]) == 2
    assert capsys.readouterr().err.startswith("error: --workdir=/elsewhere follows --: member m "
                                              "runs in W/m of the sweep's own --workdir=W")
  assert not os.path.exists(tmp_path / "w" / "slurm")


def test_a_file_in_the_way_of_a_member_or_the_job_scripts_is_one_line(tmp_path, capsys):
  w = tmp_path / "w"
  w.mkdir()
  (w / "lr_1e-4").write_text("")  # the second member's workdir
  for mode in ("local", "slurm"):
    assert sweep_cli.cli(["x", f"--sweep={TINY}", f"--workdir={w}", f"--mode={mode}"]) == 2
    assert capsys.readouterr().err == (f"error: member lr_1e-4: --workdir={w / 'lr_1e-4'} is a "
                                       "file, not a directory\n")
  assert sorted(os.listdir(w)) == ["lr_1e-4"]  # the first member did not start
  (w / "lr_1e-4").unlink()
  (w / "slurm").write_text("")
  assert sweep_cli.cli(["x", f"--sweep={TINY}", f"--workdir={w}", "--mode=slurm"]) == 2
  assert capsys.readouterr().err == (f"error: the sweep's job-script folder={w / 'slurm'} is a "
                                     "file, not a directory\n")


def test_sigterm_to_the_sweep_alone_stops_its_running_member(tmp_path, capsys):
  """`kill <sweep pid>` left the member running, orphaned, in its workdir. The member gets the
  SIGTERM (a training member saves its step before it stops)."""
  import signal
  import threading
  child = ("import signal, sys, time\n"
           "def stop(*a):\n  print('member got SIGTERM', flush=True); sys.exit(143)\n"
           "signal.signal(signal.SIGTERM, stop)\nprint('started', flush=True)\ntime.sleep(20)\n")
  mdir = tmp_path / "a"
  mdir.mkdir()
  log = mdir / "log.txt"

  def kill_sweep():
    while "\nstarted\n" not in (log.read_text() if log.exists() else ""):  # (not the command)
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)
  old = signal.getsignal(signal.SIGTERM)
  with signals.terminate_as_interrupt():
    threading.Thread(target=kill_sweep, daemon=True).start()
    t0 = time.time()
    with pytest.raises(signals.Terminated):
      runner.run_subprocess(Member("a", CDDPM), None, str(mdir), [sys.executable, "-c", child])
  assert signal.getsignal(signal.SIGTERM) is old  # restored
  assert time.time() - t0 < 30 and log.read_text().endswith("\nstarted\nmember got SIGTERM\n")

  def terminated(*args, **kwargs):
    raise signals.Terminated
  run_local, runner.run_local = runner.run_local, terminated
  try:
    assert sweep_cli.cli(["x", f"--sweep={TINY}", f"--workdir={tmp_path / 'w'}"]) == 143
  finally:
    runner.run_local = run_local
  assert signal.getsignal(signal.SIGTERM) is old
  assert capsys.readouterr().err == ("error: sweep interrupted (SIGTERM); finished members keep "
                                     "DONE: run the same command again to resume\n")


def test_a_repeated_sigterm_to_the_sweep_lets_its_member_finish_its_save(tmp_path):
  """A second SIGTERM to the sweep while its member was stopping (Slurm signals the job again at
  its time limit; `kill` twice) SIGKILLed the member, mid-save. It is the same request: the
  sweep waits for the member as after the first one."""
  import signal
  import threading
  child = ("import signal, sys, time\n"  # a training member: a SIGTERM ends it 2 s later
           "def stop(*a):\n  print('saving', flush=True); time.sleep(2)\n"
           "  print('saved', flush=True); sys.exit(143)\n"
           "signal.signal(signal.SIGTERM, stop)\nprint('started', flush=True)\ntime.sleep(20)\n")
  mdir = tmp_path / "a"
  mdir.mkdir()
  log = mdir / "log.txt"

  def kill_sweep_twice():
    for line in ("\nstarted\n", "\nsaving\n"):
      while line not in (log.read_text() if log.exists() else ""):
        time.sleep(0.05)
      os.kill(os.getpid(), signal.SIGTERM)
  with signals.terminate_as_interrupt():
    threading.Thread(target=kill_sweep_twice, daemon=True).start()
    with pytest.raises(signals.Terminated):
      runner.run_subprocess(Member("a", CDDPM), None, str(mdir), [sys.executable, "-c", child])
  assert log.read_text().endswith("\nstarted\nsaving\nsaved\n")


def test_a_grid_member_can_be_selected_by_name_as_its_slurm_job_does(tmp_path, capsys):
  """Grid names joined their parts with ',', which --members splits on: every job of a grid
  sweep over 2 axes stopped with 'unknown member(s) lr=0.001, seed=1'."""
  spec = tmp_path / "g.py"
  spec.write_text("from sadm_jax.sweep import grid\n\n\ndef get_sweep():\n  return grid("
                  "{'optimizer.learning_rate': [1e-3, 1e-4], 'seed': [1]}, "
                  "'configs/cddpm.py:tiny')\n")
  ms = members_lib.load_sweep(str(spec)).members
  assert [m.name for m in ms] == ["learning_rate=0.001_seed=1", "learning_rate=0.0001_seed=1"]
  assert sweep_cli.cli(["x", f"--sweep={spec}", f"--workdir={tmp_path / 'w'}", "--mode=slurm",
                        f"--members={ms[1].name}"]) == 0
  assert sorted(os.listdir(tmp_path / "w" / "slurm")) == [f"{ms[1].name}.sbatch", "submit.sh"]
  with pytest.raises(ValueError, match=r"member name 'a,b' is invalid \(letters, digits, ._=\+-\)"):
    Member("a,b", CDDPM)


@pytest.mark.parametrize("mode", ["local", "slurm"])
def test_an_in_memory_config_is_refused_up_front_where_members_run_as_commands(tmp_path, capsys,
                                                                               mode):
  """The subprocess runner refused it when it reached the member (after the ones before had
  run); a Slurm job, in the queue."""
  spec = tmp_path / "m.py"
  spec.write_text("from configs import cddpm\nfrom sadm_jax.sweep import Member\n\n\n"
                  "def get_sweep():\n  return [Member('a', 'configs/cddpm.py:tiny'), "
                  "Member('b', cddpm.get_config('tiny'))]\n")
  assert sweep_cli.cli(["x", f"--sweep={spec}", f"--workdir={tmp_path / 'w'}",
                        f"--mode={mode}"]) == 2
  how = "--mode=slurm's jobs run" if mode == "slurm" else "--runner=subprocess runs"
  assert capsys.readouterr().err == (
      f"error: member(s) b have an in-memory config (a ConfigDict), but {how} `python -m "
      "sadm_jax.main --config=<file>`: give them a 'configs/x.py[:arg]' spec, or run locally "
      "with --runner=inprocess\n")
  assert os.listdir(tmp_path / "w") == []


def test_a_sweep_file_is_found_relative_to_the_current_directory(tmp_path, monkeypatch, capsys):
  """`--sweep=mine.py` beside the user was looked for under the repository root only: 'mine.py:
  no such file'. The shipped ones are still found from anywhere."""
  write_sweep(tmp_path / "mine.py", "Member('a', 'configs/cddpm.py:tiny')")
  monkeypatch.chdir(tmp_path)
  assert sweep_cli.cli(["x", "--sweep=mine.py", "--workdir=w", "--mode=slurm"]) == 0
  assert f"--sweep={tmp_path / 'mine.py'} " in (tmp_path / "w" / "slurm" / "a.sbatch").read_text()
  assert sweep_cli.cli(["x", "--sweep=configs/sweeps/tiny_demo.py", "--workdir=w2",
                        "--mode=slurm"]) == 0
  capsys.readouterr()
  assert sweep_cli.cli(["x", "--sweep=nope.py", "--workdir=w3"]) == 2
  assert capsys.readouterr().err == (f"error: nope.py: no such file (here or under the "
                                     f"repository root {REPO})\n")
  write_sweep(tmp_path / "bad.py", "Member('a', 'my_configs/x.py')")
  assert sweep_cli.cli(["x", "--sweep=bad.py", "--workdir=w4", "--mode=slurm"]) == 2
  assert capsys.readouterr().err == (f"error: member a: my_configs/x.py: no such file (a member's "
                                     f"config spec is relative to the repository root {REPO})\n")


def test_a_stopped_member_that_cannot_resume_stops_the_run_before_any_member(tmp_path):
  """Its changed config was refused when the member was reached, after the ones before it."""
  from sadm_jax.train import workdir as workdir_lib
  a, b = Member("a", CDDPM), Member("b", CDDPM, ["--config.model.unet.num_res_blocks=2"])
  saved = member_config(b, str(tmp_path)).to_dict()
  (tmp_path / "b" / "checkpoints" / "2").mkdir(parents=True)  # stopped after step 2
  saved["model"]["unet"]["num_res_blocks"] = 1  # it started with another network
  (tmp_path / "b" / workdir_lib.CONFIG_FILE).write_text(json.dumps(saved))
  fake = FakeRunner()
  with pytest.raises(ValueError, match=r"^member b: .*/b: holds a run started with another "
                                       r"config \(model.unet.num_res_blocks 1 → 2\)"):
    runner.run_local([a, b], str(tmp_path), (), fake)
  assert fake.calls == []
  saved["model"]["unet"]["num_res_blocks"] = 2  # the same config: it resumes
  (tmp_path / "b" / workdir_lib.CONFIG_FILE).write_text(json.dumps(saved))
  assert runner.run_local([a, b], str(tmp_path), (), fake) == []
  assert [c[0] for c in fake.calls] == ["a", "b"]


def test_a_subprocess_member_is_told_to_stop_with_the_sweep(tmp_path):
  """The member's `sadm_jax.main` watches the pid the sweep gives it (`signals.stop_with_parent`):
  a sweep killed outright no longer leaves its member training on, orphaned."""
  mdir = tmp_path / "a"
  mdir.mkdir()
  code = (f"import os; print('parent', os.environ[{signals.PARENT_VAR!r}] == str(os.getppid()))")
  assert runner.run_subprocess(Member("a", CDDPM), None, str(mdir), [sys.executable, "-c", code])
  assert (mdir / "log.txt").read_text().endswith("\nparent True\n")


def test_after_sigterm_the_sweep_waits_for_its_member_to_save(tmp_path, monkeypatch,
                                                              python_sigint):
  """A training member given SIGTERM finishes its step, validation included, and saves it: that
  may take longer than the grace a Ctrl-C'd member gets (`INTERRUPT_GRACE_S`, 60 s), and the
  sweep killed it after that grace, mid-save (Slurm's `--signal=TERM@120` left it 60 s). After
  SIGTERM the sweep now waits for it, a repeated SIGTERM included (the same request); the
  scheduler's own kill, or a Ctrl-C to the sweep, bounds the wait."""
  import signal
  import threading
  monkeypatch.setattr(runner, "INTERRUPT_GRACE_S", 0.5)
  child = ("import signal, sys, time\n"
           "def stop(*a):\n  time.sleep(2); print('member saved', flush=True); sys.exit(143)\n"
           "signal.signal(signal.SIGTERM, stop)\nprint('started', flush=True)\ntime.sleep(20)\n")
  mdir = tmp_path / "a"
  mdir.mkdir()
  log = mdir / "log.txt"

  def kill_sweep(signums):
    while "\nstarted\n" not in (log.read_text() if log.exists() else ""):  # (not the command)
      time.sleep(0.05)
    for signum in signums:
      os.kill(os.getpid(), signum)
      time.sleep(0.5)
  for signums, last, raised in (
      ((signal.SIGTERM,), "started\nmember saved", signals.Terminated),
      ((signal.SIGTERM, signal.SIGTERM), "started\nmember saved", signals.Terminated),
      ((signal.SIGTERM, signal.SIGINT), "started", KeyboardInterrupt)):  # Ctrl-C: killed
    log.unlink(missing_ok=True)
    with signals.terminate_as_interrupt():
      threading.Thread(target=kill_sweep, args=(signums,), daemon=True).start()
      with pytest.raises(raised):
        runner.run_subprocess(Member("a", CDDPM), None, str(mdir), [sys.executable, "-c", child])
    assert log.read_text().endswith(f"\n{last}\n"), signums
