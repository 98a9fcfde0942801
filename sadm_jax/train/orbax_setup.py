"""How the package drives Orbax: one writer per array in one process, readers that wait for no other process, managers closed whole, restore errors in one line."""

from __future__ import annotations

import logging
from typing import Any

import jax
import orbax.checkpoint as ocp


def one_writer_per_array() -> None:
  """In a single process, Orbax writes each array once instead of slicing it over its replicas.

  Orbax's default off GPU ("replica-parallel" saving) splits every replicated array into one
  slice per device so that several hosts share the writing. In one process all slices are
  written by that process anyway, and the slicing costs one eager `slice` program per array
  shape and device: with 8 devices, 13,900 dispatches and 11 s of a 4-step tiny run's 40 s,
  for no gain. Multi-process runs keep Orbax's default. Registered once, before the first save;
  Orbax's warning that the handler is overridden (on stderr in every run) is dropped: it is meant.
  """
  if jax.process_count() > 1 or getattr(one_writer_per_array, "done", False):
    return
  from orbax.checkpoint._src.metadata import array_metadata_store
  absl_logger = logging.getLogger("absl")  # Orbax logs through absl, i.e. this logger
  absl_logger.addFilter(_drop_override_warning)
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(
            use_replica_parallel=False, array_metadata_store=array_metadata_store.Store()),
        override=True)
  finally:
    absl_logger.removeFilter(_drop_override_warning)
  one_writer_per_array.done = True


def _drop_override_warning(record: logging.LogRecord) -> bool:
  """A logging filter: False for Orbax's 'Type handler registry ... overriding ...' warning."""
  text = str(record.msg)
  return not (text.startswith("Type handler registry") and "overriding" in text)


def restore_error(e: BaseException, limit: int) -> str:
  """The gist of an Orbax/TensorStore restore error for a one-line message: its first line,
  without TensorStore's 'See full TensorStore details: ...' spec dump, at most `limit` characters
  (the exception's type name when it says nothing)."""
  text = str(e).strip()
  first = text.splitlines()[0].split(" See full TensorStore details")[0] if text else ""
  return first[:limit] or type(e).__name__


def abstract_targets(target: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      target, shardings)


def close_manager(manager: ocp.CheckpointManager) -> None:
  """Closes `manager` after the thread in which it removes unfinished temporary steps at start-up.

  `CheckpointManager.close()` does not wait for it (Orbax 0.12). A run refused right after
  opening its checkpoints (e.g. no usable checkpoint) then exited while that thread still ran,
  and the interpreter's shutdown made it print a traceback under the one-line error.
  """
  pending = getattr(manager, "_cleanup_tmp_directory_future", None)
  if pending is not None:
    try:
      pending.result()
    except Exception as e:  # noqa: BLE001 — a failed clean-up must not mask the run's own error
      logging.warning("cleaning up temporary checkpoint directories failed: %s", e)
  manager.close()


def this_process_only() -> ocp.options.MultiprocessingOptions:
  """Orbax's multi-process options of a reader: this process alone (its own primary host).

  Every process reads a trained run whole for itself (`Checkpointer.restore_saved`, onto its own
  first device), so no barrier is needed; with Orbax's default (all processes) its manager waits
  for every process when it is created and after each restore, and a restore that failed on one
  host (a file only its mount cannot read) left the others in that barrier: a collective mismatch
  with the stage's own agreement (`agreements.together`), which aborted every process (SIGABRT
  on CPU) or hung until a timeout, instead of one line on each. Orbax skips a barrier over this
  process alone (`multihost.should_skip_process_sync`).
  """
  me = jax.process_index()
  return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})


def quiet_after_failed_restore() -> None:
  """Drops the echoes of a restore that failed, for the rest of the process (installed once).

  When one array of a step cannot be read (a truncated file), Orbax's restore fails and closes
  its event loop while TensorStore still completes the other reads: each completion's callback
  then raised RuntimeError('Event loop is closed') in a TensorStore thread, which Python printed
  as an unraisable exception — 559 tracebacks (≈ 39,000 lines on stderr) for the tiny cDDPM's
  step — and asyncio logged the failed read's task once more ('Task exception was never
  retrieved'). The failure itself is reported in one line (`checkpoint.Checkpointer.restore_usable`);
  any other unraisable exception or asyncio message passes as before.
  """
  if getattr(quiet_after_failed_restore, "done", False):
    return
  import sys
  previous = sys.unraisablehook

  def hook(unraisable) -> None:
    if not _closed_loop_echo(unraisable.exc_value):
      previous(unraisable)
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_drop_orbax_task_echo)
  quiet_after_failed_restore.done = True


def _closed_loop_echo(e: BaseException | None) -> bool:
  """Whether `e` is asyncio's refusal of a callback on a closed loop (`quiet_after_failed_restore`)."""
  return isinstance(e, RuntimeError) and str(e) == "Event loop is closed"


def _drop_orbax_task_echo(record: logging.LogRecord) -> bool:
  """A logging filter: False for asyncio's 'Task exception was never retrieved' of an Orbax task."""
  text = record.getMessage()
  return not (text.startswith("Task exception was never retrieved") and "orbax" in text)
