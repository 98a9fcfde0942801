"""Opening a trained run: `open_run`, the one way every stage reads a run's config, meta and weights."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from sadm_jax.train.checkpoint import Checkpointer, RunError
from sadm_jax.train.orbax_setup import restore_error

# The tasks a run can be (its checkpoint meta "task").
TASKS = ("cddpm", "spark", "sadm")


def variables_fingerprint(variables: Any) -> str:
  """sha256 (16 hex digits) of each leaf's path, shape, dtype and bytes: a checkpoint's identity."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}:{a.shape}:{a.dtype}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


@dataclasses.dataclass
class Run:
  """A trained run as every consumer needs it (host arrays).

  workdir: absolute path; task: 'cddpm' | 'spark' | 'sadm'; config: the config saved by the run,
  exactly as the user gave it; meta: the checkpoint's metadata (step, val_loss, and under 'run'
  the derived facts: effective seed, referenced runs, training data orientation, versions);
  step: the restored step; which: 'best' | 'latest'; variables: {'params', 'model_state'};
  cddpm: for a SADM run that uses a cDDPM, the referenced cDDPM run (opened the same way).
  """
  workdir: str
  task: str
  config: ml_collections.ConfigDict
  meta: dict
  step: int
  which: str
  variables: dict
  cddpm: "Run | None" = None

  @functools.cached_property
  def fingerprint(self) -> str:
    """`variables_fingerprint` of the restored {'params', 'model_state'}."""
    return variables_fingerprint(self.variables)

  @property
  def run_meta(self) -> dict:
    return dict(self.meta.get("run", {}))

  def reference(self, relative_to: str | None = None) -> dict:
    """What another run records to reference this one (checked when that run is reopened).

    With `relative_to` (the referencing run's workdir) the path from there is recorded too, so
    that the pair still opens after both were moved or copied together (`_open_reference`)."""
    ref = {"workdir": self.workdir, "which": self.which, "step": self.step,
           "fingerprint": self.fingerprint}
    if relative_to is not None:
      ref["relative"] = os.path.relpath(self.workdir, os.path.abspath(relative_to))
    return ref


def reference_candidates(workdir: str, ref: dict) -> list[str]:
  """Where a referenced run may be, in the order tried: at its recorded path relative to the
  referencing run's `workdir` (both moved or copied together), then at its recorded absolute
  path."""
  out = []
  if ref.get("relative"):
    out.append(os.path.normpath(os.path.join(workdir, ref["relative"])))
  if ref.get("workdir"):
    out.append(os.path.normpath(ref["workdir"]))
  return list(dict.fromkeys(out))


def _latest_reference(workdir: str, key: str) -> dict:
  """The reference `key` of the run's last start (`<workdir>/run.json`, rewritten by every start):
  where a resume found it, when that differs from where the checkpoint was trained; {} if none."""
  try:
    with open(os.path.join(workdir, "run.json"), encoding="utf-8") as f:
      ref = json.load(f).get("run", {}).get(key)
  except (OSError, ValueError, AttributeError):
    return {}
  return ref if isinstance(ref, dict) else {}


def find_recorded(candidates, load: Callable[[str], Any], differences: Callable[[Any], Any]):
  """The first of `candidates` (paths, in order) where `load(path)` gives what was recorded.

  A RunError from `load` means unusable there (its message is kept); `differences(loaded)` is
  empty when the loaded thing is the recorded one. Returns (loaded, None, problems) when found,
  else (None, (path, loaded, differences) of the first that differed, or None, problems).
  """
  problems, changed = [], None
  for path in dict.fromkeys(candidates):
    try:
      loaded = load(path)
    except RunError as e:
      problems.append(str(e))
      continue
    differ = differences(loaded)
    if not differ:
      return loaded, None, problems
    changed = changed or (path, loaded, differ)
  return None, changed, problems


def _open_reference(workdir: str, ref: dict, opened: Sequence["Run"] = ()) -> "Run":
  """Opens the cDDPM a SADM run references: the first candidate (`reference_candidates` of the
  checkpoint's record, then of the last start's, which a resume with a moved cDDPM updated) that
  holds the recorded step with the recorded weights (fingerprint); refuses when none is there
  (gone, unusable) or none holds those weights (changed: retrained or replaced)."""
  candidates = reference_candidates(workdir, ref) + reference_candidates(
      workdir, _latest_reference(workdir, "cddpm"))
  run, changed, problems = find_recorded(
      candidates, lambda where: open_run(where, which=ref.get("which", "best"), expect="cddpm",
                                         opened=opened),
      lambda run: (run.step, run.fingerprint) != (ref.get("step"), ref.get("fingerprint")))
  if run is not None:
    return run
  if changed is not None:
    other = changed[1]
    raise RunError(
        f"{workdir}: the frozen cDDPM it was trained with changed: {other.workdir} now holds "
        f"step {other.step} (fingerprint {other.fingerprint}), the SADM run recorded step "
        f"{ref.get('step')} (fingerprint {ref.get('fingerprint')})")
  raise RunError(f"{workdir}: the frozen cDDPM this SADM run was trained with is gone or "
                 f"unusable ({'; '.join(problems) or 'no reference recorded'})")


