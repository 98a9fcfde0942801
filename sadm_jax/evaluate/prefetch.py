"""Batches loaded (read, preprocessed) ahead of the devices by background threads, in order: the evaluation's and predict's input pipeline."""

from __future__ import annotations

import queue
import threading
from concurrent import futures
from typing import Any, Callable, Iterator, Sequence, TypeVar

PREFETCH_BATCHES = 2  # batches of volumes read and preprocessed ahead of the device
T = TypeVar("T")


def prefetch(batches: Sequence[Sequence[T]], load: Callable[[T], Any], threads: int = 1
             ) -> Iterator[tuple[Sequence[T], list]]:
  """(batch, [load(item) for item in batch]) for each batch, in order, loaded (read and
  preprocessed) ahead while the caller works on the current one; an exception in `load` is raised
  in the caller. When the caller stops (an error, Ctrl-C), the items being loaded finish and no
  other starts.

  threads = 1: one background thread loads the next `PREFETCH_BATCHES` batches, item by item.
  threads > 1 (`load` must then be thread-safe): a pool of that many threads loads the items in
  order across batch boundaries, so that batches smaller than the pool (one scan per batch on one
  device) keep every thread busy too; at most `PREFETCH_BATCHES` + 2 batches are submitted,
  loaded or held at any time (as many as with one thread).
  """
  q: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
  stop = threading.Event()
  pool = futures.ThreadPoolExecutor(threads, "prefetch-load") if threads > 1 else None

  def guarded(item: T):
    if stop.is_set():
      raise futures.CancelledError  # the caller has stopped: nothing new starts
    return load(item)

  def work():
    try:
      for batch in batches:
        if stop.is_set():
          return
        if pool is not None:  # submitted now, loaded while earlier batches finish
          q.put((batch, [pool.submit(guarded, item) for item in batch]))
          continue
        loaded = []
        for item in batch:
          if stop.is_set():
            return
          loaded.append(load(item))
        q.put((batch, loaded))
    except BaseException as e:  # noqa: BLE001  (re-raised in the consumer)
      q.put(e)
      return
    q.put(None)

  thread = threading.Thread(target=work, name="prefetch", daemon=True)
  thread.start()
  try:
    while True:
      got = q.get()
      if got is None:
        return
      if isinstance(got, BaseException):
        raise got
      batch, loaded = got
      yield batch, [f.result() for f in loaded] if pool is not None else loaded
  finally:
    stop.set()
    while thread.is_alive():  # unblock a producer waiting on a full queue
      try:
        q.get_nowait()
      except queue.Empty:
        thread.join(0.05)
    if pool is not None:
      pool.shutdown(wait=True, cancel_futures=True)
