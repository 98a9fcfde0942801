"""Room for a checkpoint: a save that cannot fit is refused before Orbax writes; Orbax's full-disk error is one line."""

import re

import jax.numpy as jnp
import numpy as np

from sadm_jax.train import checkpoint as ckpt_lib
from sadm_jax.train import disk_room
from tests.train.test_checkpoint import _saved_step_with_loader


def test_state_bytes_counts_every_array_whole():
  state = {"w": jnp.zeros((3, 4)), "m": {"b": np.zeros(5, np.float16)}, "step": 7}
  assert disk_room.state_bytes(state) == 3 * 4 * 4 + 5 * 2  # (a Python int holds no array)


def test_a_save_that_cannot_fit_is_refused_before_orbax_writes(tmp_path, monkeypatch):
  """A full disk failed Orbax halfway through a save: hundreds of lines of its threads'
  tracebacks, then a ValueError of TensorStore paths, and a temporary step left behind. Now the
  free space is compared with the state's size first: the OSError ENOSPC every refused write
  gives (one line under `sadm_jax.main`, exit 2), nothing written."""
  import collections
  import errno
  import os
  import pytest
  state, it = _saved_step_with_loader(str(tmp_path / "setup"))
  usage = collections.namedtuple("usage", "total used free")
  need = int(disk_room.state_bytes(state) * disk_room.ROOM_MARGIN[0]) + disk_room.ROOM_MARGIN[1]
  monkeypatch.setattr(disk_room.shutil, "disk_usage", lambda path: usage(0, 0, need - 1))
  with ckpt_lib.Checkpointer(str(tmp_path), async_save=False) as ck:
    for save, where, what in ((lambda: ck.save(2, state, it, {"step": 2}), ck.dir,
                               "checkpoint step 2"),
                              (lambda: ck.save_best(2, state, 0.5, {"step": 2}), ck.best_dir,
                               "the best checkpoint, step 2")):
      with pytest.raises(OSError) as e:
        save()
      assert (e.value.errno, e.value.filename) == (errno.ENOSPC, where)
      assert e.value.strerror == (f"No space left on device for {what}: {need / 2**20:.1f} MiB "
                                  f"needed, {(need - 1) / 2**20:.1f} MiB free")
    assert os.listdir(ck.dir) == os.listdir(ck.best_dir) == []
    assert ck.best_loss is None  # no best recorded that was not saved
    monkeypatch.setattr(disk_room.shutil, "disk_usage", lambda path: usage(0, 0, need))
    ck.save(2, state, it, {"step": 2})  # just enough: saved
  assert os.listdir(tmp_path / "checkpoints") == ["2"]


def test_orbax_failing_on_a_full_disk_is_the_same_one_line_error(tmp_path):
  """A quota below the file system's free space still fails inside Orbax: TensorStore's
  RESOURCE_EXHAUSTED ValueError (one long line of paths) becomes the OSError ENOSPC (or EDQUOT
  for a quota) naming the checkpoint folder; any other ValueError, RESOURCE_EXHAUSTED without
  the file system's words included, is left as it is."""
  import errno
  import pytest
  state, it = _saved_step_with_loader(str(tmp_path / "setup"))
  tensorstore = ('RESOURCE_EXHAUSTED: Error writing local file "x/_sharding": Failed to write '
                 '85290 bytes to file 4: {} [source locations=...]')
  with ckpt_lib.Checkpointer(str(tmp_path), async_save=False) as ck:
    for message, code in ((tensorstore.format("No space left on device"), errno.ENOSPC),
                          (tensorstore.format("Disk quota exceeded"), errno.EDQUOT),
                          ("RESOURCE_EXHAUSTED: out of memory", None),
                          ("some other failure", None)):
      def full(*args, **kwargs):
        raise ValueError(message)
      ck.latest.save = full
      with pytest.raises(OSError if code else ValueError) as e:
        ck.save(2, state, it, {"step": 2})
      if code:
        assert (e.value.errno, e.value.filename) == (code, ck.dir)
        assert e.value.strerror.endswith("(a checkpoint save failed)")
      else:
        assert str(e.value) == message


def test_a_full_disk_on_another_process_is_named_as_such(tmp_path, monkeypatch):
  """Process 1 of 2 alone found too little room (its host's own disk, or its view of a shared
  one): this process stops with the line naming process 1 and its numbers (fake 2 processes:
  the agreement's all-gather answers for process 1), not with a full-disk error of its own
  ('a checkpoint save failed') that hid which process and which numbers."""
  import os
  import pytest
  from sadm_jax import agreements, distributed
  state, it = _saved_step_with_loader(str(tmp_path / "setup"))
  theirs = ("OSError: [Errno 28] No space left on device for checkpoint step 2: 6.5 MiB needed, "
            "3.0 MiB free: '/w/checkpoints'")
  monkeypatch.setattr(distributed, "allgather_json", lambda mine: [  # process 1 (faked)
      mine, [mine[0], theirs] if mine[0].startswith("the free-space check") else mine])
  with ckpt_lib.Checkpointer(str(tmp_path), async_save=False) as ck:
    with pytest.raises(agreements.OtherProcessFailed, match=(
        rf"^process 1 of 2 failed \({re.escape(theirs)}\) during the free-space check for "
        r"checkpoint step 2; every process stopped$")):
      ck.save(2, state, it, {"step": 2})
    assert os.listdir(ck.dir) == []
