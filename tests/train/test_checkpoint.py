"""Checkpointer: one process writes each array once (no replica-parallel slicing), restored bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sadm_jax.train import checkpoint as ckpt_lib
from sadm_jax.train import orbax_setup


def test_replicated_state_saves_without_eager_slices_and_restores_exactly(tmp_path):
  mesh = Mesh(np.asarray(jax.devices()), ("data",))  # 8 fake devices (tests/conftest.py)
  repl = NamedSharding(mesh, P())
  state = {"w": jax.device_put(jnp.arange(24.0).reshape(4, 6), repl),
           "b": jax.device_put(jnp.ones((5,), jnp.float32), repl)}
  ck = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  handler = ocp.type_handlers.get_type_handler(jax.Array)
  assert handler._use_replica_parallel is False  # noqa: SLF001  (Orbax has no public getter)
  compiled = []

  def listener(event, duration, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
      compiled.append(kw.get("fun_name"))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    ck.best.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    ck.best.wait_until_finished()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert "slice" not in compiled  # Orbax's replica-parallel save slices each array per device
  out = ck.best.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore(
      jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), state))))
  for k in state:
    np.testing.assert_array_equal(np.asarray(out.state[k]), np.asarray(state[k]))


def test_close_waits_for_the_start_up_cleanup_of_temporary_steps(tmp_path, monkeypatch):
  """A run refused right after opening its checkpoints must not exit while Orbax's clean-up
  thread still runs (the interpreter's shutdown then printed a traceback under the error)."""
  import asyncio
  from orbax.checkpoint._src.path import temporary_paths
  done = []

  async def slow_cleanup(*args, **kwargs):
    await asyncio.sleep(0.5)
    done.append(True)

  monkeypatch.setattr(temporary_paths, "cleanup_temporary_paths", slow_cleanup)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path))
  ckpt.close()
  assert done == [True, True]  # both managers' clean-ups finished before close() returned


def test_one_writer_per_array_registers_without_orbax_override_warning(monkeypatch, caplog):
  """The handler override is deliberate: Orbax's 'overriding' warning (stderr in every run) is
  dropped, other absl warnings are not, and the filter is removed afterwards."""
  import logging
  from absl import logging as absl_logging
  monkeypatch.delattr(orbax_setup.one_writer_per_array, "done", raising=False)
  with caplog.at_level(logging.WARNING, logger="absl"):
    orbax_setup.one_writer_per_array()
    absl_logging.warning("Type handler registry, kept: %s", "not an override")
  assert orbax_setup.one_writer_per_array.done
  texts = [r.getMessage() for r in caplog.records]
  assert not any("overriding" in t for t in texts), texts
  assert "Type handler registry, kept: not an override" in texts
  assert orbax_setup._drop_override_warning not in logging.getLogger("absl").filters
  handler = ocp.type_handlers.get_type_handler(jax.Array)
  assert isinstance(handler, ocp.type_handlers.ArrayHandler)


def test_restore_error_is_the_first_line_without_tensorstore_details():
  e = ValueError("Encountered error while reading array index: (slice(0, 3, 1),). See full "
                 "TensorStore details: <bound method spec of TensorStore({...})>\nmore")
  assert orbax_setup.restore_error(e, 300) == (
      "Encountered error while reading array index: (slice(0, 3, 1),).")
  assert orbax_setup.restore_error(e, 20) == "Encountered error wh"
  assert orbax_setup.restore_error(KeyError(), 300) == "KeyError"


def _saved_step_with_loader(workdir):
  """A checkpoint step 1 of a one-array state and a grain loader's iterator, one process."""
  import grain
  loader = grain.DataLoader(data_source=list(range(8)), sampler=grain.samplers.IndexSampler(
      8, shuffle=False, num_epochs=1, seed=0), worker_count=0)
  it = iter(loader)
  next(it)
  state = {"w": jnp.arange(3.0)}
  with ckpt_lib.Checkpointer(workdir, async_save=False) as ck:
    ck.save(1, state, it, {"step": 1})
  return state, iter(loader)


def test_step_saved_by_another_process_count_is_refused_not_moved_aside(tmp_path):
  """A run saved by 2 processes resumed by 1 (or the other way round): grain finds no iterator
  state for this process. That is not damage: one line naming both counts, nothing moved aside
  (the run resumes with its own process count afterwards)."""
  import os
  import pytest
  state, it = _saved_step_with_loader(str(tmp_path))
  data = tmp_path / "checkpoints" / "1" / "data"
  for i in (0, 1):  # as 2 processes write it
    (data / f"process_{i}-of-2.json").write_text((data / "process_0-of-1.json").read_text())
  os.remove(data / "process_0-of-1.json")
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
  shardings = jax.tree.map(lambda a: a.sharding, state)
  with ckpt_lib.Checkpointer(str(tmp_path)) as ck:
    with pytest.raises(ckpt_lib.RunError, match=r"step 1 was saved by 2 processes, not 1"):
      ck.restore_usable(target, shardings, it)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]


