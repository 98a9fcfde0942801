"""Process pools: results in order, SIGINT left to the parent, queued work cancelled on an error."""

from __future__ import annotations

import os
import signal
import time

import pytest

from sadm_jax.utils import workers


def _square_and_sigint(x: int) -> tuple[int, bool]:
  return x * x, signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def _slow_touch(path: str) -> str:
  time.sleep(0.3)
  with open(path, "w") as f:
    f.write("whole")
  return path


def test_results_in_order_and_workers_ignore_sigint():
  out = list(workers.map_in_processes(_square_and_sigint, range(6), 2))
  assert [v for v, _ in out] == [0, 1, 4, 9, 16, 25]
  assert all(ignored for _, ignored in out)


def test_an_error_in_the_parent_cancels_queued_items_and_lets_running_ones_finish(tmp_path):
  paths = [str(tmp_path / f"{i}.txt") for i in range(20)]
  with pytest.raises(KeyboardInterrupt):
    for _ in workers.map_in_processes(_slow_touch, paths, 2):
      raise KeyboardInterrupt  # as Ctrl-C in the parent while it waits for the first result
  written = [p for p in paths if os.path.exists(p)]
  assert 1 <= len(written) < len(paths)  # the queue was cancelled: not every item ran
  assert all(open(p).read() == "whole" for p in written)  # and no running one was cut short


def test_no_more_processes_than_items_or_cores(monkeypatch):
  """`data.num_workers=64` on a 2-core machine starts 2 processes, and 3 items start 3 at most."""
  started = []
  real = workers._Pool
  def recording(n, **kwargs):
    started.append(n)
    return real(n, **kwargs)
  monkeypatch.setattr(workers, "_Pool", recording)
  monkeypatch.setattr(workers, "available_cores", lambda: 2)
  assert [v for v, _ in workers.map_in_processes(_square_and_sigint, range(5), 64)] == [
      0, 1, 4, 9, 16]
  monkeypatch.setattr(workers, "available_cores", lambda: 8)
  assert len(list(workers.map_in_processes(_square_and_sigint, range(3), 64))) == 3
  assert started == [2, 3]


def _pid_after(seconds: float) -> int:
  time.sleep(seconds)
  return os.getpid()


