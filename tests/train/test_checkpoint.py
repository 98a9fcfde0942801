"""Checkpointer: one process writes each array once (no replica-parallel slicing), restored bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sadm_jax.train import checkpoint as ckpt_lib


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
  monkeypatch.delattr(ckpt_lib._one_writer_per_array, "done", raising=False)
  with caplog.at_level(logging.WARNING, logger="absl"):
    ckpt_lib._one_writer_per_array()
    absl_logging.warning("Type handler registry, kept: %s", "not an override")
  assert ckpt_lib._one_writer_per_array.done
  texts = [r.getMessage() for r in caplog.records]
  assert not any("overriding" in t for t in texts), texts
  assert "Type handler registry, kept: not an override" in texts
  assert ckpt_lib._drop_override_warning not in logging.getLogger("absl").filters
  handler = ocp.type_handlers.get_type_handler(jax.Array)
  assert isinstance(handler, ocp.type_handlers.ArrayHandler)


def test_restore_error_is_the_first_line_without_tensorstore_details():
  e = ValueError("Encountered error while reading array index: (slice(0, 3, 1),). See full "
                 "TensorStore details: <bound method spec of TensorStore({...})>\nmore")
  assert ckpt_lib.restore_error(e, 300) == (
      "Encountered error while reading array index: (slice(0, 3, 1),).")
  assert ckpt_lib.restore_error(e, 20) == "Encountered error wh"
  assert ckpt_lib.restore_error(KeyError(), 300) == "KeyError"
