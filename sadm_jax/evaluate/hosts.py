"""Start-up checks that every process of a multi-host evaluation plans and computes alike."""

from __future__ import annotations

import json
from typing import Sequence

import jax
import ml_collections

from sadm_jax import config as config_lib, distributed
from sadm_jax.data import cache as cache_lib
from sadm_jax.data.errors import DataError
from sadm_jax.evaluate import weak_rows
from sadm_jax.evaluate.execute import Evaluation
from sadm_jax.evaluate.passes import Pass
from sadm_jax.evaluate.store import fingerprint


def volume_plan(passes: Sequence[Pass], cache: cache_lib.VolumeCache, splits: dict,
                weak: Sequence[weak_rows.Trained] = ()) -> dict:
  """'<where>[position] <volume>' -> [image, cache entry key (the files' path, size and mtime)]
  of every row of `passes` (where: set/split/run id), of the loaded `splits` and of the weak runs'
  training rows, in order: what every process must plan alike (`check_same_plan`); {} for one."""
  if jax.process_count() == 1:
    return {}
  keys: dict[tuple, str] = {}

  def key(row) -> str:  # each volume's files stat'ed once
    files = (row.img, row.mask, row.seg)
    if files not in keys:
      keys[files] = cache_lib.entry_key(row, cache.cfg)
    return keys[files]
  lists = [(f"{p.set_name}/{p.split}/{rid}", rows) for p in passes for rid, rows in p.rows.items()]
  lists += list(splits.items()) + [(f"{t.split} ({t.run_id})", t.volumes) for t in weak]
  return {f"{where}[{i}] {row.name}": [row.img, key(row)]
          for where, rows in lists for i, row in enumerate(rows)}


def check_same_plan(plan: dict, data_dir: str) -> None:
  """Every process's `volume_plan` against process 0's (a collective): DataError (one line, the
  same on every process) when one plans other volumes or reads other files under a volume's
  path. Volumes are shared out by position, and results are found by their files' identity."""
  if jax.process_count() == 1:
    return
  digest = fingerprint(plan)
  if len(set(distributed.allgather_json(digest))) == 1:
    return
  every = distributed.allgather_json(plan)
  first = every[0]
  for k, other in enumerate(every[1:], start=1):
    only = sorted(set(first) ^ set(other))
    if only:
      where = "process 0" if only[0] in first else f"process {k}"
      raise DataError(
          f"{data_dir}: process {k} of {len(every)} plans other volumes than process 0 (e.g. "
          f"{only[0]} on {where} only, {len(only)} in all): every host must read the same split "
          "CSVs, unchanged while the evaluation starts (with data.skip_invalid, a file one host "
          "cannot read is skipped there only)")
    changed = next((v for v in sorted(first) if first[v] != other[v]), None)
    if changed is not None:
      raise DataError(
          f"{first[changed][0]}: not the same file on process 0 and process {k} of {len(every)} "
          f"(the path, size or modification time of the files of {changed} differ): every host "
          "must read the same data files; give data.data_dir on a file system they all see")


def check_same_settings(evaluation: Evaluation) -> None:
  """Every process's `Evaluation.run_settings` (what a result depends on: the settings, the
  models' weights, the device kind, the JAX release) against process 0's (a collective): a
  ValueError (one line, the same on every process) when they differ, since process 0 would then
  find none of that process's results."""
  if jax.process_count() == 1:
    return
  mine = json.loads(json.dumps(evaluation.run_settings, sort_keys=True, default=str))
  if len(set(distributed.allgather_json(fingerprint(mine)))) == 1:
    return
  every = distributed.allgather_json(mine)
  for k, other in enumerate(every[1:], start=1):
    for rid, want in every[0].items():
      differ = first_difference(want, other.get(rid, {}))
      if differ is not None:
        key, got, first = differ
        raise ValueError(
            f"process {k} of {len(every)} evaluates {rid} with another {key} than process 0 "
            f"({got} vs {first}): every host must load the same "
            "checkpoints, with the same JAX release, on one kind of device (a result is stored "
            "with what it depends on: process 0 could use none of that process's results)")


def first_difference(want: dict, got: dict) -> tuple[str, str, str] | None:
  """(key, got's value, want's value — each as JSON, cut to 120 characters) of the first key, in
  sorted order, whose value differs between two processes' dicts; None when they are equal."""
  key = next((x for x in sorted(set(want) | set(got)) if want.get(x) != got.get(x)), None)
  if key is None:
    return None
  shown = lambda v: json.dumps(v, sort_keys=True)[:120]
  return key, shown(got.get(key)), shown(want.get(key))


def cache_seen(config: ml_collections.ConfigDict, cache: cache_lib.VolumeCache, rows: list
                ) -> None:
  """With several processes, each reads cache entries that others preprocessed (`_cache_share`):
  ConfigError (one line) when some of `rows` are not in this process's cache (each host its own
  data.cache_dir)."""
  if jax.process_count() == 1:
    return
  missing = [r for r in rows if not cache.contains(r)]
  if missing:
    raise config_lib.ConfigError(
        f"--config.data.cache_dir={config_lib.cache_dir(config)}: {len(missing)} of the "
        f"{len(rows)} volume(s) the processes preprocessed in shares are not in this process's "
        f"cache (e.g. {missing[0].img}): with several processes every host must see one cache "
        "folder; set data.cache_dir to a folder on a file system they all see")
