"""One test run's shared state across its pytest-xdist worker processes: a directory, build-once fixture results, background CLI runs.

The suite runs in 2 worker processes (pytest.ini: `-n 2 --dist loadfile`). A session fixture is
per process, so the expensive ones (the tiny trained runs, one evaluation) are built once for the
whole run with `once` and read by the other worker; the end-to-end CLI jobs are started once, by
whichever worker claims them first, and the other worker reads their files. The same code serves a
plain single-process run (`-n 0` / `-p no:xdist`), where it is the only user.

The directory is created by the process that starts the run (the xdist controller, or the only
process) before any worker exists, passed to workers in `$SADM_TEST_SHARED_DIR`, and removed by
that process at exit.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

from tests.helpers import REPO

ENV = "SADM_TEST_SHARED_DIR"
EXIT_FILE = "exit_code"  # written by the owner when a background run has ended


def create() -> str:
  """A new shared directory for this run, announced to child processes; returns it."""
  root = tempfile.mkdtemp(prefix="sadm_test_run_")
  os.environ[ENV] = root
  return root


def root() -> str:
  d = os.environ.get(ENV, "")
  if not d or not os.path.isdir(d):
    raise RuntimeError(f"${ENV} is not set to a directory: tests/conftest.py creates it")
  return d


def remove(path: str) -> None:
  shutil.rmtree(path, ignore_errors=True)


def _atomic_pickle(path: str, value: Any) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    pickle.dump(value, f)
  os.replace(tmp, path)


def once(name: str, build: Callable[[], Any]) -> Any:
  """`build()` run by the first process that asks for `name`; every other process gets its
  (pickled) result, waiting while it is being built. A build that raises stores nothing: the next
  process to ask builds again (and reports its own error)."""
  path = os.path.join(root(), f"{name}.pkl")
  with open(path + ".lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if os.path.exists(path):
        with open(path, "rb") as f:
          return pickle.load(f)
      value = build()
      _atomic_pickle(path, value)
      return value
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def claim(name: str) -> bool:
  """True for exactly one process of the run (the first to call it for `name`)."""
  try:
    os.mkdir(os.path.join(root(), f"claim_{name}"))
    return True
  except FileExistsError:
    return False


def run_dir(name: str) -> str:
  """Where background run `name` keeps its workdir (`run/`), output and exit code."""
  return os.path.join(root(), "background", name)


def start_chain(runs: dict[str, list[str]], names) -> dict[str, "BackgroundRun"]:
  """Starts the runs `names` (`runs`: name -> CLI arguments; in `runs` order, each after the
  previous one) if this is the first process of the test run to ask, and returns them; every
  other process gets {} and reads the runs' files (`RunFiles`). Every xdist worker asks with the
  same names, so one process owns the whole chain (two owners would run it twice, at once)."""
  if not claim("background"):
    return {}
  owned, previous = {}, None
  for name, args in runs.items():
    if name in names and claim(name):
      previous = owned[name] = BackgroundRun(args, run_dir(name), after=previous)
  return owned


class BackgroundRun:
  """`python -m sadm_jax.main ARGS --workdir=<dir>/run`, started now or after `after`.

  The test run starts its longest end-to-end jobs this way when it begins (tests/conftest.py),
  so that they use the share of the 2 cores that the in-process tests leave idle; one after the
  other, so that the second reads the programs the first compiled from the compilation cache.
  The child gets this process's environment as it is now (8 fake devices, the compilation cache,
  the compile log) and runs in its own process group, so that `stop` ends its workers too. When
  it exits, its exit code is written to `<dir>/exit_code`, where `RunFiles` (another worker)
  reads it.
  """

  def __init__(self, args: list[str], directory: str, after: "BackgroundRun | None" = None):
    self.files = RunFiles(directory, args)
    os.makedirs(directory, exist_ok=True)
    self.args = list(args)
    self.proc: subprocess.Popen | None = None
    self.error: BaseException | None = None  # why the process could not be started
    self._env = {**os.environ, "PYTHONUNBUFFERED": "1",
                 # the compile log's "test" field: this run, not the test running meanwhile
                 "PYTEST_CURRENT_TEST": f"background {' '.join(self.args)} (run)"}
    self._lock = threading.Lock()
    self._started = threading.Event()  # set once the process started, or never will
    self._cancelled = False
    self._recorder: threading.Thread | None = None  # writes the exit code when the run ends
    if after is None:
      self._start()
    else:
      threading.Thread(target=lambda: (after._wait_exit(), self._start()), daemon=True).start()

  def _start(self) -> None:
    try:
      with self._lock:
        if not self._cancelled:
          with open(self.files.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sadm_jax.main", *self.args,
                 f"--workdir={self.files.workdir}"],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._env, start_new_session=True)
    except BaseException as e:  # noqa: BLE001 — reported by wait()
      self.error = e
    finally:
      self._started.set()
      if self.proc is not None:
        self._recorder = threading.Thread(target=self._record_exit, daemon=True)
        self._recorder.start()
      else:
        self.files.write_exit(None, f"could not start: {self.error}" if self.error else
                              "cancelled")

  def _record_exit(self) -> None:
    self.files.write_exit(self.proc.wait(), "")

  def _wait_exit(self) -> None:
    self._started.wait()
    if self.proc is not None:
      self.proc.wait()

  def wait(self, timeout: float = 1800.0) -> str:
    return self.files.wait(timeout)

  def output(self) -> str:
    return self.files.output()

  def cancel(self) -> None:
    """A run that has not started yet never will."""
    with self._lock:
      self._cancelled = True
    self._started.set()

  def finish(self, timeout: float = 1800.0) -> None:
    """Waits until the run has ended and its exit code is written (or it never starts); other
    workers may still read it after this process has gone."""
    self._started.wait(timeout)
    if self.proc is not None:
      try:
        self.proc.wait(timeout=timeout)
      except subprocess.TimeoutExpired:
        self.stop()
    self._join_recorder()

  def stop(self) -> None:
    """Cancels the run if it has not started, kills its process group if it is going."""
    self.cancel()
    if self.proc is not None and self.proc.poll() is None:
      os.killpg(self.proc.pid, signal.SIGKILL)  # the spawn workers of cohort/prepare too
      self.proc.wait()
    self._join_recorder()

  def _join_recorder(self) -> None:
    """The exit code is on disk before this process may exit (its writer is a daemon thread)."""
    if self._recorder is not None:
      self._recorder.join(timeout=60)


class RunFiles:
  """A background run seen through its files (by the worker that started it or another one)."""

  def __init__(self, directory: str, args: list[str]):
    self.directory = directory
    self.workdir = os.path.join(directory, "run")
    self.log_path = os.path.join(directory, "output.log")
    self.what = f"background run {' '.join(args)}"

  def write_exit(self, code: int | None, reason: str) -> None:
    tmp = os.path.join(self.directory, f"{EXIT_FILE}.tmp")
    with open(tmp, "w") as f:
      f.write(f"{'' if code is None else code}\n{reason}\n")
    os.replace(tmp, os.path.join(self.directory, EXIT_FILE))

  def wait(self, timeout: float = 1800.0) -> str:
    """The run's workdir once it has exited 0; its output's tail in the failure otherwise."""
    path, deadline = os.path.join(self.directory, EXIT_FILE), time.time() + timeout
    while not os.path.exists(path):
      if time.time() > deadline:
        raise AssertionError(f"{self.what} did not end within {timeout:.0f} s")
      time.sleep(0.5)
    with open(path) as f:
      code, reason = (f.read().split("\n") + ["", ""])[:2]
    if not code:
      raise AssertionError(f"{self.what} never started: {reason}")
    if int(code) != 0:
      raise AssertionError(f"{self.what} exited with {code}:\n{self.output()[-4000:]}")
    return self.workdir

  def output(self) -> str:
    """Everything the run printed so far (stdout and stderr)."""
    try:
      with open(self.log_path, errors="replace") as f:
        return f.read()
    except FileNotFoundError:
      return ""
