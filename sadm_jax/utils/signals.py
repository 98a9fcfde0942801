"""SIGTERM handled like Ctrl-C: a scheduler's stop (Slurm's preemption or time limit, `kill`) unwinds as an interrupt, in training after the step's checkpoint."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

TERMINATED = 143  # exit code after SIGTERM: 128 + SIGTERM, the shell's convention


class Terminated(KeyboardInterrupt):
  """Raised in the main thread by SIGTERM inside `terminate_as_interrupt`: everything that
  finishes its files on Ctrl-C (checkpoint saves waited for, temporary files removed) does so
  for SIGTERM too."""


def signal_name(e: KeyboardInterrupt) -> str:
  """'SIGTERM' for `Terminated`, else 'SIGINT'."""
  return "SIGTERM" if isinstance(e, Terminated) else "SIGINT"


@contextlib.contextmanager
def _sigterm_handler(handler) -> Iterator[bool]:
  """Inside: `handler` takes SIGTERM in this process (yields True); the handler before is
  restored after. Called from another thread than the main one it changes nothing (yields
  False): Python runs signal handlers in the main thread only."""
  if threading.current_thread() is not threading.main_thread():
    yield False
    return
  old = signal.signal(signal.SIGTERM, handler)
  try:
    yield True
  finally:  # (None: a handler installed outside Python, e.g. by JAX's C++ runtime)
    signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
  """Inside: SIGTERM raises `Terminated` in this process's main thread; the handler before is
  restored after (called from another thread, it changes nothing)."""
  def handler(signum, frame):
    raise Terminated
  with _sigterm_handler(handler):
    yield


class StopRequest:
  """What `deferred_termination` yields: `requested` turns True at the first SIGTERM."""

  def __init__(self) -> None:
    self.requested = False


@contextlib.contextmanager
def deferred_termination() -> Iterator[StopRequest]:
  """Inside: SIGTERM only sets the yielded `requested`; the training loop then saves a
  checkpoint at the end of its step and raises `Terminated` itself, so that a scheduler's stop
  loses no step. A repeated SIGTERM changes nothing (Slurm signals a sweep and its member both;
  the sweep forwards its own); Ctrl-C (SIGINT) still stops at once. Outside the main thread
  nothing changes and `requested` stays False."""
  stop = StopRequest()

  def handler(signum, frame):
    stop.requested = True  # (nothing printed here: a print could re-enter the main thread's)
  with _sigterm_handler(handler):
    yield stop
