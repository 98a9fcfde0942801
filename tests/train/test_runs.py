"""open_run: a referenced run whose best checkpoint lost or garbled its meta is one line naming it."""

import logging
import shutil

import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from sadm_jax.train import checkpoint as ckpt_lib
from sadm_jax.train.runs import open_run


@pytest.mark.parametrize("damage", ["garbled", "missing"])
def test_unreadable_meta_of_the_best_checkpoint_is_one_line_naming_it(tmp_path, damage, caplog):
  """Was: a garbled meta JSON gave 'error: Expecting value: line 1 column 1 (char 0)' (no file, no
  setting; after a warning about the best loss), a missing meta/ folder a KeyError traceback."""
  with ckpt_lib.Checkpointer(str(tmp_path), async_save=False) as ck:
    ck.best.save(2, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": {"w": jnp.ones((3,))}, "model_state": {}}),
        meta=ocp.args.JsonSave({"task": "cddpm", "step": 2, "val_loss": 1.0, "config": {}})))
  meta = tmp_path / "best" / "2" / "meta"
  if damage == "garbled":
    (meta / "metadata").write_text("garbage\n")
  else:
    shutil.rmtree(meta)
  with caplog.at_level(logging.WARNING), pytest.raises(ckpt_lib.RunError) as e:
    open_run(str(tmp_path), expect="cddpm", setting="sadm.cddpm_workdir")
  assert str(e.value).startswith(
      f"sadm.cddpm_workdir={tmp_path}: its best checkpoint (step 2) has no readable meta "
      f"({meta}: "), str(e.value)
  assert "\n" not in str(e.value)
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # a reader: no warning
