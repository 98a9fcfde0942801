"""Atomic writes: complete file or the old one, never a partial file; normal permissions."""

import os
import stat

import numpy as np
import pytest

from sadm_jax.utils import io


def test_atomic_write_replaces_and_keeps_old_on_error(tmp_path):
  p = tmp_path / "a.json"
  io.write_json(p, {"x": 1})
  assert p.read_text() == '{\n  "x": 1\n}\n'
  mode = stat.S_IMODE(os.stat(p).st_mode)
  assert mode & 0o044, oct(mode)  # readable by group/others (subject to umask), not 0600
  with pytest.raises(RuntimeError):
    with io.atomic_path(p) as tmp:
      with open(tmp, "w") as f:
        f.write("partial")
      raise RuntimeError("killed mid-write")
  assert p.read_text() == '{\n  "x": 1\n}\n'
  assert os.listdir(tmp_path) == ["a.json"]


def test_save_npy_and_png(tmp_path):
  io.save_npy(tmp_path / "a.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
  np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(6).reshape(2, 3))
  io.write_png(tmp_path / "a.png", np.zeros((4, 5, 3), np.uint8))
  assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  from PIL import Image
  rgb = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
  io.write_png(tmp_path / "c.png", rgb)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "c.png")), rgb)  # lossless
  with pytest.raises(TypeError, match="expected uint8"):
    io.write_png(tmp_path / "b.png", np.zeros((4, 5)))


def test_a_refused_write_names_the_target_and_leaves_nothing(tmp_path):
  """A full disk at write or fsync (an OSError without a file name) is reported with the path the
  caller asked for; no temporary file stays behind and an existing file is untouched."""
  import errno
  target = tmp_path / "out.json"
  target.write_text("old")
  with pytest.raises(OSError) as e:
    with io.atomic_path(target) as tmp:
      with open(tmp, "w") as f:
        f.write("half")
      raise OSError(errno.ENOSPC, "No space left on device")
  assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(target))
  assert os.listdir(tmp_path) == ["out.json"] and target.read_text() == "old"


def test_file_in_the_way_and_probe_writable(tmp_path):
  f = tmp_path / "afile"
  f.write_text("x")
  assert io.file_in_the_way(tmp_path) is None
  assert io.file_in_the_way(tmp_path / "new" / "deeper") is None  # can be created
  assert io.file_in_the_way(f) == str(f)  # the path itself
  assert io.file_in_the_way(f / "sub" / "dir") == str(f)  # an ancestor
  io.probe_writable(tmp_path / "made")
  assert os.listdir(tmp_path / "made") == []  # created, probe removed
  with pytest.raises(OSError):
    io.probe_writable(f / "sub")


def test_an_unfinished_write_names_its_target(tmp_path):
  """`unfinished_target` reads back the name `atomic_path` gave its temporary file (what a
  killed writer leaves), and nothing else."""
  for target, suffix in (("v1_montage.png", ".png"), ("a.b_anomaly.nii.gz", ".nii.gz"),
                         ("x.json", "")):
    with io.atomic_path(tmp_path / target, suffix=suffix) as tmp:
      assert io.unfinished_target(os.path.basename(tmp)) == target
  for name in ("v1_montage.png", ".hidden", "x.tmp", ".x.tmp"):
    assert io.unfinished_target(name) is None


def test_remove_abandoned_takes_only_old_temporaries(tmp_path):
  """What killed writers left (an `atomic_path` temporary file, a cache entry in the making)
  goes once it is older than any writer could be; younger ones (another host may be writing
  them), finished files and anything else stay."""
  import time
  old = time.time() - io.ABANDONED_AFTER_S - 60
  sub = tmp_path / "a" / "b"
  sub.mkdir(parents=True)
  with io.atomic_path(sub / "rec.json") as tmp:  # the real name atomic_path gives
    killed = os.path.basename(tmp)
  files = {"old_tmp": sub / killed, "young_tmp": tmp_path / ".x.json.abc123.tmp",
           "finished": sub / "rec.json", "other_hidden": tmp_path / ".notes", "plain": sub / "y.tmp"}
  for p in files.values():
    p.write_text("x")
  entry, young_entry = tmp_path / ".tmp-k1", tmp_path / ".tmp-k2"
  for d in (entry, young_entry):
    d.mkdir()
    (d / "image.npy").write_text("x")
  for p in (files["old_tmp"], files["finished"], files["other_hidden"], files["plain"], entry):
    os.utime(p, (old, old))
  assert io.remove_abandoned(str(tmp_path), recursive=False) == 1  # the top-level entry only
  assert not entry.exists() and young_entry.exists() and files["old_tmp"].exists()
  assert io.remove_abandoned(str(tmp_path)) == 1
  assert not files["old_tmp"].exists()
  assert all(p.exists() for k, p in files.items() if k != "old_tmp")
  assert io.remove_abandoned(str(tmp_path / "missing")) == 0
