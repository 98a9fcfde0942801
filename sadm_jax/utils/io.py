"""Atomic file writes (temp file + rename) so nothing is ever left half-written, and the up-front
checks that a directory can be written at all."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
  """Yields a temporary path in the target's directory; renames it onto `path` on success.

  On any exception the temporary file is removed and `path` is left untouched.
  `suffix` lets writers that insist on an extension (e.g. nibabel's `.nii.gz`) see one.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp" + suffix,
                             dir=directory)
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
      # e.g. a full disk at write/fsync:
      raise OSError(e.errno, e.strerror, path) from e  # name the file the caller asked for
    raise


# `atomic_path`'s temporary file: `.<target name>.<mkstemp's random part>.tmp<suffix>`.
_TEMPORARY = re.compile(r"\.(.+)\.[^.]+\.tmp.*")


def unfinished_target(name: str) -> str | None:
  """The file name an `atomic_path` temporary file called `name` was to become (such a file is
  left only by a writer killed before its rename), or None when `name` is not one."""
  m = _TEMPORARY.fullmatch(name)
  return m.group(1) if m else None


ABANDONED_AFTER_S = 6 * 3600  # a temporary file or folder this old has no writer left


def remove_abandoned(root: str, recursive: bool = True, older_than_s: float = ABANDONED_AFTER_S
                     ) -> int:
  """Removes under `root` what killed writers left (SIGKILL, the OOM killer, a lost node):
  `atomic_path`'s temporary files and `.tmp-*` folders (the preprocessing cache's entries in
  the making) last changed more than `older_than_s` ago. Younger ones may belong to a writer at
  work on this or another host, and stay; nothing else is touched. Returns how many it removed.
  """
  import shutil
  import time
  cutoff, removed = time.time() - older_than_s, 0
  for directory, dirs, files in os.walk(root):
    for name in [d for d in dirs if d.startswith(".tmp-")]:
      dirs.remove(name)  # (not walked into)
      path = os.path.join(directory, name)
      with contextlib.suppress(OSError):  # (gone already; a read-only store: housekeeping only)
        if os.stat(path).st_mtime < cutoff:
          shutil.rmtree(path, ignore_errors=True)  # (another process may remove it too)
          removed += 1
    for name in files:
      if unfinished_target(name) is None:
        continue
      path = os.path.join(directory, name)
      with contextlib.suppress(OSError):
        if os.stat(path).st_mtime < cutoff:
          os.remove(path)
          removed += 1
    if not recursive:
      break
  return removed


def file_in_the_way(path: str | os.PathLike) -> str | None:
  """The file that keeps `path` from being (or becoming) a directory: `path` itself or its nearest
  existing ancestor, when that is not a directory; None when `path` is or can become one."""
  node = os.path.abspath(path)
  while not os.path.exists(node):
    node = os.path.dirname(node)
  return None if os.path.isdir(node) else node


def probe_writable(directory: str | os.PathLike) -> None:
  """Creates `directory` if missing and writes (then removes) a probe file in it; raises the
  OSError of a directory that cannot be created or written."""
  os.makedirs(directory, exist_ok=True)
  fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
  os.close(fd)
  os.remove(probe)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Atomically writes `data` to `path`."""
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
  """Atomically writes UTF-8 `text` to `path`."""
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Atomically writes `obj` as indented JSON."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
  """Atomically saves one array as an uncompressed `.npy` (memory-mappable, no pickle)."""
  with atomic_path(path, suffix=".npy") as tmp:
    with open(tmp, "wb") as f:
      np.save(f, np.ascontiguousarray(array), allow_pickle=False)
      f.flush()
      os.fsync(f.fileno())


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Atomically writes a uint8 [H, W] (grey) or [H, W, 3] (RGB) array as PNG.

  zlib level 1: the demo montage (528 wide, 1130 high, RGB) is written in 20 ms instead of Pillow's
  default level 6's 55 ms, at the same size (353 vs 354 KiB; benchmarks/png_write.py); PNG is
  lossless at every level.
  """
  from PIL import Image  # local import: only plotting code needs Pillow

  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise TypeError(f"write_png({path}): expected uint8 image, got {image.dtype}")
  with atomic_path(path, suffix=".png") as tmp:
    Image.fromarray(image).save(tmp, format="PNG", compress_level=1)


def _json_default(obj: Any) -> Any:
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
