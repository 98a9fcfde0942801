"""Tests of the SIGTERM handling: an interrupt in general, a request to stop after the step in training."""

import os
import signal

import pytest

from sadm_jax.utils import signals


def test_sigterm_in_training_is_a_request_repeats_included_and_the_handler_comes_back():
  old = signal.getsignal(signal.SIGTERM)
  with signals.terminate_as_interrupt():
    outer = signal.getsignal(signal.SIGTERM)
    with signals.deferred_termination() as term:
      assert not term.requested
      os.kill(os.getpid(), signal.SIGTERM)  # (handled before os.kill returns: same thread)
      assert term.requested
      os.kill(os.getpid(), signal.SIGTERM)  # Slurm's and a sweep's: the same request
      assert term.requested
    assert signal.getsignal(signal.SIGTERM) is outer  # outside training: an interrupt again
    with pytest.raises(signals.Terminated):
      os.kill(os.getpid(), signal.SIGTERM)
  assert signal.getsignal(signal.SIGTERM) is old


def test_ctrl_c_in_training_still_stops_at_once(python_sigint):
  with signals.deferred_termination():
    with pytest.raises(KeyboardInterrupt) as e:
      os.kill(os.getpid(), signal.SIGINT)
  assert not isinstance(e.value, signals.Terminated)


def test_outside_the_main_thread_nothing_changes():
  import threading
  seen = []

  def body():
    with signals.deferred_termination() as term:
      seen.append((signal.getsignal(signal.SIGTERM), term.requested))
  old = signal.getsignal(signal.SIGTERM)
  t = threading.Thread(target=body)
  t.start()
  t.join()
  assert seen == [(old, False)]


def test_only_a_sweeps_member_stops_with_its_parent():
  """`sadm_jax.main` run by hand (or under `nohup`) goes on when its shell ends; only a sweep's
  member, given the sweep's pid, watches it (tests/test_cli_errors_environment.py kills one)."""
  assert not signals.stop_with_parent({})
  assert not signals.stop_with_parent({signals.PARENT_VAR: "not a pid"})


@pytest.mark.parametrize("where", ["gc_callback", "finaliser", "weakref_callback"])
def test_a_sigterm_where_python_drops_exceptions_is_not_lost(where):
  """A SIGTERM whose handler ran inside a garbage-collector callback (JAX registers one; a
  collection can start at any allocation) raised `Terminated` there, where Python prints the
  exception ("Exception ignored in: <function _xla_gc_callback ...>") and drops it: a 2-process
  run signalled then trained to its end, and a scheduler would have killed it. So in a finaliser
  and a weakref callback (the suite once caught one in `WeakKeyDictionary`'s, which the frame
  check of the first fix missed). It is sent again a moment later, outside."""
  import gc
  import time
  import weakref
  sent = []

  def send(*args):
    if not sent:
      sent.append(1)
      os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside

  class Finalised:
    def __del__(self):
      send()

  def callback(phase, info):
    if phase == "start":
      send()
  if where == "gc_callback":
    gc.callbacks.append(callback)
  try:
    with signals.terminate_as_interrupt():
      with pytest.raises(signals.Terminated):
        if where == "gc_callback":
          gc.collect()
        elif where == "finaliser":
          Finalised()
        else:
          class Referent:
            pass
          r = Referent()
          ref = weakref.ref(r, send)  # (kept alive: its callback runs when r dies)
          del r
        time.sleep(2)
    assert where != "weakref_callback" or ref() is None
  finally:
    if callback in gc.callbacks:
      gc.callbacks.remove(callback)
  assert sent == [1]


def test_a_held_sigterm_waits_for_the_agreement_and_is_raised_unless_taken():
  """`held` (what every process does together): inside, a SIGTERM that would raise at once is
  noted; leaving, it is raised unless the caller told the other processes (`taken`); an error
  leaving the block stays that error; nested holds share one; an inactive hold (one process) and
  training's deferral leave the handler as it is."""
  with signals.terminate_as_interrupt():
    raising = signal.getsignal(signal.SIGTERM)
    with pytest.raises(signals.Terminated):
      with signals.held() as hold:
        os.kill(os.getpid(), signal.SIGTERM)
        assert hold.requested and not hold.taken
        with signals.held() as inner:
          assert inner is hold
        assert signal.getsignal(signal.SIGTERM) is not raising
    assert signal.getsignal(signal.SIGTERM) is raising
    with signals.held() as hold:  # told to the others: not raised here as well
      os.kill(os.getpid(), signal.SIGTERM)
      hold.taken = True
    with pytest.raises(ValueError):
      with signals.held():
        os.kill(os.getpid(), signal.SIGTERM)
        raise ValueError("its own error")
    with signals.held(active=False) as hold:
      with pytest.raises(signals.Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
    assert not hold.requested
    with signals.deferred_termination() as term:
      with signals.held() as hold:
        os.kill(os.getpid(), signal.SIGTERM)
      assert term.requested and not hold.requested
    assert signal.getsignal(signal.SIGTERM) is raising
