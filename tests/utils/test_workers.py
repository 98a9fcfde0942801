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
  real = workers.futures.ProcessPoolExecutor
  def recording(n, **kwargs):
    started.append(n)
    return real(n, **kwargs)
  monkeypatch.setattr(workers.futures, "ProcessPoolExecutor", recording)
  monkeypatch.setattr(workers, "available_cores", lambda: 2)
  assert [v for v, _ in workers.map_in_processes(_square_and_sigint, range(5), 64)] == [
      0, 1, 4, 9, 16]
  monkeypatch.setattr(workers, "available_cores", lambda: 8)
  assert len(list(workers.map_in_processes(_square_and_sigint, range(3), 64))) == 3
  assert started == [2, 3]