def open_run(workdir: str, which: str = "best", expect: str | None = None,
             setting: str | None = None, opened: Sequence[Run] = ()) -> Run:
  """Opens a trained run: its saved config, its metadata and its variables, as host arrays.

  The one way to reopen a run: stage II (its frozen cDDPM), the SparK encoder transfer,
  evaluation, predict, describe and the benchmarks use it. The networks are rebuilt from the
  config saved in the checkpoint (`models.factory`), so the caller's config need not match.
  A SADM run's referenced cDDPM is opened too (`Run.cddpm`) and checked against the step and
  weight fingerprint recorded when the SADM run was trained.

  Args:
    workdir: the run's workdir.
    which: 'best' (lowest validation loss) or 'latest'.
    expect: the task the caller needs ('cddpm', 'spark', 'sadm'), or None for any.
    setting: the config key the workdir came from, named in error messages.
    opened: runs the caller holds already: one of the same workdir, checkpoint ('best'/'latest')
      and step as on disk now is returned instead of being read again (also for a SADM run's
      referenced cDDPM, whose step and weight fingerprint are checked all the same).
  Raises:
    RunError (one line, naming the workdir): no such checkpoint, another task, unreadable
    checkpoint, or a referenced cDDPM that is gone or changed.
  """
  label = f"{setting}={workdir}" if setting else str(workdir)
  sub = "best" if which == "best" else "checkpoints"
  if not workdir or not os.path.isdir(os.path.join(workdir, sub)):
    want = f"a trained {expect} run" if expect else "a trained run"
    raise RunError(f"{label}: not {want} (no {which} checkpoint in {os.path.join(workdir, sub)})")
  workdir = os.path.abspath(workdir)
  ckpt = Checkpointer(workdir, async_save=False, create=False)
  try:
    saved = ckpt.saved_step(which)  # meta and state below are read from this one step
    try:
      if saved is None:
        raise FileNotFoundError(which)
      meta = ckpt.saved_meta(which, saved)
    except FileNotFoundError:
      raise RunError(f"{label}: no complete {which} checkpoint") from None
    except (OSError, KeyError, TypeError, ValueError) as e:  # meta/ gone or not JSON
      where = os.path.join(workdir, sub, str(saved), "meta")
      raise RunError(f"{label}: its {which} checkpoint (step {saved}) has no readable meta "
                     f"({where}: {restore_error(e, 200)})") from None
    task_name = meta.get("task")
    if expect is not None and task_name != expect:
      raise RunError(f"{label}: this is a {task_name!r} run, not a {expect!r} run")
    if task_name not in TASKS:
      raise RunError(f"{label}: unknown task {task_name!r} in its checkpoint")
    step = int(meta.get("step", 0))
    held = next((r for r in opened if (r.workdir, r.which, r.step) == (workdir, which, step)), None)
    if held is not None:
      return held
    config = ml_collections.ConfigDict(meta["config"])
    cddpm = None
    ref = meta.get("run", {}).get("cddpm")
    if task_name == "sadm" and ref:
      cddpm = _open_reference(workdir, ref, opened)
    try:
      # The step whose meta was read above; the model only (not the optimiser state).
      state = ckpt.restore_saved(which, saved, keys=("params", "model_state"))
    except Exception as e:  # noqa: BLE001  (Orbax/TensorStore raise many types)
      raise RunError(f"{label}: its {which} checkpoint (step {meta.get('step')}) cannot be "
                     f"restored: {restore_error(e, 300)}") from None
  finally:
    ckpt.close()
  state = jax.device_get(state)
  logging.info("opened %s run %s (%s step %s)", task_name, workdir, which, meta.get("step"))
  return Run(workdir=workdir, task=task_name, config=config, meta=dict(meta), step=step,
             which=which,
             variables={"params": state["params"], "model_state": state["model_state"]},
             cddpm=cddpm)
