"""SIGTERM handled like Ctrl-C (a scheduler's stop unwinds as an interrupt, in training after the step's checkpoint, at an agreement of several processes once all know), and children that stop with their parent."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterator

TERMINATED = 143  # exit code after SIGTERM: 128 + SIGTERM, the shell's convention
PARENT_VAR = "SADM_STOP_WITH_PARENT"  # a sweep's member: the sweep's pid (`stop_with_parent`)
ORPHAN_CHECK_S = 1.0  # how often `when_orphaned` checks that the parent is alive


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


def on_stop(action: Callable[[], None]) -> bool:
  """From now on Ctrl-C and SIGTERM run `action` (for a process that is already ending, e.g. one
  waiting for the others to leave a job: `main.exit_now`) instead of raising in the main thread;
  False, changing nothing, when called from another thread."""
  if threading.current_thread() is not threading.main_thread():
    return False
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda signum, frame: action())
  return True


REDELIVER_S = 0.05  # a SIGTERM raised where Python drops exceptions: sent again this much later


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
  """Inside: SIGTERM raises `Terminated` in this process's main thread; the handler before is
  restored after (called from another thread, it changes nothing). One raised where Python prints
  the exception and drops it ("Exception ignored in ...": a garbage-collector callback, which JAX
  registers, a finaliser, a weakref callback; the run went on as if never signalled) is sent again
  a moment later (`sys.unraisablehook`)."""
  def handler(signum, frame):
    raise Terminated
  previous = sys.unraisablehook

  def hook(unraisable) -> None:
    if isinstance(unraisable.exc_value, Terminated):
      threading.Timer(REDELIVER_S, os.kill, (os.getpid(), signal.SIGTERM)).start()
    else:
      previous(unraisable)
  with _sigterm_handler(handler) as installed:
    if installed:
      sys.unraisablehook = hook
    try:
      yield
    finally:
      if installed:
        sys.unraisablehook = previous


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
  handler.defers = True  # (`held` leaves it in place)
  with _sigterm_handler(handler):
    yield stop


class Hold(StopRequest):
  """What `held` yields: `requested` turns True at a SIGTERM; the caller that reported it to the
  other processes (or stops anyway) sets `taken`."""

  def __init__(self) -> None:
    super().__init__()
    self.taken = False


@contextlib.contextmanager
def held(active: bool = True) -> Iterator[Hold]:
  """Inside (when `active`, in the main thread): a SIGTERM that would raise `Terminated` at once
  only sets the yielded hold's `requested`, for a process that must not leave half-way through
  what every process does together (a collective: the others would wait in it for this one until
  JAX's timeout) and tells the others itself (`agreements.agree`, `agreements.together`).
  Nested, it yields the enclosing hold; under training's `deferred_termination` (which stops every
  process at a step of its own) nothing changes. On leaving, a request no one took is raised as
  `Terminated`, as it would have been at the signal (not when an exception leaves the block
  anyway)."""
  outer = current_hold()
  if outer is not None:
    yield outer
    return
  if (not active or getattr(signal.getsignal(signal.SIGTERM), "defers", False)
      or threading.current_thread() is not threading.main_thread()):
    yield Hold()
    return
  hold = Hold()

  def note(signum, frame):
    hold.requested = True
  note.hold = hold  # (`current_hold`: a nested `held` joins this one)
  with _sigterm_handler(note):
    yield hold
  if hold.requested and not hold.taken:
    hold.taken = True
    raise Terminated


def current_hold() -> Hold | None:
  """The hold of the `held` block this process is in (None outside one)."""
  return getattr(signal.getsignal(signal.SIGTERM), "hold", None)


def when_orphaned(parent: int, action: Callable[[], None]) -> threading.Thread:
  """Runs `action` in a daemon thread once this process's parent `parent` is gone (the process
  re-parented). A parent killed outright (SIGKILL, the kernel's OOM killer) cannot stop its
  children itself."""
  def watch() -> None:
    while os.getppid() == parent:
      time.sleep(ORPHAN_CHECK_S)
    action()
  thread = threading.Thread(target=watch, daemon=True, name="when-orphaned")
  thread.start()
  return thread


def stop_with_parent(environ=os.environ) -> bool:
  """In a sweep's member (`PARENT_VAR` names the sweep's pid): a SIGTERM to this process once
  the sweep is gone, so that a member does not train on, unseen, after its sweep was killed
  outright (training saves its step first, like any SIGTERM). Returns whether it watches."""
  value = environ.get(PARENT_VAR, "")
  if not value.isdigit():
    return False
  parent = int(value)
  if os.getppid() != parent:  # gone already (or not this process's parent): stop now
    os.kill(os.getpid(), signal.SIGTERM)
    return True
  when_orphaned(parent, lambda: os.kill(os.getpid(), signal.SIGTERM))
  return True
