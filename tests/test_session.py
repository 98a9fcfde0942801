"""The test run's shared state (tests/session.py): build-once across processes, claims, background-run hand-off."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests import session
from tests.helpers import REPO


@pytest.fixture()
def shared_dir(tmp_path, monkeypatch):
  monkeypatch.setenv(session.ENV, str(tmp_path))
  return tmp_path


def test_once_builds_once_across_processes_and_retries_after_a_failure(shared_dir):
  # Three processes ask at the same time; the build takes a while and counts its calls.
  script = textwrap.dedent("""
      import os, sys, time
      from tests import session
      def build():
        with open(os.path.join(session.root(), "calls"), "a") as f:
          f.write("x")
        time.sleep(0.5)
        return {"pid": os.getpid(), "value": [1, 2.5]}
      print(session.once("thing", build)["pid"])
  """)
  procs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            text=True) for _ in range(3)]
  pids = {p.communicate(timeout=60)[0].strip() for p in procs}
  assert all(p.returncode == 0 for p in procs)
  assert len(pids) == 1  # everyone got the builder's result
  assert (shared_dir / "calls").read_text() == "x"
  assert session.once("thing", lambda: 1 / 0) == {"pid": int(pids.pop()), "value": [1, 2.5]}

  with pytest.raises(ZeroDivisionError):
    session.once("other", lambda: 1 / 0)
  assert session.once("other", lambda: 7) == 7  # a failed build stored nothing


def test_claim_is_granted_once(shared_dir):
  assert session.claim("a") is True
  assert session.claim("a") is False
  assert session.claim("b") is True


def test_run_files_report_success_failure_and_a_run_that_never_started(shared_dir):
  d = str(shared_dir / "run")
  os.makedirs(d)
  files = session.RunFiles(d, ["--config=x"])
  with open(files.log_path, "w") as f:
    f.write("line 1\nerror: boom\n")
  files.write_exit(0, "")
  assert files.wait(timeout=5) == files.workdir and "boom" in files.output()
  files.write_exit(2, "")
  with pytest.raises(AssertionError, match=r"(?s)--config=x exited with 2:.*error: boom"):
    files.wait(timeout=5)
  files.write_exit(None, "cancelled")
  with pytest.raises(AssertionError, match="never started: cancelled"):
    files.wait(timeout=5)
  with pytest.raises(AssertionError, match="did not end within 1 s"):
    session.RunFiles(str(shared_dir / "none"), ["--config=y"]).wait(timeout=1)


def test_a_cancelled_queued_run_never_starts(shared_dir):
  first = session.BackgroundRun(["--config=configs/nope.py"], str(shared_dir / "first"))
  second = session.BackgroundRun(["--config=configs/nope.py"], str(shared_dir / "second"),
                                 after=first)
  second.cancel()
  with pytest.raises(AssertionError, match="exited with 2"):  # the CLI's one-line config error
    first.wait(timeout=60)
  with pytest.raises(AssertionError, match="never started: cancelled"):
    second.files.wait(timeout=60)
  assert second.proc is None


def test_two_workers_asking_at_once_start_the_chain_once_in_order(shared_dir):
  """Every xdist worker asks for the background runs when its collection ends; one must own the
  whole chain (a worker owning only the second run started it at once, beside the first)."""
  script = textwrap.dedent("""
      from tests import session
      nope = ["--config=configs/nope.py"]  # the CLI's one-line config error: exits 2 at once
      owned = session.start_chain({"a": nope, "b": nope, "c": nope}, {"a", "b"})
      print(sorted(owned))
      for run in owned.values():
        run.finish(timeout=120)
  """)
  procs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            text=True) for _ in range(2)]
  outs = sorted(p.communicate(timeout=300)[0].strip() for p in procs)
  assert outs == ["['a', 'b']", "[]"]
  background = shared_dir / "background"
  assert sorted(os.listdir(background)) == ["a", "b"]  # "c" was not asked for
  for name in ("a", "b"):
    with pytest.raises(AssertionError, match="exited with 2"):
      session.RunFiles(str(background / name), ["x"]).wait(timeout=5)
  # "b" started only once "a" had ended
  assert (os.stat(background / "b" / "output.log").st_mtime_ns >=
          os.stat(background / "a" / session.EXIT_FILE).st_mtime_ns)
