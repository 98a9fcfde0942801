"""A training workdir belongs to one run: resume only with the same config, one process at a time.

On start (`claim`, before any data are loaded or compiled) the config is compared with the one the
workdir's run was started with (`<workdir>/train_config.json`, written at the first start; for a
workdir without it, the newest checkpoint's meta). Any difference in a key that changes the trained
model, the data order or the split refuses the start with one line naming the workdir and every
differing key (old → new). Keys that may change on resume are in `RESUMABLE` below: the training
length, logging/evaluation/checkpoint cadence and checkpoint retention, preprocessing workers and
the cache location, device/parallelism layout, and sections training never reads. A workdir with
no checkpoint (its first start stopped before one, e.g. at a data error) holds nothing to resume:
its saved config binds nothing and the next start replaces it.
`data.loader_workers` may NOT change: grain records the worker count in the saved iterator state
and cannot restore it with another.

`<workdir>/.lock` (written to a temporary file and hard-linked into place, so it exists
complete or not at all, and only once; holding the host, PID and process start time) keeps out a
second process; a lock left by a dead process on the same host is taken over with a warning; it is
removed when the run ends. In a multi-process run only process 0 holds it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import time
from typing import Any, Iterator

import ml_collections

from sadm_jax.train.checkpoint import RunError
from sadm_jax.utils import io

CONFIG_FILE = "train_config.json"
LOCK_FILE = ".lock"
# Keys (or 'section.*') that may differ from the saved config when a run is resumed, and why:
RESUMABLE = (
    "train.num_steps", "train.num_epochs",  # how long to train, not how (the step keys are per step)
    "train.log_every", "train.eval_every",  # logging and validation cadence (validation is
    "train.checkpoint_every", "train.keep_checkpoints",  # deterministic, Q26) and checkpointing
    "train.async_checkpoints", "train.tensorboard",
    "data.num_workers", "data.cache_dir",  # preprocessing processes; the cache is content-keyed
    "data.splits",  # only the prepare stage reads it
    "data.loader_threads", "data.prefetch_batches",  # how records are read, not which
    # (grain's iterator state holds the last index consumed; tests/data/test_cache_pipeline.py)
    "sadm.cddpm_workdir",  # where the frozen cDDPM is now (moved): on resume its step and weights
    # must be those the run recorded (train/loop.py, `check_references`)
    "data.data_dir",  # where the data are now (moved): on resume the training and validation
    # volumes must be those the run recorded (`check_references`: names, labels, brain voxels)
    "mesh.*",  # device count and FSDP layout: the same global batch and update, resharded on restore
    "distributed.*",  # coordinator address etc. of this job (the process count itself is
    # checked on restore: each process's data loader position, `Checkpointer.restore_usable`)
    "model.names",  # what `describe` reports
    "model.encoder.pretrained_workdir",  # read at a fresh start only (the SparK run moved)
    "evaluate.*", "predict.*", "demo.*", "reproduce.*",  # read by other stages only
)


class WorkdirError(RunError):
  """The workdir holds another run, or another process is using it; the message is one line."""


def is_resumable(key: str) -> bool:
  return any(key == k or (k.endswith(".*") and key.startswith(k[:-1])) for k in RESUMABLE)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  """A nested config dict as {'section.key': value} (the keys config comparisons name)."""
  if isinstance(d, dict):
    out = {}
    for k, v in d.items():
      out.update(flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: d}


def _normalised(config: dict) -> dict[str, Any]:
  from sadm_jax import config as config_lib
  try:
    config = config_lib.resolve(ml_collections.ConfigDict(config)).to_dict()
  except (KeyError, AttributeError):  # a partial config (toy tasks): compared as given
    pass
  return flatten(json.loads(json.dumps(config, default=list)))


def config_differences(saved: dict, config: dict) -> list[tuple[str, Any, Any]]:
  """(key, old, new) of every non-resumable key whose resolved value differs; keys the saved
  config does not have (written by an older version) are not compared."""
  old, new = _normalised(saved), _normalised(config)
  return [(k, old[k], new.get(k)) for k in sorted(old)
          if not is_resumable(k) and old[k] != new.get(k)]


def has_checkpoints(workdir: str) -> bool:
  """Whether the run in `workdir` saved anything to resume from (a step, complete, damaged or
  unfinished, or a best checkpoint). A start that failed before that binds the workdir to nothing."""
  return any(os.path.isdir(d) and bool(os.listdir(d))
             for d in (os.path.join(workdir, "checkpoints"), os.path.join(workdir, "best")))


def saved_config(workdir: str) -> tuple[dict | None, str]:
  """(config, where it came from) of the run in `workdir`, or (None, '') for a fresh workdir."""
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    try:
      with open(path, encoding="utf-8") as f:
        return json.load(f), path
    except ValueError as e:
      raise WorkdirError(f"{path}: unreadable ({e}); restore it, or delete it to compare with the "
                         "newest checkpoint's config") from None
  ckpt_dir = os.path.join(workdir, "checkpoints")
  steps = sorted((int(n) for n in (os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else ())
                  if n.isdigit()), reverse=True)
  for step in steps:
    meta = os.path.join(ckpt_dir, str(step), "meta", "metadata")
    try:
      with open(meta, encoding="utf-8") as f:
        return json.load(f)["config"], meta
    except (OSError, ValueError, KeyError):
      continue  # a damaged step: the checkpointer deals with it
  return None, ""


def _show(v: Any) -> str:
  return json.dumps(v) if not isinstance(v, str) else repr(v)


def check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises WorkdirError when `workdir` holds a run whose config differs in a non-resumable key.

  A workdir without checkpoints holds nothing to resume (its run stopped before the first one,
  e.g. at a data error): its saved config binds nothing and is replaced by this start's.
  """
  if not has_checkpoints(workdir):
    return
  saved, where = saved_config(workdir)
  if saved is None:
    return
  diffs = config_differences(saved, config.to_dict())
  if diffs:
    shown = "; ".join(f"{k} {_show(a)} → {_show(b)}" for k, a, b in diffs)
    raise WorkdirError(
        f"{workdir}: holds a run started with another config ({shown}); these keys cannot change "
        f"on resume (saved in {os.path.relpath(where, workdir)}): use a new workdir")


