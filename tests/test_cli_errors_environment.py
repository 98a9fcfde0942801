"""Mistakes in the environment and while a stage runs: one `error:` line, exit 2 (Ctrl-C: 130)."""

import os
import subprocess
import sys

import pytest

from sadm_jax import validate
from tests.cli_common import ENV, one_error, run_main
from tests.helpers import REPO


def test_missing_data_dir_is_refused(tmp_path):
  res = run_main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={tmp_path / 'none'}")
  assert one_error(res) == (f"error: --config.data.data_dir={tmp_path / 'none'}: no such "
                            "directory (stage cddpm reads the data directory (DATA_DIR))")
  res = run_main(f"--workdir={tmp_path / 'w'}")
  assert one_error(res).startswith("error: --config.data.data_dir is not set")


def test_workdir_that_is_a_file_is_refused(cli_data_dir, tmp_path):
  f = tmp_path / "w"
  f.write_text("not a dir")
  res = run_main(f"--workdir={f}", f"--config.data.data_dir={cli_data_dir}")
  assert one_error(res) == f"error: --workdir={f} is a file, not a directory"
  res = run_main(f"--workdir={f / 'sub'}", f"--config.data.data_dir={cli_data_dir}")
  assert one_error(res) == (f"error: --workdir={f / 'sub'} cannot be created: {f} is a file, "
                            "not a directory")
  assert f.read_text() == "not a dir"


def test_unwritable_workdir_is_refused(cli_data_dir):
  # /sys refuses new entries even to root (EPERM).
  res = run_main("--workdir=/sys/sadm_workdir", f"--config.data.data_dir={cli_data_dir}")
  assert one_error(res) == ("error: --workdir=/sys/sadm_workdir is not writable: Operation not "
                            "permitted")


def test_read_only_filesystem_workdir_is_refused(cli_data_dir, tmp_path):
  mnt = tmp_path / "ro"
  mnt.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "none", str(mnt)],
                    capture_output=True).returncode:
    pytest.skip("cannot mount a read-only tmpfs here (needs CAP_SYS_ADMIN)")
  try:
    for work in (mnt, mnt / "new"):
      res = run_main(f"--workdir={work}", f"--config.data.data_dir={cli_data_dir}")
      assert one_error(res) == f"error: --workdir={work} is not writable: Read-only file system"
  finally:
    subprocess.run(["umount", str(mnt)], check=True)


def test_data_error_is_printed_once(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  res = run_main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={empty}",
                 config="configs/prepare.py")
  line = one_error(res)
  assert str(empty) in line
  assert not any(l.startswith("E") for l in res.stderr.splitlines())


def test_non_finite_training_loss_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
  """A diverged run stops with the loop's one-line message (naming the kept step), exit code 2."""
  from configs import cddpm as cddpm_config
  from sadm_jax import main as main_lib
  from sadm_jax.train import loop

  def diverge(config, workdir):
    raise loop.NonFiniteLossError("non-finite training loss (nan) at step 5; stopping. The last "
                                  "good checkpoint (step 4) is kept in W/checkpoints")

  monkeypatch.setattr(main_lib, "run_stage", diverge)
  monkeypatch.setattr(validate, "validate", lambda *a, **k: None)
  assert main_lib.run_checked(cddpm_config.get_config("tiny"), str(tmp_path)) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: non-finite training loss (nan) at step 5; stopping. The last good "
                 "checkpoint (step 4) is kept in W/checkpoints"]


def test_unwritable_compile_log_is_one_line_before_anything_runs(cli_data_dir, tmp_path):
  log = tmp_path / "no_such_dir" / "compile.jsonl"
  res = run_main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={cli_data_dir}",
                 env={"SADM_COMPILE_LOG": str(log)})
  assert one_error(res) == (f"error: SADM_COMPILE_LOG={log}: cannot write the compile log "
                            "(No such file or directory)")
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("env,expected", [
    ({"SLURM_NTASKS": "two", "SLURM_PROCID": "0", "SLURM_STEP_NODELIST": "n1"},
     "error: environment variable SLURM_NTASKS='two' is not an integer"),
    ({"SADM_DISTRIBUTED": "yes"}, "error: SADM_DISTRIBUTED='yes': expected 'auto', 'off' or unset"),
    ({"SADM_NUM_GPUS": "two"}, "error: environment variable SADM_NUM_GPUS='two' is not an integer"),
    ({"JAX_PLATFORMS": "nosuchplatform"},
     "error: JAX_PLATFORMS=nosuchplatform: no JAX backend: Unable to initialize backend "
     "'nosuchplatform'"),
])
def test_bad_environment_is_one_line(cli_data_dir, tmp_path, env, expected):
  res = run_main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={cli_data_dir}", env=env)
  assert one_error(res).startswith(expected), res.stderr
  assert not os.path.exists(tmp_path / "w")


