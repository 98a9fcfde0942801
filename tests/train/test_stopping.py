"""Tests of training's stop after a SIGTERM: the step is saved first and the rerun loses nothing."""

import json
import os
import signal

import pytest

from sadm_jax.train import checkpoint as checkpoint_lib
from sadm_jax.train import loop
from sadm_jax.train.stopping import StopAgreement
from sadm_jax.utils import signals
from tests.train.test_loop import _config, toy_task


def test_one_process_stops_where_it_asked():
  stop = StopAgreement("toy")
  assert stop.processes == 1
  assert stop.stop_at(1, False) == [] and stop.stop_at(2, True) == [0]


def test_several_processes_all_read_the_requests_before_any_stops():
  """The requests are read after the step's barrier; a process that then stopped at once (no save
  left to do: the step was saved already, or the set-up's check) could end process 0, and with it
  the coordination service, while another process still read: a traceback and SIGABRT there.
  Every process now waits at one more barrier once they agree to stop (a fake client)."""
  class Client:
    def __init__(self):
      self.calls, self.keys = [], []

    def key_value_set(self, key, value):
      self.keys.append((key, value))

    def wait_at_barrier(self, name, timeout_ms):
      self.calls.append(name.rsplit("/", 1)[1])

    def key_value_dir_get(self, prefix):
      return [k for k in self.keys if k[0].startswith(prefix)]
  stop = StopAgreement("toy")
  stop._client, stop._prefix = Client(), "sadm_jax/stop/toy/1"
  assert stop.stop_at(1, False) == [] and stop._client.calls == ["step"]
  assert stop.stop_at(2, True) == [0] and stop._client.calls == ["step", "step", "stop"]


def _sigterm_at(monkeypatch, at: int) -> None:
  """SIGTERM to this process as the loop takes step `at`'s batch (the toy's records know their
  step), as a scheduler's stop would come between two steps' work."""
  device_batch = loop.Trainer.device_batch

  def batch_then_stop(trainer, local):
    if int(local["step"][0]) == at:
      os.kill(os.getpid(), signal.SIGTERM)
    return device_batch(trainer, local)
  monkeypatch.setattr(loop.Trainer, "device_batch", batch_then_stop)


def test_sigterm_saves_its_step_then_stops_and_the_rerun_loses_nothing(tmp_path, monkeypatch,
                                                                         capsys):
  """Checkpoints every 4 steps, validation every 3: a SIGTERM during step 5 used to stop the run
  at once (steps 5 lost: the rerun resumed from 4); now step 5 is finished and saved, then
  `Terminated` (exit 143 under `python -m sadm_jax.main`), and the rerun trains step 6 from it:
  every loss the same as a run never stopped."""
  config = _config(8)
  config.train.checkpoint_every = 4
  straight = loop.train(config, str(tmp_path / "a"), toy_task(config))
  capsys.readouterr()
  old = signal.getsignal(signal.SIGTERM)
  with monkeypatch.context() as m:
    _sigterm_at(m, 5)
    with pytest.raises(signals.Terminated):
      loop.train(config, str(tmp_path / "b"), toy_task(config))
  assert signal.getsignal(signal.SIGTERM) is old
  assert capsys.readouterr().out.splitlines()[-1] == "SIGTERM: checkpoint step 5 saved; stopping"
  with checkpoint_lib.Checkpointer(str(tmp_path / "b"), create=False) as saved:
    assert saved.latest.all_steps() == [4, 5]
    assert saved.saved_meta("latest", 5)["step"] == 5
  resumed = loop.train(config, str(tmp_path / "b"), toy_task(config))
  assert "resumed from checkpoint step 5" in capsys.readouterr().out
  read = lambda d: [json.loads(l) for l in open(tmp_path / d / "metrics.jsonl")]
  a = [(r["step"], r["train/loss"]) for r in read("a") if "train/loss" in r]
  b = [(r["step"], r["train/loss"]) for r in read("b") if "train/loss" in r]
  assert a == b and [s for s, _ in b] == list(range(1, 7))  # bit-identical
  assert straight == resumed


def test_sigterm_in_the_last_step_keeps_the_finished_run_and_still_stops(tmp_path, monkeypatch):
  """The last step is saved anyway; the stop is still reported (`Terminated`), so a job of
  several stages does not start the next one after its scheduler asked it to stop."""
  config = _config(8)
  _sigterm_at(monkeypatch, 6)
  with pytest.raises(signals.Terminated):
    loop.train(config, str(tmp_path), toy_task(config))
  with checkpoint_lib.Checkpointer(str(tmp_path), create=False) as saved:
    assert saved.latest_step() == 6
