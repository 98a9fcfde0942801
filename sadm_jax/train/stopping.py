"""Where training stops after a SIGTERM: one step that every process agrees on, checkpointed first."""

from __future__ import annotations

import itertools

import jax

BARRIER_TIMEOUT_MS = 60 * 60 * 1000  # a process that died: JAX's heartbeat stops the job
# within minutes; one alive but stuck (a hung file system) holds the others this long at most
_trainings = itertools.count(1)  # one key space per training of this job (same order everywhere)


class StopAgreement:
  """Decides, at the end of every training step, whether every process stops there.

  One process: it stops at the step where its SIGTERM was seen. Several processes: a SIGTERM may
  reach one host only, or the hosts at different steps, yet every process must save the same
  checkpoint step (Orbax's save is a collective) and stop after it. At every step each process
  posts its request, if any, under that step's name in the coordination service's key-value
  store, waits at one barrier, then reads the step's requests: all read the same set (every
  post of step s is made before its poster reaches barrier s), so all stop at the same step.
  The barrier also keeps the hosts' Python within one step of each other, so no process waits in
  a device computation for a step another has not dispatched. Cost: one barrier and one read per
  step (≈ 1 ms on loopback), nothing with one process.
  """

  def __init__(self, name: str):
    self.processes = jax.process_count()
    self._client = None
    if self.processes > 1:
      from sadm_jax import distributed
      self._client = distributed.coordination_client()
      self._prefix = f"sadm_jax/stop/{name}/{next(_trainings)}"

  def stop_at(self, step: int, requested: bool) -> list[int]:
    """The processes that asked to stop if every process stops after `step`, else []. With
    several processes a collective: every process calls it once at every step, in order."""
    if self._client is None:
      return [jax.process_index()] if requested else []
    if requested:  # (posted once: every process stops at the step it is posted for)
      self._client.key_value_set(f"{self._prefix}/{step}/{jax.process_index()}", "stop")
    self._client.wait_at_barrier(f"{self._prefix}/step", BARRIER_TIMEOUT_MS)
    asked = sorted(int(key.rsplit("/", 1)[1])
                   for key, _ in self._client.key_value_dir_get(f"{self._prefix}/{step}/"))
    if asked:  # no process stops before every one has read: process 0's exit ends the service,
      # and a read still in flight elsewhere failed (a traceback, then SIGABRT)
      self._client.wait_at_barrier(f"{self._prefix}/stop", BARRIER_TIMEOUT_MS)
    return asked
