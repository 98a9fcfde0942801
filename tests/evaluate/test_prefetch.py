"""prefetch_lib.prefetch: batches in order, loaded ahead by a thread (or items by several, across batches), errors raised in the caller, nothing started after the caller stops."""

import threading
import time

import pytest

from sadm_jax.evaluate import prefetch as prefetch_lib

BATCHES = [[1, 2], [3], [4, 5, 6]]


@pytest.mark.parametrize("threads", [1, 3])
def test_batches_come_in_order_with_their_items_loaded(threads):
  got = list(prefetch_lib.prefetch(BATCHES, lambda x: 10 * x, threads))
  assert got == [(b, [10 * x for x in b]) for b in BATCHES]


@pytest.mark.parametrize("threads", [1, 2])
def test_an_error_in_load_is_raised_in_the_caller(threads):
  def load(x):
    if x == 3:
      raise ValueError("bad item 3")
    return x
  seen = []
  with pytest.raises(ValueError, match="bad item 3"):
    for batch, _ in prefetch_lib.prefetch(BATCHES, load, threads):
      seen.append(batch)
  assert seen == [[1, 2]]


def _concurrency_probe():
  """load(x) = x after 0.2 s, and the list of how many loads ran when each started."""
  running, most = set(), []
  lock = threading.Lock()

  def load(x):
    with lock:
      running.add(x)
      most.append(len(running))
    time.sleep(0.2)
    with lock:
      running.discard(x)
    return x
  return load, most


def test_a_batch_is_loaded_by_several_threads_at_once():
  load, most = _concurrency_probe()
  assert list(prefetch_lib.prefetch([[1, 2, 3, 4]], load, 4)) == [([1, 2, 3, 4], [1, 2, 3, 4])]
  assert max(most) == 4


def test_batches_of_one_item_are_loaded_by_several_threads_at_once():
  # one scan per batch (predict on one device): the threads take the next batches' items
  load, most = _concurrency_probe()
  batches = [[1], [2], [3], [4]]
  assert list(prefetch_lib.prefetch(batches, load, 2)) == [(b, b) for b in batches]
  assert max(most) == 2


def test_at_most_prefetch_batches_plus_two_are_started_ahead_of_the_caller():
  started = []
  lock = threading.Lock()

  def load(x):
    with lock:
      started.append(x)
    return x
  gen = prefetch_lib.prefetch([[k] for k in range(40)], load, 3)
  assert next(gen) == ([0], [0])
  time.sleep(0.3)  # the caller holds batch 0: the loader runs ahead as far as it may
  assert sorted(started) == list(range(prefetch_lib.PREFETCH_BATCHES + 2))
  gen.close()


@pytest.mark.parametrize("threads", [1, 2])
def test_nothing_starts_after_the_caller_stops(threads):
  started = []

  def load(x):
    started.append(x)
    time.sleep(0.05)
    return x
  batches = [[2 * k, 2 * k + 1] for k in range(50)]
  gen = prefetch_lib.prefetch(batches, load, threads)
  next(gen)
  gen.close()  # the caller stops: the thread finishes what it is loading, then nothing more
  count = len(started)
  time.sleep(0.3)
  assert len(started) == count < 2 * (prefetch_lib.PREFETCH_BATCHES + 3)