def test_a_checkpoint_step_is_written_only_after_the_best_state_saved_before_it(tmp_path):
  """With async checkpoints, a new best of step S and checkpoint S were written at the same time:
  a run killed after checkpoint S was complete but before best/S was resumed from S and never
  validated step S again, so the best state was lost for good. Checkpoint S now starts only once
  best/S is complete (here best/'s writing is slowed down to make the order visible)."""
  import os
  import time
  state, it = _saved_step_with_loader(str(tmp_path / "setup"))
  with ckpt_lib.Checkpointer(str(tmp_path), async_save=True) as ck:
    finalize = ck.best._finalize  # noqa: SLF001  (Orbax's commit of an async save)

    def slow_finalize(*args, **kwargs):
      time.sleep(0.5)
      return finalize(*args, **kwargs)

    ck.best._finalize = slow_finalize  # noqa: SLF001
    latest_save, seen = ck.latest.save, []

    def save(step, *args, **kwargs):
      seen.append(sorted(os.listdir(ck.best_dir)))
      return latest_save(step, *args, **kwargs)

    ck.latest.save = save
    assert ck.save_best(2, state, 0.5, {"step": 2})
    ck.save(2, state, it, {"step": 2})
  assert seen == [["2"]]


def test_a_non_finite_validation_loss_is_never_the_best(tmp_path):
  """A NaN first validation loss was saved as the best, and no later loss compares below NaN:
  best/ kept the NaN state for the rest of the run (and of every resume)."""
  state = {"w": jnp.arange(3.0)}
  with ckpt_lib.Checkpointer(str(tmp_path), async_save=False) as ck:
    assert not ck.save_best(1, state, float("nan"), {"step": 1})
    assert not ck.save_best(2, state, float("inf"), {"step": 2})
    assert ck.save_best(3, state, 0.5, {"step": 3})
    assert (ck.saved_step("best"), ck.best_loss) == (3, 0.5)
  with ckpt_lib.Checkpointer(str(tmp_path), async_save=False) as ck:  # reopened: 0.5 on disk
    assert ck.best_loss == 0.5 and not ck.save_best(4, state, 0.5, {"step": 4})


def test_a_reader_waits_for_no_other_process(tmp_path, monkeypatch):
  """A reader (create=False: `runs.open_run`, `loop.will_resume`) is Orbax-local to its process:
  no barrier of its managers (creation, each restore) waits for another process, so a restore
  that fails on one host cannot leave the others in Orbax's barrier. A writer (training's saves
  and resume) keeps Orbax's default: every process."""
  from orbax.checkpoint._src.multihost import multihost
  with ckpt_lib.Checkpointer(str(tmp_path), async_save=False) as writer:
    for manager in (writer.latest, writer.best):
      options = manager._options.multiprocessing_options  # noqa: SLF001  (no public accessor)
      assert (options.primary_host, options.active_processes) == (0, None)
  monkeypatch.setattr(jax, "process_index", lambda: 1)  # as process 1 of 2
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with ckpt_lib.Checkpointer(str(tmp_path), async_save=False, create=False) as reader:
    for manager in (reader.latest, reader.best):
      options = manager._options.multiprocessing_options  # noqa: SLF001
      assert (options.primary_host, options.active_processes) == (1, {1})
      assert multihost.should_skip_process_sync(options.active_processes)