def _running(pid: int) -> bool:
  """Whether process `pid` exists and is not a zombie (an exited child its new parent, in a
  container possibly no init, has not reaped)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except (FileNotFoundError, ProcessLookupError):  # (ESRCH: read while the process ends)
    return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_workers_end_when_their_parent_is_killed_outright():
  """The parent killed with SIGKILL (or by the OOM killer) cannot stop its pool: its workers
  waited for work for ever, orphaned, each holding its memory."""
  import subprocess
  import sys
  from tests.helpers import REPO
  code = ("from sadm_jax.utils import workers\n"
          "from tests.utils.test_workers import _pid_after\n"
          "for pid in workers.map_in_processes(_pid_after, [0, 60, 60, 60], 2):\n"
          "  print(pid, flush=True)\n")
  proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                          text=True)
  try:
    assert proc.stdout.readline().strip().isdigit()  # a worker has started and answered
    children = [int(d) for d in os.listdir("/proc")
                if d.isdigit() and _parent(int(d)) == proc.pid]
    assert len(children) >= 2  # the 2 workers (and multiprocessing's resource tracker)
  finally:
    proc.kill()
    proc.wait()
  _assert_all_end(children)


def _assert_all_end(pids: list[int], within_s: float = 20.0) -> None:
  """Waits until none of `pids` runs; fails naming those left (killed, not left behind)."""
  deadline = time.time() + within_s
  while any(map(_running, pids)) and time.time() < deadline:
    time.sleep(0.2)
  left = [p for p in pids if _running(p)]
  for p in left:
    os.kill(p, signal.SIGKILL)
  assert not left


def _parent(pid: int) -> int | None:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return int(f.read().rsplit(")", 1)[1].split()[1])
  except (FileNotFoundError, ProcessLookupError):
    return None


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_workers_end_when_their_parent_is_killed_before_they_start(tmp_path):
  """The parent killed outright while its spawned workers are still starting (imports take
  seconds; the OOM killer strikes as a pool fills the memory): a worker that read its parent's
  pid itself read its new parent's (init, a subreaper) and watched it for ever. The parent
  names itself: such a worker ends as soon as it starts. (A `sitecustomize` on the path holds
  each worker 3 s before it starts, the time to kill the parent.)"""
  import subprocess
  import sys
  from tests.helpers import REPO
  (tmp_path / "sitecustomize.py").write_text(
      "import sys, time\n"
      "if '--multiprocessing-fork' in sys.argv:\n"
      "  time.sleep(3)\n")
  code = ("from sadm_jax.utils import workers\n"
          "from tests.utils.test_workers import _pid_after\n"
          "print(list(workers.map_in_processes(_pid_after, [0, 0, 0, 0], 2)), flush=True)\n")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [str(tmp_path), REPO, *filter(None, [os.environ.get("PYTHONPATH")])])}
  proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL)

  def spawned() -> list[int]:
    found = []
    for d in filter(str.isdigit, os.listdir("/proc")):
      try:
        with open(f"/proc/{d}/cmdline", "rb") as f:
          forked = b"--multiprocessing-fork" in f.read()
      except OSError:
        continue
      if forked and _parent(int(d)) == proc.pid:
        found.append(int(d))
    return found
  try:
    deadline = time.time() + 60
    while len(children := spawned()) < 2 and time.time() < deadline:
      time.sleep(0.05)
    assert len(children) == 2
    time.sleep(0.5)  # (their start-up data written: they do start)
  finally:
    proc.kill()
    proc.wait()
  _assert_all_end(children)


def _die_on_three(x: int) -> int:
  if x == 3:
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
  return x


def test_a_worker_that_dies_is_one_error_line_not_the_pools_traceback():
  """`workers.WorkerDied` is a ValueError: `python -m sadm_jax.main` prints it as one line, exit 2
  (a preprocessing or cohort worker killed for memory gave BrokenProcessPool's traceback)."""
  with pytest.raises(workers.WorkerDied, match=r"one of 2 worker processes died \(the kernel's "
                                               r"OOM killer\?.*data.num_workers"):
    list(workers.map_in_processes(_die_on_three, range(8), 2))
  assert issubclass(workers.WorkerDied, ValueError)


def _write_slowly(path: str) -> int:
  open(path + ".started", "w").close()
  time.sleep(1.0)
  with open(path, "w") as f:
    f.write("whole")
  return os.getpid()


def test_a_sigterm_lets_the_item_in_hand_finish_and_ends_an_idle_worker_at_once(tmp_path):
  """Slurm's time limit and `scancel` send SIGTERM to every process of the step: a pool worker
  died at once, leaving the outputs it was writing half done (temporary files, a map without its
  record). It now finishes the item in hand, then ends; an idle worker ends at once."""
  from concurrent.futures.process import BrokenProcessPool
  path = str(tmp_path / "out.txt")
  with workers.process_pool(1) as pool:
    pid = pool.submit(os.getpid).result()
    job = pool.submit(_write_slowly, path)
    deadline = time.time() + 30
    while not os.path.exists(path + ".started") and time.time() < deadline:
      time.sleep(0.02)
    os.kill(pid, signal.SIGTERM)  # within the item
    with pytest.raises(BrokenProcessPool):  # the worker ended after it, without a reply
      job.result(timeout=60)
  assert open(path).read() == "whole"
  assert not _running(pid)
  with workers.process_pool(1) as pool:
    pid = pool.submit(os.getpid).result()
    os.kill(pid, signal.SIGTERM)  # idle
    deadline = time.time() + 10
    while _running(pid) and time.time() < deadline:
      time.sleep(0.05)
    assert not _running(pid)
