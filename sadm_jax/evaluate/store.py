"""Resumable per-volume results: one JSON (and, for val passes, one .npz map) per run, split and volume."""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from typing import Any, Iterator, Sequence

import numpy as np

from sadm_jax.utils import io

# 3: maps in the .npz files are slice-major [D, H, W] (were [H, W, D]).
# 4: records' ⌈Dice⌉ of lesion-free volumes (1), the exact search's "predict everything"
#    candidate, NaN FPR without brain voxels, faithful dice_at_t_fpr*, DRAEM hue as imgaug's.
# 5: a slice's detection label is lesion inside the brain (default mode), as every other metric.
CACHE_VERSION = 5


def fingerprint(obj: Any) -> str:
  """sha256 (16 hex digits) of `obj` as sorted JSON: what a stored result depends on."""
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def safe(name: str) -> str:
  """A volume name usable as a file name."""
  return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


class NotShared(ValueError):
  """A result or file another process wrote to the store is not there for this one: the
  workdir is not on one file system every host sees (the message is one line naming the file)."""


def not_shared(path: str, what: str) -> NotShared:
  """NotShared for `path`: `what` (e.g. 'missing after process 0 wrote it')."""
  return NotShared(f"{path}: {what}: every process of a multi-host evaluation reads the others' "
                   "results from its workdir's eval/, so give every host the same --workdir on a "
                   "file system they all see")


def _readable_map(npz: str, fp: str) -> bool:
  """Whether a val map file opens, holds the arrays `Store.volumes` reads and was written with
  the record of fingerprint `fp` (not by a run of other settings killed before its record)."""
  try:
    with np.load(npz) as z:
      return {"anomaly", "gt", "mask", "fingerprint"} <= set(z.files) and \
          str(z["fingerprint"]) == fp
  except (OSError, ValueError, EOFError, zipfile.BadZipFile):
    return False


class Store:
  """Per-volume results under `<workdir>/eval/<method>/<anomalies>/<fold>/<set>/<split>/`.

  A result counts as done when its JSON exists with the expected fingerprint (and, for val passes,
  its .npz with the same one); the JSON is written last. Processes share the store (a shared file
  system for several hosts, like the checkpoints), so any process count reuses what any other
  computed.
  """

  def __init__(self, workdir: str):
    self.root = os.path.join(os.path.abspath(workdir), "eval")
    # the temporary files of writes killed hours ago (younger ones may be another host's at work)
    io.remove_abandoned(self.root)

  def paths(self, run, set_name: str, split: str, name: str) -> tuple[str, str]:
    """(record .json, map .npz) of one volume of one run."""
    d = os.path.join(self.root, run.method, run.train_anomalies, run.fold, set_name, split)
    return os.path.join(d, f"{safe(name)}.json"), os.path.join(d, f"{safe(name)}.npz")

  def read(self, run, set_name: str, split: str, name: str, fp: str,
           with_map: bool = False) -> dict | None:
    """The stored record if it is complete and has fingerprint `fp`, else None."""
    path, npz = self.paths(run, set_name, split, name)
    if not os.path.isfile(path) or (with_map and not _readable_map(npz, fp)):
      return None  # a missing, damaged (truncated by a disk fault) or other map: computed again
    try:
      with open(path) as f:
        rec = json.load(f)
    except (OSError, ValueError):
      return None
    return rec if rec.get("fingerprint") == fp else None

  def discard(self, run, set_name: str, split: str, name: str) -> None:
    """Removes a volume's record before files it vouches for are replaced (its map, the report's
    NIfTI/PNG files): a run killed in between leaves no record, never one of other files."""
    try:
      os.remove(self.paths(run, set_name, split, name)[0])
    except FileNotFoundError:
      pass

  def write(self, run, set_name: str, split: str, rec: dict,
            arrays: dict[str, np.ndarray] | None = None) -> None:
    """Writes the map arrays (if any), then the record (its presence marks the volume done)."""
    path, npz = self.paths(run, set_name, split, rec["name"])
    self.discard(run, set_name, split, rec["name"])
    if arrays is not None:
      with io.atomic_path(npz, suffix=".npz") as tmp:
        np.savez(tmp, **arrays, fingerprint=np.asarray(rec["fingerprint"]))
    io.write_json(path, rec)

  def volumes(self, run, set_name: str, split: str, names: Sequence[str]
              ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(map, labels, mask) [D, H, W] of each volume of `names` of a val pass, read back from its
    .npz file one at a time (a threshold search pools their voxels without holding every whole
    map at once)."""
    for name in names:
      with np.load(self.paths(run, set_name, split, name)[1]) as z:
        arrays = z["anomaly"], z["gt"], z["mask"]
      yield arrays
      del arrays  # (not held while the next one is read)

  def shared(self, name: str) -> str:
    """Path of a file every process reads after process 0 wrote it (thresholds, counters)."""
    return os.path.join(self.root, name)

  def read_shared(self, name: str, writer: str = "process 0") -> dict:
    """The JSON `shared(name)` that `writer` wrote; NotShared (one line) when this process
    cannot read it."""
    path = self.shared(name)
    try:
      with open(path, encoding="utf-8") as f:
        return json.load(f)
    except FileNotFoundError:
      raise not_shared(path, f"missing after {writer} wrote it") from None
    except (OSError, ValueError) as e:
      why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
      raise not_shared(path, f"unreadable after {writer} wrote it ({why})") from None
