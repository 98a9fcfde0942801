"""Room for a checkpoint: the state's size against the file system's free space before a save, and Orbax's full-disk error as one line."""

from __future__ import annotations

import contextlib
import errno
import shutil
from typing import Any, Iterator

import jax
import numpy as np

ROOM_MARGIN = (1.05, 2 * 2**20)  # a save's size beyond its arrays' bytes (factor, bytes): meta,
# Orbax's own files, file-system blocks


def state_bytes(state: Any) -> int:
  """Bytes of the arrays of `state` (global arrays counted whole: what a save writes in all)."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(state) if hasattr(x, "dtype"))


def check_room(directory: str, needed: int, what: str) -> None:
  """OSError ENOSPC naming `directory` when its file system has fewer than `needed` bytes free.

  Checked before a save: Orbax failing on a full disk halfway through a save printed hundreds
  of lines of its threads' tracebacks before the error (a quota below the file system's free
  space still ends there; `disk_full_as_oserror` turns that into the same one line)."""
  free = shutil.disk_usage(directory).free
  if free < needed:
    raise OSError(errno.ENOSPC, f"No space left on device for {what}: {needed / 2**20:.1f} MiB "
                  f"needed, {free / 2**20:.1f} MiB free", directory)


# TensorStore's words for a write the file system refused for room (in a ValueError, after
# 'RESOURCE_EXHAUSTED' and its paths), and the errno each means
_FULL = (("No space left on device", errno.ENOSPC), ("Disk quota exceeded", errno.EDQUOT))


@contextlib.contextmanager
def disk_full_as_oserror(directory: str) -> Iterator[None]:
  """TensorStore's full-disk or quota error (a ValueError, one long line of paths) as the
  OSError every other refused write gives: one line naming `directory`. Another process's
  refusal (`agreements.OtherProcessFailed`, its line quoting that process's error) stays as it
  is: it names the process and its numbers, and nothing failed here."""
  from sadm_jax import agreements
  try:
    yield
  except ValueError as e:
    found = next(((words, code) for words, code in _FULL if words in str(e)), None)
    if isinstance(e, agreements.OtherProcessFailed) or found is None:
      raise
    raise OSError(found[1], f"{found[0]} (a checkpoint save failed)", directory) from None


def check_before_save(directory: str, state: Any, what: str) -> None:
  """`check_room` for a save of `state` into `directory`, on every process together (one that
  found too little room stops all: the others would wait in Orbax's save for it)."""
  from sadm_jax import agreements
  with agreements.together(f"the free-space check for {what}"):
    check_room(directory, int(state_bytes(state) * ROOM_MARGIN[0]) + ROOM_MARGIN[1], what)
