"""SIGTERM handled like Ctrl-C: a scheduler's stop (Slurm's preemption or time limit, `kill`) unwinds as an interrupt."""

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
def terminate_as_interrupt() -> Iterator[None]:
  """Inside: SIGTERM raises `Terminated` in this process's main thread; the handler before is
  restored after (called from another thread, it changes nothing)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def handler(signum, frame):
    raise Terminated
  old = signal.signal(signal.SIGTERM, handler)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, old)