def _run_stage_raising(monkeypatch, tmp_path, exc: BaseException) -> int:
  """`main.run_checked` on the tiny cDDPM config with a stage that raises `exc`; its exit code."""
  from configs import cddpm as cddpm_config
  from sadm_jax import main as main_lib

  def stage(config, workdir):
    raise exc

  monkeypatch.setattr(main_lib, "run_stage", stage)
  monkeypatch.setattr(validate, "validate", lambda *a, **k: None)
  return main_lib.run_checked(cddpm_config.get_config("tiny"), str(tmp_path))


def test_interrupt_is_one_line_exit_130(monkeypatch, capsys, tmp_path):
  """Ctrl-C (SIGINT) in a stage: one line saying the workdir resumes, exit code 130 (128 +
  SIGINT, as a shell reports it), no traceback."""
  assert _run_stage_raising(monkeypatch, tmp_path, KeyboardInterrupt()) == 130
  assert capsys.readouterr().err.strip().splitlines() == [
      f"error: stage cddpm interrupted (SIGINT); {tmp_path} keeps only complete files: run the "
      "same command again to resume"]


# A child's minute of work, as Python code: short sleeps, as real work returns to Python between
# its calls. With one 60-s sleep a SIGTERM waited out the minute in 8 of 30 runs under
# load (a faulthandler dump 20 s after the signal: the main thread still asleep; the handler ran
# as soon as another signal woke it). A process-directed signal may be taken by any thread (XLA
# runs a dozen); Python then only flags it, and the main thread runs the handler when it next
# runs Python code, which a sleep's single system call does not.
_A_MINUTE = "for _ in range(600): time.sleep(0.1)"


def _sleeping_stage(workdir, setup: str = "", args: str = "") -> str:
  """Python code running `sadm_jax.main` as the user does, its config's checks skipped and its
  stage replaced by one that prints 'started', sleeps a minute and prints 'unwound' however it
  ends; `setup`: code run before, `args`: more arguments, each quoted and followed by ', '."""
  return ("import sys, time\n"
          "from absl import app\n"
          "from sadm_jax import main as m, validate\n"
          f"{setup}"
          "validate.validate = lambda *a, **k: None\n"
          "def stage(config, workdir):\n"
          "  try:\n"
          "    print('started', flush=True)\n"  # (inside: the signal may come at once)
          f"    {_A_MINUTE}\n"
          "  finally:\n"
          "    print('unwound', flush=True)\n"
          "m.run_stage = stage\n"
          f"sys.argv = ['sadm_jax.main', '--config=configs/cddpm.py:tiny', '--workdir={workdir}',"
          f" {args}'--config.data.data_dir={workdir}']\n"
          "app.run(m.main, flags_parser=m.parse_flags)\n")


def _sigterm_after(proc: subprocess.Popen, line: str) -> tuple[str, str]:
  """Sends `proc` SIGTERM once it printed `line`; (the rest of its stdout, its stderr) after it
  ended with exit code 143 within 30 s (killed, not left behind, when it does not)."""
  import signal
  import time
  try:
    while (got := proc.stdout.readline()) not in (line + "\n", ""):  # (after the topology line)
      pass
    assert got == line + "\n", proc.stderr.read()[-2000:]
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
  finally:
    proc.kill()  # (a no-op once it has ended)
    proc.wait()
  assert proc.returncode == 143 and time.time() - t0 < 30, err[-2000:]
  return out, err


