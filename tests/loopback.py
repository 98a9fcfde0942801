"""The loopback harness: several processes of one command on 127.0.0.1, killed as a group on failure."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Sequence

from tests.helpers import REPO


def free_port() -> int:
  """A TCP port free on 127.0.0.1 now (for the coordinator of a multi-process run)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def crash_lines(stderr: str) -> list[str]:
  """The lines of a process's stderr that show it crashed instead of ending with its own line: a
  Python traceback, or JAX's C++ abort (a check failure, an `F<mmdd>` fatal log line)."""
  return [ln for ln in stderr.splitlines() if ln.startswith("Traceback") or "Check failure" in ln
          or re.match(r"F\d{4} ", ln)]


def run_processes(argv: Callable[[int], Sequence[str]], n: int, log_dir: str, env: dict,
                  timeout: float = 600.0, ok_codes: Sequence[int] = (0,)
                  ) -> list[tuple[int, str, str]]:
  """Runs `python -m <argv(pid)>` for pid = 0..n-1 from the repository root and waits for all.

  A process that exits with a code outside `ok_codes` stops the wait (the others would only time
  out in their collectives); on timeout or such a failure every process group still alive is
  killed. stdout/stderr go to `log_dir/{out,err}_<pid>.txt`. Returns (exit code, stdout, stderr)
  per process (-9 for a killed one).
  """
  os.makedirs(log_dir, exist_ok=True)
  procs, logs = [], []
  for pid in range(n):
    out = open(os.path.join(log_dir, f"out_{pid}.txt"), "w+")
    err = open(os.path.join(log_dir, f"err_{pid}.txt"), "w+")
    logs.append((out, err))
    procs.append(subprocess.Popen([sys.executable, "-m", *argv(pid)], cwd=REPO,
                                  env={**env, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=err,
                                  process_group=0))  # own group (killpg), pytest's session
  deadline = time.time() + timeout
  try:
    while any(p.poll() is None for p in procs) and time.time() < deadline:
      if any(p.poll() not in (None, *ok_codes) for p in procs):
        break
      time.sleep(0.5)
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
  results = []
  for p, (out, err) in zip(procs, logs):
    out.seek(0), err.seek(0)
    results.append((p.returncode, out.read(), err.read()))
    out.close(), err.close()
  return results


def run_main(args: Sequence[str] | Callable[[int], Sequence[str]], n: int, log_dir: str,
             env: dict, timeout: float = 600.0, ok_codes: Sequence[int] = (0,)
             ) -> list[tuple[int, str, str]]:
  """`python -m sadm_jax.main <args>` in `n` processes of one job on a free loopback port (each
  gets the `--config.distributed.*` arguments of its process id); `args` the same for every
  process, or pid -> its arguments. Returns `run_processes`'s (exit code, stdout, stderr)."""
  port = free_port()
  own = args if callable(args) else (lambda pid: args)
  return run_processes(
      lambda pid: ["sadm_jax.main", *own(pid),
                   f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                   f"--config.distributed.num_processes={n}",
                   f"--config.distributed.process_id={pid}"],
      n, log_dir, env, timeout, ok_codes)
