"""Orbax checkpoints of train state + grain iterator + config: the latest N for resuming, the best by validation loss."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


def _abstract(target: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      target, shardings)


class Checkpointer:
  """Two Orbax managers under the workdir.

  `checkpoints/` keeps the latest `keep` steps (train state, grain iterator state, meta JSON
  with the config) and is what a killed run resumes from; Orbax writes each step into a
  temporary directory and renames it when complete, so a kill mid-save leaves the previous
  step intact. `best/` keeps the single state with the lowest validation loss.
  """

  def __init__(self, workdir: str, keep: int = 2, async_save: bool = True):
    self.dir = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.best_dir = os.path.join(os.path.abspath(workdir), "best")
    opts = dict(create=True, enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self.latest = ocp.CheckpointManager(
        self.dir, options=ocp.CheckpointManagerOptions(max_to_keep=keep, **opts))
    self.best = ocp.CheckpointManager(
        self.best_dir, options=ocp.CheckpointManagerOptions(max_to_keep=1, **opts))
    self.best_loss = self._best_loss_on_disk()

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, step: int, state: Any, iterator: Any, meta: dict) -> None:
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator),
        meta=ocp.args.JsonSave(meta)), force=True)

  def save_best(self, step: int, state: Any, val_loss: float, meta: dict) -> bool:
    """Saves when `val_loss` improves on the best so far; returns whether it saved."""
    if self.best_loss is not None and not val_loss < self.best_loss:
      return False
    self.best.wait_until_finished()
    self.best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({**meta, "val_loss": float(val_loss)})), force=True)
    self.best_loss = float(val_loss)
    return True

  def restore(self, state_target: Any, shardings: Any, iterator: Any,
              step: int | None = None) -> tuple[Any, dict]:
    """Restores (state, meta) of `step` (default latest) into the sharded target; sets the iterator."""
    step = self.latest.latest_step() if step is None else step
    out = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state_target, shardings)),
        data=grain.checkpoint.CheckpointRestore(iterator), meta=ocp.args.JsonRestore()))
    return out.state, dict(out.meta)

  def restore_best(self, state_target: Any, shardings: Any) -> tuple[Any, dict]:
    step = self.best.latest_step()
    if step is None:
      raise FileNotFoundError(f"{self.best_dir}: no best checkpoint")
    out = self.best.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state_target, shardings)),
        meta=ocp.args.JsonRestore()))
    return out.state, dict(out.meta)

  def latest_meta(self) -> dict:
    step = self.latest.latest_step()
    if step is None:
      raise FileNotFoundError(f"{self.dir}: no checkpoint")
    return dict(self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

  def restore_state(self, state_target: Any, shardings: Any, step: int | None = None) -> Any:
    """The train state alone (no data iterator) of `step` (default latest)."""
    step = self.latest.latest_step() if step is None else step
    return self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state_target, shardings)))).state

  def best_meta(self) -> dict:
    """The meta JSON (config, step, val_loss) of the best checkpoint."""
    step = self.best.latest_step()
    if step is None:
      raise FileNotFoundError(f"{self.best_dir}: no best checkpoint")
    out = self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out.meta)

  def _best_loss_on_disk(self) -> float | None:
    step = self.best.latest_step()
    if step is None:
      return None
    path = os.path.join(self.best_dir, str(step), "meta", "metadata")
    try:
      with open(path, encoding="utf-8") as f:
        return float(json.load(f)["val_loss"])
    except (OSError, KeyError, ValueError) as e:
      logging.warning("could not read the best checkpoint's validation loss (%s): %s", path, e)
      return None

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def restore_run(workdir: str, task_name: str, build_task, which: str = "best"):
  """(saved config, host TrainState) of a finished run, rebuilt from the config in its checkpoint.

  `build_task(config, data=False)` builds the task that wrote it; `which` is 'best' (lowest
  validation loss) or 'latest'. Raises FileNotFoundError / ValueError naming the workdir when it
  holds no such checkpoint or the checkpoint belongs to another task.
  """
  import ml_collections
  from sadm_jax.train.state import TrainState
  sub = "best" if which == "best" else "checkpoints"
  if not os.path.isdir(os.path.join(workdir, sub)):
    raise FileNotFoundError(f"{workdir}: no {task_name} {which} checkpoint ({workdir}/{sub}) found")
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    meta = ckpt.best_meta() if which == "best" else ckpt.latest_meta()
    if meta.get("task") != task_name:
      raise ValueError(f"{workdir}: its checkpoint is a {meta.get('task')!r} run, not a "
                       f"{task_name!r} run")
    config = ml_collections.ConfigDict(meta["config"])
    task = build_task(config, data=False)
    abstract = jax.eval_shape(lambda k: TrainState.create(task.init_variables(k), task.tx),
                              jax.random.key(0))
    repl = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: repl, abstract)
    if which == "best":
      state, _ = ckpt.restore_best(abstract, shardings)
    else:
      state = ckpt.restore_state(abstract, shardings)
  finally:
    ckpt.close()
  logging.info("loaded %s state from %s (step %s)", task_name, workdir, meta.get("step"))
  return config, jax.device_get(state)
