"""How the processes of one job end together after an agreed stop (`main.exit_now`,
`distributed.leave`)."""

from __future__ import annotations

import os

from sadm_jax import distributed
from tests import loopback


def test_process_0_waits_for_a_process_slow_to_exit(tmp_path):
  """2 processes on loopback agree that process 1 failed its start-up check; process 1 takes 1.5 s
  more to reach its exit (printing, a checkpoint write). Process 0 hosts JAX's coordination
  service: it ended at once, and process 1, still on its way out, found the service gone and was
  aborted by JAX with a C++ check-failure trace (SIGABRT) before printing its line. Now every
  process leaves through the shutdown barrier: both exit 2, each with its one line last."""
  port = loopback.free_port()
  results = loopback.run_processes(
      lambda pid: ["tests.distributed_exit_job", str(pid), "2", str(port), "--slow", "1.5"],
      2, str(tmp_path), dict(os.environ), timeout=120, ok_codes=(2,))
  (code0, _, err0), (code1, _, err1) = results
  assert (code0, code1) == (2, 2), (err0[-2000:], err1[-2000:])
  assert err0.strip().splitlines()[-1] == (
      "error: process 1 of 2 stopped at its start-up checks (process 1's own check failed); "
      "every process stopped"), err0[-2000:]
  assert err1.strip().splitlines()[-1] == "error: process 1's own check failed", err1[-2000:]
  for err in (err0, err1):
    assert not loopback.crash_lines(err), err[-3000:]


def test_leave_does_nothing_alone_or_once_a_process_is_gone(monkeypatch):
  """One process (no job joined): nothing to leave. After a `ProcessGone` the barrier would wait
  for a process that never comes: `leave` returns without it."""
  calls = []
  monkeypatch.setattr(distributed, "_shutdown_quietly", lambda: calls.append(1))
  distributed.leave(timeout_s=0.1)
  assert not calls
  monkeypatch.setattr(distributed, "_connected", True)
  monkeypatch.setattr(distributed, "_peer_gone", False)
  distributed.leave(timeout_s=5)
  assert calls == [1]
  distributed.ProcessGone("Connection closed by peer", "a collective")
  assert distributed._peer_gone
  distributed.leave(timeout_s=5)
  assert calls == [1]


def test_a_ctrl_c_while_waiting_for_the_others_ends_the_process_at_once(tmp_path):
  """Process 0 waits in the shutdown barrier for process 1 (here 20 s slower to exit) and gets a
  Ctrl-C: Python raised KeyboardInterrupt there and printed a traceback after the process's line;
  it now ends at once with its line last and its exit code (2)."""
  import signal
  import subprocess
  import sys
  import time
  from tests.helpers import REPO
  port = loopback.free_port()
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  procs = [subprocess.Popen([sys.executable, "-m", "tests.distributed_exit_job", str(pid), "2",
                             str(port), "--slow", "20"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, process_group=0)
           for pid in range(2)]
  try:
    while "error: process 1 of 2" not in (line := procs[0].stderr.readline()) and line:
      pass
    assert line, procs[0].stderr.read()
    time.sleep(0.5)  # (in the barrier)
    t0 = time.time()
    procs[0].send_signal(signal.SIGINT)
    err0 = line + procs[0].communicate(timeout=30)[1]
    took = time.time() - t0
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
      p.wait()
  assert procs[0].returncode == 2 and took < 10, (took, err0[-2000:])
  assert "Traceback" not in err0 and "KeyboardInterrupt" not in err0, err0[-2000:]
  assert err0.strip().splitlines()[-1].startswith("error: process 1 of 2 stopped"), err0[-2000:]
