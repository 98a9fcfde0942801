"""Orbax checkpoints: the latest N for resuming, the best by validation loss (runs are reopened by `runs.open_run`)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Any, Sequence

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from sadm_jax.train import disk_room
from sadm_jax.train.orbax_setup import (abstract_targets, close_manager, one_writer_per_array,
                                        quiet_after_failed_restore, restore_error,
                                        this_process_only)
from sadm_jax.utils import signals


# grain's words when an iterator state does not match the loader (data source, sampler, workers).
LOADER_MISMATCH = "in checkpoint does not match"


class Checkpointer:
  """Two Orbax managers under the workdir.

  `checkpoints/` keeps the latest `keep` steps (train state, grain iterator state, meta JSON
  with the config) and is what a killed run resumes from; Orbax writes each step into a
  temporary directory and renames it when complete, so a kill mid-save leaves the previous
  step intact. `best/` keeps the single state with the lowest validation loss.
  """

  def __init__(self, workdir: str, keep: int = 2, async_save: bool = True, create: bool = True):
    one_writer_per_array()
    self.dir = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.best_dir = os.path.join(os.path.abspath(workdir), "best")
    # A reader (create=False) never creates directories, cleans another run's temporaries or
    # waits for another process (`this_process_only`).
    opts = dict(create=create, enable_async_checkpointing=async_save,
                cleanup_tmp_directories=create)
    if not create:
      opts["multiprocessing_options"] = this_process_only()
    self.latest = ocp.CheckpointManager(
        self.dir, options=ocp.CheckpointManagerOptions(max_to_keep=keep, **opts))
    try:
      self.best = ocp.CheckpointManager(
          self.best_dir, options=ocp.CheckpointManagerOptions(max_to_keep=1, **opts))
      # A reader never saves a best state: it needs no best loss (nor a warning when unreadable).
      self.best_loss = self._agreed_best_loss(self._best_loss_on_disk()) if create else None
    except BaseException:  # no manager (nor its threads) outlives a failed construction
      for manager in (self.latest, getattr(self, "best", None)):
        if manager is not None:
          close_manager(manager)
      raise

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, step: int, state: Any, iterator: Any, meta: dict) -> None:
    """Saves checkpoint `step` once any best state saved before it is complete on disk: a run
    resumed from `step` never validates the steps up to it again, so a best state whose writing
    a kill interrupted after checkpoint `step` was complete would be lost for good."""
    with disk_room.disk_full_as_oserror(self.best_dir):
      self.best.wait_until_finished()  # returns at once unless a best save is in flight
    with disk_room.disk_full_as_oserror(self.dir):
      self.latest.wait_until_finished()  # the free space below counts the previous save whole
      disk_room.check_before_save(self.dir, state, f"checkpoint step {step}")
      self.latest.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator),
          meta=ocp.args.JsonSave(meta)), force=True)

  def save_best(self, step: int, state: Any, val_loss: float, meta: dict) -> bool:
    """Saves when `val_loss` improves on the best so far; returns whether it saved. A NaN or
    infinite loss is never the best (no later loss would compare below a NaN)."""
    if not math.isfinite(val_loss) or (self.best_loss is not None
                                       and not val_loss < self.best_loss):
      return False
    with disk_room.disk_full_as_oserror(self.dir):
      self.latest.wait_until_finished()  # the free space below counts a latest save whole
    with disk_room.disk_full_as_oserror(self.best_dir):
      self.best.wait_until_finished()
      disk_room.check_before_save(self.best_dir, state, f"the best checkpoint, step {step}")
      self.best.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          meta=ocp.args.JsonSave({**meta, "val_loss": float(val_loss)})), force=True)
    self.best_loss = float(val_loss)
    return True

  def restore(self, state_target: Any, shardings: Any, iterator: Any,
              step: int | None = None) -> tuple[Any, dict]:
    """Restores (state, meta) of `step` (default latest) into the sharded target; sets the iterator."""
    return self._restore(self.latest, state_target, shardings, iterator, step)

  @staticmethod
  def _restore(manager: ocp.CheckpointManager, state_target: Any, shardings: Any, iterator: Any,
               step: int | None = None) -> tuple[Any, dict]:
    step = manager.latest_step() if step is None else step
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_targets(state_target, shardings)),
        data=grain.checkpoint.CheckpointRestore(iterator), meta=ocp.args.JsonRestore()))
    return out.state, dict(out.meta)

  def restore_usable(self, state_target: Any, shardings: Any, iterator: Any
                     ) -> tuple[int | None, Any, dict]:
    """(step, state, meta) of the newest step that restores; (None, None, {}) in a fresh workdir.

    A step that fails to restore (truncated array file, missing metadata, empty directory, ...)
    is logged in one line, moved aside to `checkpoints/<step>.damaged-<n>` (never deleted) and the
    previous step is tried. Raises RunError naming the directory when no step is usable, also on
    later starts (the moved-aside steps stay), so a damaged run never silently restarts at step 0.
    A step whose data loader state grain refuses (saved for other volumes, another sampler or
    worker count) is not damage, nor one saved by another number of processes: RunError at once,
    nothing moved aside.

    With several processes each restores its shards without Orbax's barrier, then all learn how
    every other fared (`_agree_on_step`) and act alike: a step is damage only when it fails on
    every process; one that fails on some hosts only (files a host's mount cannot read) is a
    RunError on every process naming the first, nothing moved aside.
    """
    reader = self.latest if jax.process_count() == 1 else ocp.CheckpointManager(
        self.dir, options=ocp.CheckpointManagerOptions(
            create=False, cleanup_tmp_directories=False, enable_async_checkpointing=False,
            multiprocessing_options=this_process_only()))
    try:
      while (step := self.latest.latest_step()) is not None:
        error, kind = None, None
        try:
          self._check_process_count(step)
          state, meta = self._restore(reader, state_target, shardings, iterator, step)
        except RunError as e:
          error, kind = e, "refused"
        except KeyboardInterrupt as e:  # a SIGTERM or Ctrl-C that may have reached this host
          error, kind = e, "interrupted"  # alone: the others must stop too, not wait for it
        except Exception as e:  # noqa: BLE001  (Orbax/TensorStore raise many types)
          quiet_after_failed_restore()  # TensorStore's late callbacks: hundreds of tracebacks
          if LOADER_MISMATCH in str(e):  # a whole step whose data loader state is for other data
            error, kind = RunError(
                f"{self.dir}: step {step} was saved while training on other data "
                f"({str(e).splitlines()[0].strip()}); resume with the run's own data, or use a "
                "new workdir"), "refused"
          else:
            error, kind = e, "damaged"
        reason = None if error is None else str(error) if kind == "refused" else (
            signals.signal_name(error)) if kind == "interrupted" else (
            f"{type(error).__name__}: {restore_error(error, 200)}" if str(error).strip()
            else type(error).__name__)
        self._agree_on_step(step, kind, reason, error)
        if error is None:
          return step, state, meta
        aside = self._move_aside(step)  # damaged on every process
        if reader is not self.latest:
          reader.reload()
        logging.warning("checkpoint step %d in %s cannot be restored (%s); moved it aside to %s "
                        "and trying the previous step", step, self.dir, reason,
                        os.path.basename(aside))
    finally:
      if reader is not self.latest:
        close_manager(reader)
    damaged = sorted(n for n in os.listdir(self.dir) if ".damaged-" in n) if os.path.isdir(
        self.dir) else []
    if damaged:
      raise RunError(f"{self.dir}: no usable checkpoint to resume from (damaged steps moved aside: "
                     f"{', '.join(damaged)}); start the run again in a new workdir")
    return None, None, {}

  def _agree_on_step(self, step: int, kind: str | None, reason: str | None,
                     error: BaseException | None) -> None:
    """Every process's outcome of restoring `step` (kind None, 'refused', 'damaged' or
    'interrupted'; a collective with several processes); returns when the step restored on every
    process or is damaged on every process, else raises: this process's own RunError when it
    refused the step, else a RunError naming the first process that refused it, or that could not
    read it while others could (a host's own mount, not the step: nothing is moved aside). A
    SIGTERM or Ctrl-C on any process is raised on every process, nothing moved aside."""
    from sadm_jax import agreements, distributed
    what = f"restoring checkpoint step {step}"
    every = distributed.allgather_at(what, [kind, reason])
    kinds = [k for k, _ in every]
    if kind == "interrupted":
      raise error
    if kind == "refused":
      raise error from None
    first = next((p for p, k in enumerate(kinds) if k == "interrupted"), None)
    if first is not None:  # every process stops as the interrupted one does; nothing moved aside
      agreements.raise_interrupt(every[first][1], [first], what)
    first = next((p for p, k in enumerate(kinds) if k == "refused"), None)
    if first is not None:
      raise RunError(f"process {first} of {len(every)} stopped at its checkpoint: "
                     f"{every[first][1]}")
    if set(kinds) in ({None}, {"damaged"}):
      return
    first = kinds.index("damaged")
    fine = kinds.index(None)
    raise RunError(f"{self.dir}: checkpoint step {step} cannot be restored on process {first} of "
                   f"{len(every)} ({every[first][1]}) but can on process {fine}: does every host "
                   "see the same files there? (nothing was moved aside; if they do, files only "
                   f"process {first} reads are damaged: move {step}/ aside by hand to resume from "
                   "the step before)")

  def _check_process_count(self, step: int) -> None:
    """RunError when step `step`'s data loader state was saved by another number of processes.

    grain keeps one iterator state per process (`data/process_<i>-of-<n>.json`) and each process
    reads only its own shard of the data, so a run resumes only with its own process count. The
    step is not damaged: nothing is moved aside. A step without such files is left to restore.
    """
    data = os.path.join(self.dir, str(step), "data")
    names = os.listdir(data) if os.path.isdir(data) else []
    counts = {m.group(1) for n in names if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", n))}
    nproc = jax.process_count()
    if counts and str(nproc) not in counts:
      saved = int(max(counts, key=int))
      plural = lambda n: f"{n} process" + ("es" if n != 1 else "")
      raise RunError(f"{self.dir}: step {step} was saved by {plural(saved)}, not {nproc} (each "
                     "process keeps its own data loader position); resume it with "
                     f"{plural(saved)}, or use a new workdir")

  def _move_aside(self, step: int) -> str:
    """Renames step `step` to `<step>.damaged-<n>` (process 0; the others wait); reloads."""
    src = os.path.join(self.dir, str(step))
    n = 1
    while os.path.exists(f"{src}.damaged-{n}"):
      n += 1
    dst = f"{src}.damaged-{n}"
    if jax.process_index() == 0:
      os.rename(src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
    self.latest.reload()
    return dst

  def _manager(self, which: str) -> ocp.CheckpointManager:
    return self.best if which == "best" else self.latest

  def saved_step(self, which: str = "best") -> int | None:
    """The newest step of `best/` ('best') or `checkpoints/` ('latest'); None when empty."""
    return self._manager(which).latest_step()

  def _step(self, which: str, step: int | None) -> int:
    """`step`, or the newest step of `which`; FileNotFoundError naming the directory if none."""
    step = self.saved_step(which) if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self._manager(which).directory}: no {which} checkpoint")
    return step

  def saved_meta(self, which: str = "best", step: int | None = None) -> dict:
    """The meta JSON (config, task, step, val_loss, run metadata) of a step of `best/` or
    `checkpoints/` (default its newest)."""
    step = self._step(which, step)
    return dict(self._manager(which).restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

  def restore_saved(self, which: str = "best", step: int | None = None,
                    keys: Sequence[str] = ("params", "model_state")) -> dict:
    """Top-level entries `keys` of the train state of a step of `best/` or `checkpoints/`
    (default its newest), as saved.

    No model is needed to shape the target: shapes and dtypes come from the checkpoint's own
    tree metadata, and the entries come back as the saved dict tree on this process's first
    device. The default is the trained model without its optimiser state (a third of an Adam
    run's bytes): what reopens a trained run (`open_run`); training's resume restores into its
    own typed state (`restore_usable`). ValueError when the saved state lacks one of `keys`.
    """
    step = self._step(which, step)
    manager = self._manager(which)
    from etils import epath
    tree = ocp.StandardCheckpointHandler().metadata(
        epath.Path(manager.directory) / str(step) / "state")  # {path: ArrayMetadata}
    missing = [k for k in keys if k not in tree]
    if missing:
      raise ValueError(f"no {' / '.join(missing)} in its saved state (keys {sorted(tree)})")
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                          {k: tree[k] for k in keys})
    restore_args = jax.tree.map(
        lambda t: ocp.ArrayRestoreArgs(sharding=one, global_shape=t.shape, dtype=t.dtype), target)
    return manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))).state

  def _agreed_best_loss(self, mine: float | None) -> float | None:
    """`mine` when every process read the same best validation loss (a collective with several
    processes). Each decides alone whether a validation is a new best, and a save is a
    collective: a host that could not read `best/` (None) would save where the others do not,
    and every process would wait for it. RunError naming both values otherwise."""
    from sadm_jax import distributed
    every = distributed.allgather_at("reading the best validation loss", mine)
    other = next((k for k, v in enumerate(every) if v != mine), None)
    if other is not None:
      raise RunError(f"{self.best_dir}: process {jax.process_index()} reads the best validation "
                     f"loss {mine}, process {other} {every[other]}: does every host see the same "
                     "files there?")
    return mine

  def _best_loss_on_disk(self) -> float | None:
    step = self.best.latest_step()
    if step is None:
      return None
    path = os.path.join(self.best_dir, str(step), "meta", "metadata")
    try:
      with open(path, encoding="utf-8") as f:
        loss = float(json.load(f)["val_loss"])
      return loss if math.isfinite(loss) else None  # a NaN best (older versions) binds nothing
    except (OSError, KeyError, TypeError, ValueError) as e:
      logging.warning("could not read the best checkpoint's validation loss (%s): %s", path, e)
      return None

  def wait(self) -> None:
    with disk_room.disk_full_as_oserror(self.dir):
      self.latest.wait_until_finished()
    with disk_room.disk_full_as_oserror(self.best_dir):
      self.best.wait_until_finished()

  def close(self) -> None:
    for manager in (self.latest, self.best):
      close_manager(manager)

  def __enter__(self) -> "Checkpointer":
    """The checkpointer itself; leaving the block waits for saves and closes it."""
    return self

  def __exit__(self, *exc) -> None:
    """Waits for pending saves and closes both managers (their background threads end)."""
    try:
      self.wait()
    finally:
      self.close()


class RunError(ValueError):
  """A workdir is not the trained run it should be; the message is one line naming it."""


def software_versions() -> dict:
  """Versions of the packages that decide a run's numbers."""
  import flax
  import optax
  return {"jax": jax.__version__, "jaxlib": getattr(jax.lib, "__version__", jax.__version__),
          "flax": flax.__version__, "optax": optax.__version__, "orbax": ocp.__version__,
          "numpy": np.__version__, "backend": jax.default_backend()}