def test_processes_resume_only_a_step_they_all_read(tmp_path, monkeypatch):
  """Resuming with several processes (fake process 1 of 2: the agreement's all-gather answers for
  it): a step is moved aside only when every process fails to restore it; one that process 1
  alone refuses or cannot read stops this process too, with one line naming process 1, and the
  step stays."""
  import os
  import pytest
  from sadm_jax import distributed
  state, it = _saved_step_with_loader(str(tmp_path))
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
  shardings = jax.tree.map(lambda a: a.sharding, state)
  what = "restoring checkpoint step 1"
  theirs = []
  monkeypatch.setattr(distributed, "allgather_json",  # process 1 (faked) agrees elsewhere
                      lambda mine: [mine, theirs[0] if mine[0] == what else mine])
  ckpt_dir = tmp_path / "checkpoints"

  def resume(other):
    theirs[:] = [[what, list(other)]]
    with ckpt_lib.Checkpointer(str(tmp_path)) as ck:
      return ck.restore_usable(target, shardings, it)
  assert resume([None, None])[0] == 1
  with pytest.raises(ckpt_lib.RunError, match=r"^process 1 of 2 stopped at its checkpoint: x: "
                                              r"step 1 was saved by 2 processes, not 1"):
    resume(["refused", "x: step 1 was saved by 2 processes, not 1"])
  with pytest.raises(ckpt_lib.RunError, match=(
      rf"^{ckpt_dir}: checkpoint step 1 cannot be restored on process 1 of 2 \(OSError: gone\) "
      r"but can on process 0: does every host see the same files there\? \(nothing was moved "
      r"aside; if they do, files only process 1 reads are damaged: move 1/ aside by hand to "
      r"resume from the step before\)$")):
    resume(["damaged", "OSError: gone"])
  assert sorted(os.listdir(ckpt_dir)) == ["1"]
  monkeypatch.setattr(ckpt_lib.Checkpointer, "_restore", staticmethod(
      lambda *a: (_ for _ in ()).throw(OSError("unreadable here too"))))
  with pytest.raises(ckpt_lib.RunError, match="no usable checkpoint to resume from"):
    resume(["damaged", "OSError: gone"])  # on every process: damage
  assert sorted(os.listdir(ckpt_dir)) == ["1.damaged-1"]


def test_processes_that_read_different_best_losses_stop_at_once(tmp_path, monkeypatch):
  """Each process decides alone whether a validation is a new best, and the save is a
  collective: a host that could not read `best/` (None) would save where the others do not and
  every process would wait for it. The processes compare the loss they read first (process 1
  faked by the all-gather); the same value on both is fine."""
  import pytest
  from sadm_jax import distributed
  state, _ = _saved_step_with_loader(str(tmp_path / "setup"))
  with ckpt_lib.Checkpointer(str(tmp_path), async_save=False) as ck:
    assert ck.save_best(2, state, 0.25, {"step": 2})
  theirs = []
  monkeypatch.setattr(distributed, "allgather_json", lambda mine: [mine, [mine[0], theirs[0]]])
  theirs[:] = [0.25]
  with ckpt_lib.Checkpointer(str(tmp_path)) as ck:
    assert ck.best_loss == 0.25
  theirs[:] = [None]
  with pytest.raises(ckpt_lib.RunError, match=(
      rf"^{tmp_path / 'best'}: process 0 reads the best validation loss 0.25, process 1 None: "
      r"does every host see the same files there\?$")):
    ckpt_lib.Checkpointer(str(tmp_path))


def test_a_step_that_fails_to_restore_leaves_no_echo_on_stderr(tmp_path, monkeypatch, caplog):
  """The newest step's array files truncated: Orbax's restore fails and closes its event loop
  while TensorStore still completes the other reads, whose callbacks each raised 'Event loop is
  closed' (printed as unraisable exceptions: 559 tracebacks for the tiny cDDPM's step) and asyncio
  logged the failed task again. The step is moved aside with its one warning, and nothing else."""
  import gc
  import os
  import sys
  import time
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(repr(u.exc_value)))
  monkeypatch.setattr(orbax_setup.quiet_after_failed_restore, "done", False, raising=False)
  import grain
  loader = grain.DataLoader(data_source=list(range(8)), sampler=grain.samplers.IndexSampler(
      8, shuffle=False, num_epochs=1, seed=0), worker_count=0)
  it = iter(loader)
  state = {f"w{i}": jnp.full((64, 64), float(i)) for i in range(40)}
  with ckpt_lib.Checkpointer(str(tmp_path), async_save=False) as ck:
    for step in (1, 2):
      ck.save(step, state, it, {"step": step})
  for root, _, files in os.walk(tmp_path / "checkpoints" / "2" / "state"):
    for f in files:
      if os.sep + "d" in root:
        os.truncate(os.path.join(root, f), 10)
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
  shardings = jax.tree.map(lambda a: a.sharding, state)
  with ckpt_lib.Checkpointer(str(tmp_path)) as ck:
    step, restored, _ = ck.restore_usable(target, shardings, iter(loader))
  time.sleep(0.5)  # (TensorStore's last reads)
  gc.collect()
  assert step == 1 and float(restored["w3"][0, 0]) == 3.0
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2.damaged-1"]
  assert not seen, seen[:3]
  assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
