"""Host-side process pools (spawned): results in order, Ctrl-C handled by the parent alone, no worker outliving it."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator

from sadm_jax.utils import signals
from sadm_jax.utils.xla_flags import available_cores


_job = {"running": False, "stop": False}  # this worker's state (`_on_sigterm`, `_whole`)


def _on_sigterm(signum: int, frame) -> None:
  """A worker's SIGTERM (Slurm's time limit and `scancel` signal the whole step; the pool ends
  a broken pool's workers so): idle, it ends now; within an item, once that item is done, so
  that the files it writes are whole (its temporary files and half-written outputs were left
  behind when it died at once)."""
  if not _job["running"]:
    os._exit(128 + signum)
  _job["stop"] = True


def _whole(fn: Callable, *args, **kwargs):
  """Runs one submitted item in a worker (`_Pool.submit`): a SIGTERM waits for its end."""
  _job["running"] = True
  try:
    return fn(*args, **kwargs)
  finally:
    _job["running"] = False
    if _job["stop"]:
      os._exit(128 + signal.SIGTERM)


class _Pool(futures.ProcessPoolExecutor):
  """A process pool whose items each run whole in their worker, a SIGTERM notwithstanding."""

  def submit(self, fn, /, *args, **kwargs):
    return super().submit(_whole, fn, *args, **kwargs)


def _start_worker(initializer: Callable | None, initargs: tuple, parent: int) -> None:
  """A worker ignores SIGINT: Ctrl-C reaches the whole process group, and the parent alone turns
  it into one error line (a worker would print its own KeyboardInterrupt traceback). A SIGTERM
  ends it once the item in hand is done (`_on_sigterm`). It ends by itself when its parent (pid
  `parent`, named by the parent itself) dies."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, _on_sigterm)
  # A parent killed outright (SIGKILL, the OOM killer) cannot stop its pool: its workers waited
  # for work for ever, each holding its memory; the item in hand has no reader either. Not
  # `os.getppid()` read here: a parent killed while this worker started is init's pid by then.
  signals.when_orphaned(parent, lambda: os._exit(1))
  if initializer is not None:
    initializer(*initargs)


@contextlib.contextmanager
def process_pool(num_workers: int, initializer: Callable | None = None, initargs: tuple = ()
                 ) -> Iterator[futures.ProcessPoolExecutor]:
  """A pool of `num_workers` spawned processes (each ignores SIGINT, finishes its item on SIGTERM
  and ends with its parent).

  Spawned, not forked: safe with the threads JAX and grain start in the parent. What is submitted
  (functions, `initializer` and their arguments) must be picklable (module-level), and should
  live in modules that do not import JAX (each worker imports them). Leaving the block waits for
  the running work; on an exception (Ctrl-C, any error) queued work is cancelled first, so a
  file a worker writes is whole.
  """
  ctx = multiprocessing.get_context("spawn")
  pool = _Pool(num_workers, mp_context=ctx, initializer=_start_worker,
               initargs=(initializer, initargs, os.getpid()))
  try:
    yield pool
  except BaseException:
    pool.shutdown(wait=True, cancel_futures=True)
    raise
  pool.shutdown()


class WorkerDied(ValueError):
  """A worker process ended without a result (the kernel's OOM killer, a crash): one error line
  from the command line, not the pool's traceback."""


def map_in_processes(fn: Callable[[Any], Any], items: Iterable, num_workers: int,
                     initializer: Callable | None = None, initargs: tuple = ()) -> Iterator:
  """Yields fn(item) for each of `items`, in order, computed by `num_workers` spawned processes
  (`process_pool`), at most one per item and one per core this process may use
  (`data.num_workers=64` on a 2-core machine would hold 64 volumes in memory for no speed).
  On Ctrl-C or any error in the parent, queued items are cancelled and the running ones finish
  before the exception propagates; a worker that dies raises `WorkerDied` (what was yielded
  before stays done).
  """
  items = list(items)
  num_workers = max(1, min(num_workers, len(items), available_cores()))
  with process_pool(num_workers, initializer, initargs) as pool:
    try:
      yield from pool.map(fn, items)
    except BrokenProcessPool:
      raise WorkerDied(
          f"one of {num_workers} worker processes died (the kernel's OOM killer? each holds its "
          "item in memory): what was finished is kept; run the same command again, with fewer "
          "workers if memory is short (data.num_workers)") from None