def test_sigterm_is_an_interrupt_one_line_exit_143(tmp_path):
  """`python -m sadm_jax.main` sent SIGTERM (Slurm's preemption or time limit, `kill`) while its
  stage runs: it unwinds like Ctrl-C (saves waited for, whole files) and ends with one line and
  exit code 143 (128 + SIGTERM); before, SIGTERM killed it on the spot, without a word."""
  child = _sleeping_stage(tmp_path)
  proc = subprocess.Popen([sys.executable, "-c", child], cwd=REPO, env=ENV, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  out, err = _sigterm_after(proc, "started")
  assert out == "unwound\n"  # the stage's `finally` ran
  assert err.strip().splitlines()[-1] == (
      f"error: stage cddpm interrupted (SIGTERM); {tmp_path} keeps only complete files: run the "
      "same command again to resume")


def test_sigterm_in_the_stages_imports_is_one_line_exit_143(tmp_path):
  """SIGTERM in the second or more `run_checked` spends importing the stage's modules (Orbax,
  grain, the training loop) before its checks: a traceback and exit 1 (the imports were outside
  its handling). Now the one line and 143, as anywhere else."""
  slow = ("import sys, time\n"  # the training loop's import takes a minute
          "class Slow:\n"
          "  def find_spec(self, name, path=None, target=None):\n"
          "    if name == 'sadm_jax.train.loop':\n"
          "      print('importing', flush=True)\n"
          f"      {_A_MINUTE}\n"
          "sys.meta_path.insert(0, Slow())\n")
  proc = subprocess.Popen([sys.executable, "-c", slow + _sleeping_stage(tmp_path)], cwd=REPO,
                          env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  out, err = _sigterm_after(proc, "importing")
  assert out == ""  # the stage never started
  assert err.strip().splitlines()[-1] == (
      f"error: stage cddpm interrupted (SIGTERM); {tmp_path} keeps only complete files: run the "
      "same command again to resume")
  assert "Traceback" not in err


def test_an_interrupt_in_the_checks_of_one_process_stops_the_others(tmp_path, monkeypatch,
                                                                     capsys):
  """A SIGTERM that reached one process of several in its start-up checks (or the imports before
  them): that process left without a word to the others, which waited for it in the checks'
  all-gather until JAX's timeout, then crashed (a traceback, exit 1). It now takes part in the
  agreement with a note of its SIGTERM, and every process stops as after a SIGTERM (fake 2
  processes: the all-gather answers for process 1)."""
  from sadm_jax import distributed
  from sadm_jax import main as main_lib
  from sadm_jax.utils import signals
  from configs import cddpm

  def terminated(*args):
    raise signals.Terminated
  sent = []
  monkeypatch.setattr(validate, "validate", terminated)  # this process: SIGTERM in its checks
  monkeypatch.setattr(distributed, "allgather_json", lambda mine: sent.append(mine) or [
      mine, ["the start-up checks", None]])
  config = cddpm.get_config("tiny")
  assert main_lib.run_checked(config, str(tmp_path)) == 143
  assert sent == [["the start-up checks", "\0interrupted: SIGTERM"]]
  monkeypatch.setattr(validate, "validate", lambda *a: None)  # process 1 got it
  monkeypatch.setattr(distributed, "allgather_json", lambda mine: [
      mine, ["the start-up checks", "\0interrupted: SIGTERM"]])
  monkeypatch.setattr(main_lib, "run_stage", lambda *a: pytest.fail("started"))
  capsys.readouterr()
  assert main_lib.run_checked(config, str(tmp_path)) == 143
  out, err = capsys.readouterr()
  assert out == "SIGTERM (process 1) during the start-up checks; stopping\n"
  assert err.startswith("error: stage cddpm interrupted (SIGTERM)")


def test_a_sigterm_before_the_checks_of_several_processes_waits_for_their_agreement(
    tmp_path, monkeypatch, capsys):
  """Several processes: a SIGTERM that reached one of them between `jax.distributed`'s start
  (`main`'s `start`) and the start-up checks killed it there (no handler yet) or, in the checks'
  agreement, stopped it alone: the others waited for it until JAX's timeout crashed them. It is
  now held and told to the others in the agreement (fake 2 processes: the all-gather answers for
  process 1)."""
  import signal
  from sadm_jax import distributed
  from sadm_jax import main as main_lib
  from sadm_jax.utils import signals
  from configs import cddpm
  sent = []
  monkeypatch.setattr(validate, "validate", lambda *a: None)
  monkeypatch.setattr(distributed, "allgather_json", lambda mine: sent.append(mine) or [
      mine, [mine[0], None]])
  monkeypatch.setattr(main_lib, "run_stage", lambda *a: pytest.fail("started"))
  with signals.terminate_as_interrupt():
    assert main_lib.run_checked(cddpm.get_config("tiny"), str(tmp_path), several=True,
                                start=lambda: os.kill(os.getpid(), signal.SIGTERM)) == 143
  assert sent == [["the start-up checks", "\0interrupted: SIGTERM"]]
  out, err = capsys.readouterr()
  assert out == "SIGTERM (process 0) during the start-up checks; stopping\n"
  assert err.startswith("error: stage cddpm interrupted (SIGTERM)")


def test_a_sigterm_while_the_processes_connect_stops_a_process_whose_peers_never_come(tmp_path):
  """Process 1 of 2 waits in `jax.distributed.initialize` for a process 0 that never comes (it
  failed to start, its node is gone) and gets a SIGTERM (`scancel`, a `kill`): held for the
  start-up checks, the signal ran no handler while JAX waited in C++, and the process went on
  waiting until JAX's 5-minute timeout. It now stops with the one line, exit 143, once the others
  had `distributed.JOIN_GRACE_S` (here 1 s) more to come."""
  import signal
  import time
  from tests import loopback
  child = _sleeping_stage(
      tmp_path, "from sadm_jax import distributed\ndistributed.JOIN_GRACE_S = 1\n",
      "'--config.distributed.num_processes=2', '--config.distributed.process_id=1', "
      f"'--config.distributed.coordinator_address=127.0.0.1:{loopback.free_port()}', ")
  proc = subprocess.Popen([sys.executable, "-c", child], cwd=REPO, env=ENV, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    while "initialising jax.distributed" not in (got := proc.stderr.readline()) and got:
      pass
    assert got, proc.stdout.read()
    time.sleep(0.5)  # (in JAX's wait for the coordinator)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
  finally:
    proc.kill()
    proc.wait()
  assert proc.returncode == 143 and time.time() - t0 < 20, err[-2000:]
  assert out == "" and "Traceback" not in err
  assert err.strip().splitlines()[-1] == (
      f"error: stage cddpm interrupted (SIGTERM); {tmp_path} keeps only complete files: run the "
      "same command again to resume")


def test_processes_that_never_all_connect_stop_with_one_line_at_the_connect_timeout(tmp_path):
  """Process 1 of 2 whose process 0 never comes (a task that failed, a wrong address): it waited
  JAX's 5 minutes and then JAX aborted it in C++ (exit -6, a check failure and its stack). It now
  stops with one line at `distributed.connect_timeout` (here 2 s), exit 2."""
  import time
  from tests import loopback
  address = f"127.0.0.1:{loopback.free_port()}"
  child = _sleeping_stage(
      tmp_path, "", "'--config.distributed.num_processes=2', '--config.distributed.process_id=1', "
      f"'--config.distributed.coordinator_address={address}', "
      "'--config.distributed.connect_timeout=2', ")
  t0 = time.time()
  proc = subprocess.run([sys.executable, "-c", child], cwd=REPO, env=ENV, text=True,
                        capture_output=True, timeout=120)
  assert proc.returncode == 2 and time.time() - t0 < 60, proc.stderr[-2000:]
  assert proc.stdout == "" and "Traceback" not in proc.stderr
  assert "Check failure" not in proc.stderr and "DEADLINE" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: the processes did not all connect within 2 s (this is process 1 of 2) to {address}: "
      "did every process start (a task that failed, a node that is gone, a wrong "
      "distributed.num_processes or coordinator address, a firewall)? See the others' logs; raise "
      "--config.distributed.connect_timeout if they start slowly")
  with pytest.raises(ValueError, match=r"connect_timeout=0 must be > 0 \(seconds\)"):
    from configs import cddpm
    from sadm_jax import distributed
    config = cddpm.get_config("tiny")
    config.distributed.connect_timeout = 0
    distributed.plan(config, {})


def test_a_sweeps_member_stops_once_its_sweep_is_killed_outright(tmp_path):
  """A sweep killed with SIGKILL (or by the OOM killer) cannot stop its running member, which
  trained on, unseen and orphaned, holding its workdir's lock (and a GPU). A member (the sweep
  names its pid in `SADM_STOP_WITH_PARENT`) now sends itself SIGTERM once the sweep is gone:
  training saves its step, and the stage ends with its one line, exit 143."""
  import signal
  import time
  from sadm_jax.utils import signals
  from tests.utils.test_workers import _running
  member = _sleeping_stage(tmp_path)
  log = tmp_path / "member.txt"
  sweep = ("import os, subprocess, sys, time\n"  # the sweep's runner, in short
           f"env = {{**os.environ, {signals.PARENT_VAR!r}: str(os.getpid())}}\n"
           f"p = subprocess.Popen([sys.executable, '-c', {member!r}], stdout=open({str(log)!r}, "
           "'w'), stderr=subprocess.STDOUT, env=env)\n"
           "print(p.pid, flush=True)\n"
           "time.sleep(120)\n")
  proc = subprocess.Popen([sys.executable, "-c", sweep], cwd=REPO, env=ENV, text=True,
                          stdout=subprocess.PIPE)
  try:
    child = int(proc.stdout.readline())
    deadline = time.time() + 120
    while "started" not in log.read_text() and time.time() < deadline:
      time.sleep(0.1)
    assert "started" in log.read_text(), log.read_text()[-2000:]
  finally:
    proc.kill()  # the sweep, outright
    proc.wait()
  deadline = time.time() + 30
  while _running(child) and time.time() < deadline:
    time.sleep(0.1)
  if _running(child):  # (not left behind when the test fails)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the member outlived its sweep")
  lines = log.read_text().strip().splitlines()
  assert lines[-2:] == ["unwound", f"error: stage cddpm interrupted (SIGTERM); {tmp_path} keeps "
                        "only complete files: run the same command again to resume"]


def test_a_failed_or_interrupted_stage_ends_without_the_interpreters_teardown():
  """`main.exit_now`, which `python -m sadm_jax.main` (and the sweep) end with after a nonzero
  code: the code, the output flushed, no teardown. A teardown waits for threads and, with a
  computation still running on XLA's threads, segfaulted (exit -11 instead of 130 after Ctrl-C in
  an evaluation)."""
  code = ("import sys, threading\n"
          "from sadm_jax import main\n"
          "threading.Thread(target=threading.Event().wait).start()  # a teardown waits forever\n"
          "print('out', end='')\n"
          "sys.stderr.write('error: one line')\n"
          "main.exit_now(130)\n")
  env = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}  # buffered, as in a pipe
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                       cwd=REPO, env=env)
  assert (res.returncode, res.stdout, res.stderr) == (130, "out", "error: one line")


