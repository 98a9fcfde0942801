"""What every process does together: agreements that stop all of them, with one line each, when one fails or is interrupted (several processes; one process: its own outcome)."""

from __future__ import annotations

import contextlib
import itertools
from typing import Iterator

from sadm_jax import distributed


def _first_failure(what: str, error: str | None) -> tuple[int, int | None, str | None]:
  """(process count, index of the first process whose `error` is not None or None, its error)
  over every process (a collective: every process calls it, at the same step `what`).

  A SIGTERM held for it (`signals.held`: one this process got in `main`'s start-up, or while it
  waits here: a process done early waits for the slowest) counts as its error: raised as it came,
  it stopped this process alone, and the others waited for it in their next collective until
  JAX's timeout crashed them. One that came during the wait is told in a second, short round;
  one during that round (milliseconds) is raised on leaving."""
  import jax

  from sadm_jax.utils import signals
  several = jax.process_count() > 1
  with signals.held(several) as hold:
    note = _interrupt_note(signals.Terminated())
    seen = hold.requested
    mine = note if error is None and seen else error
    every = distributed.allgather_at(what, mine)
    if several:  # (one process waits for no one)
      late = hold.requested and not seen
      seen = seen or late
      flags = distributed.allgather_at(what, late and mine is None)
      every = [note if e is None and f else e for e, f in zip(every, flags)]
    if seen:
      hold.taken = True  # told the others, or this process stops with its own error anyway
  failed = next((k for k, e in enumerate(every) if e is not None), None)
  return len(every), failed, None if failed is None else every[failed]


def agree(error: str | None, interrupt: KeyboardInterrupt | None = None) -> None:
  """Every process's start-up check together (a collective with several processes): raises
  ValueError on every process when any failed: its own line where it failed, elsewhere one naming
  the first process that did. A check that fails on one host only (a path another host lacks)
  thus stops them all at once, instead of leaving the others waiting in the stage's first
  collective until JAX's timeout aborts them. `interrupt`: a SIGTERM or Ctrl-C this process got
  during its checks, raised on every process (`together`)."""
  what = "the start-up checks"
  count, failed, line = _first_failure(what, error if interrupt is None else _interrupt_note(
      interrupt))
  if interrupt is not None:
    raise interrupt
  if error is not None:
    raise ValueError(error)
  _raise_interrupt_of(failed, line, what)
  if failed is not None:
    raise ValueError(f"process {failed} of {count} stopped at its start-up checks ({line}); "
                     "every process stopped")


_INTERRUPTED = "\0interrupted: "  # the note of an interrupt (no error line starts so)


def _interrupt_note(e: KeyboardInterrupt) -> str:
  from sadm_jax.utils import signals
  return f"{_INTERRUPTED}{signals.signal_name(e)}"


def _raise_interrupt_of(failed: int | None, line: str | None, what: str) -> None:
  """Raises, as this process's own, the interrupt (SIGTERM or Ctrl-C) that process `failed` got
  during `what` (its note `line`); nothing when it failed otherwise, or none did."""
  if failed is None or not line.startswith(_INTERRUPTED):
    return
  raise_interrupt(line[len(_INTERRUPTED):], [failed], what)


def raise_interrupt(name: str, processes: list[int], what: str) -> None:
  """Stops this process as the interrupt `name` ('SIGTERM' or 'SIGINT') that `processes` got
  during `what`: process 0 says so in one line, then `signals.Terminated` or KeyboardInterrupt
  (every process exits 143 or 130, resumable)."""
  import jax

  from sadm_jax.utils import signals
  if jax.process_index() == 0:
    print(f"{name} (process {', '.join(map(str, processes))}) during {what}; stopping",
          flush=True)
  raise signals.Terminated if name == "SIGTERM" else KeyboardInterrupt


class OtherProcessFailed(ValueError):
  """Raised by `together` on the processes where the block succeeded when it failed elsewhere."""


def _error_line(e: BaseException) -> str:
  text = " ".join(str(e).split())[:400]
  return text if isinstance(e, ValueError) and text else f"{type(e).__name__}: {text}".rstrip(": ")


_blocks = itertools.count(1)  # the job's `together` blocks, numbered alike on every process
_open: list[tuple[str | None, str]] = []  # (board, what) of the blocks this process is in


@contextlib.contextmanager
def together(what: str) -> Iterator[None]:
  """Runs the block, then waits for every process (a collective with several processes: every
  process enters it, in the same order; a collective inside the block still waits for a process
  that failed before reaching it).

  When the block raised an Exception on any process, every process raises on leaving it: that
  process its own exception, the others `OtherProcessFailed` naming the first that failed. Work
  that can fail on one process only (its share of the volumes: a damaged file, NaN scores, a full
  disk) thus stops them all at once, instead of leaving the others waiting in their next
  collective until JAX's shutdown barrier aborts every process (5 minutes, SIGABRT). An interrupt
  that reached one host alone (a SIGTERM, `signals.Terminated`, or Ctrl-C) stops the others the
  same way, as that interrupt: every process exits 143 (or 130), resumable. A process that
  stopped also posts why on the block's board, where the others' long loops look between their
  batches (`check_others`): they stop then, not after their whole share.
  """
  import jax
  board = f"sadm_jax/together/{next(_blocks)}" if jax.process_count() > 1 else None
  _open.append((board, what))
  error = None
  try:
    yield
  except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001  (re-raised below, once the others
    error = e  # know)
  finally:
    _open.pop()
  note = None if error is None else (
      _interrupt_note(error) if isinstance(error, KeyboardInterrupt) else _error_line(error))
  client = distributed.coordination_client() if board and note is not None else None
  if client is not None:
    with contextlib.suppress(Exception):  # (a shortcut: the all-gather below tells them anyway)
      client.key_value_set(f"{board}/{jax.process_index()}", note)
  count, failed, line = _first_failure(what, note)
  if error is not None:
    raise error
  _stop_as(failed, line, count, what)


def check_others() -> None:
  """In a `together` block's long loop (an evaluation's or predict's batches): raises what
  another process stopped with in this block, as `together` would at its end (its interrupt as
  this process's, its error as `OtherProcessFailed`), so that this process does not finish its
  whole share first while that one waits (with a SIGTERM on one host, the others' shares could
  outlast the scheduler's grace). One key-value read of JAX's coordination service (≈ 1 ms);
  nothing with one process or outside a block."""
  board, what = _open[-1] if _open else (None, "")
  client = distributed.coordination_client() if board else None
  if client is None:
    return
  posted = client.key_value_dir_get(f"{board}/")
  if posted:
    import jax
    failed, line = min((int(key.rsplit("/", 1)[1]), value) for key, value in posted)
    _stop_as(failed, line, jax.process_count(), what)


def _stop_as(failed: int | None, line: str | None, count: int, what: str) -> None:
  """Raises, on this process, how process `failed` stopped during `what` (its note `line`): its
  interrupt as this process's, its error as `OtherProcessFailed`; nothing when none did."""
  _raise_interrupt_of(failed, line, what)
  if failed is not None:
    raise OtherProcessFailed(f"process {failed} of {count} failed ({line}) during {what}; every "
                             "process stopped")