# ---- the lock ----

def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux), to tell a reused PID apart."""
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(holder: dict) -> bool:
  pid = int(holder.get("pid", -1))
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  except (OverflowError, ValueError):
    return False
  start = holder.get("start")
  return start is None or _start_time(pid) in (None, start)


def _read_lock(path: str) -> dict | None:
  for _ in range(10):  # a lock being written right now is briefly empty
    try:
      with open(path, encoding="utf-8") as f:
        return json.load(f)
    except FileNotFoundError:
      return {}
    except (OSError, ValueError):
      time.sleep(0.1)
  return None


def _acquire(path: str, workdir: str) -> None:
  me = {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
  for _ in range(5):
    try:
      _create_exclusive(path, json.dumps(me))
    except FileExistsError:
      holder = _read_lock(path)
      if holder == {}:
        continue  # released meanwhile
      if holder is None:
        raise WorkdirError(f"{workdir}: locked by an unreadable {path}; delete it if no run is "
                           "using this workdir") from None
      if holder.get("host") == me["host"] and not _alive(holder):
        logging.warning("%s: taking over the stale lock of process %s on %s (started %s), which "
                        "is no longer running", workdir, holder.get("pid"), holder.get("host"),
                        holder.get("since"))
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
        continue
      raise WorkdirError(
          f"{workdir}: in use by process {holder.get('pid')} on host {holder.get('host')} "
          f"(since {holder.get('since')}; lock {path}); wait for it to end or use another "
          "workdir") from None
    return
  raise WorkdirError(f"{workdir}: could not take the lock {path}")


def _create_exclusive(path: str, text: str) -> None:
  """Creates `path` holding `text`, complete or not at all; FileExistsError when it exists.

  The text goes to a temporary file that is then hard-linked to `path` (atomic, and exclusive
  like O_EXCL): a process killed while taking the lock leaves no empty lock that would refuse
  every later start as unreadable. Where the file system has no hard links, O_EXCL and a write.
  """
  fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                             dir=os.path.dirname(path))
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.chmod(tmp, 0o644)
    try:
      os.link(tmp, path)
      return
    except FileExistsError:
      raise
    except OSError:  # no hard links here (e.g. some network or FUSE file systems)
      pass
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
  fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    f.write(text)


def _release(path: str) -> None:
  holder = _read_lock(path)
  if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds `<workdir>/.lock` for the duration of the block."""
  path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
  _acquire(path, workdir)
  try:
    yield
  finally:
    _release(path)


@contextlib.contextmanager
def claim(config: ml_collections.ConfigDict, workdir: str) -> Iterator[None]:
  """Owns `workdir` for a training run of `config`: lock (process 0), config check, saved config.

  Raises WorkdirError (one line) before anything is written or loaded. `loop.train` claims,
  then builds its task.
  """
  import jax
  workdir = os.path.abspath(workdir)
  primary = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  with lock(workdir) if primary else contextlib.nullcontext():
    check_config(config, workdir)
    if primary and not (os.path.exists(os.path.join(workdir, CONFIG_FILE))
                        and has_checkpoints(workdir)):
      io.write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())
    yield