def test_compilation_cache_that_is_a_file_is_one_line(cli_data_dir, tmp_path):
  f = tmp_path / "cache"
  f.write_text("not a dir")
  res = run_main(f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={cli_data_dir}",
                 env={"SADM_COMPILATION_CACHE": str(f), "JAX_COMPILATION_CACHE_DIR": ""})
  assert one_error(res).startswith(f"error: compilation cache {f}: {f} is a file, not a directory")
  assert not os.path.exists(tmp_path / "w")


def test_a_refused_write_is_one_line_exit_2_and_a_bug_keeps_its_traceback(monkeypatch, capsys,
                                                                           tmp_path):
  import errno
  target = str(tmp_path / "metrics.jsonl")
  disk_full = OSError(errno.ENOSPC, "No space left on device", target)
  assert _run_stage_raising(monkeypatch, tmp_path, disk_full) == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      f"error: {target}: No space left on device (stage cddpm; files are written whole: run the "
      "same command again once it can write)"]

  with pytest.raises(FileNotFoundError):  # a bug, not a refused write: its traceback is kept
    _run_stage_raising(monkeypatch, tmp_path,
                       FileNotFoundError(errno.ENOENT, "No such file or directory", target))


def test_url_workdir_is_refused_not_made_a_local_directory(tmp_path):
  # `gs://b/r` would otherwise become a local directory `gs:/b/r` on every host (launch/README.md).
  res = subprocess.run([sys.executable, "-m", "sadm_jax.main",
                        f"--config={os.path.join(REPO, 'configs/cddpm.py:tiny')}",
                        "--workdir=gs://bucket/runs/c", "--config.stage=describe"],
                       cwd=tmp_path, env={**ENV, "PYTHONPATH": REPO}, capture_output=True,
                       text=True, timeout=300)
  assert one_error(res).startswith("error: --workdir=gs://bucket/runs/c is a URL; ")
  assert os.listdir(tmp_path) == []


def test_an_xla_flag_xla_cannot_read_is_one_line_before_anything(cli_data_dir, tmp_path):
  """A misspelt flag in XLA_FLAGS: XLA aborted the process in C++ when the backend started (a
  check failure and its stack trace, exit -6)."""
  work = tmp_path / "w"
  res = run_main(f"--workdir={work}", f"--config.data.data_dir={cli_data_dir}",
                 env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_dump_too=/tmp"})
  assert one_error(res) == (
      "error: XLA_FLAGS=--xla_force_host_platform_device_count=2 --xla_dump_too=/tmp: XLA does "
      "not know --xla_dump_too=/tmp (a misspelt or removed flag?)")
  assert not work.exists()
