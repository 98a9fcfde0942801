"""Validate every split under DATA_DIR, preprocess and cache it, write a summary (plain arguments; the stage is `config.run_prepare`)."""

from __future__ import annotations

import logging
import os
import time

from typing import Callable, Sequence

import numpy as np

from sadm_jax.data import cache as cache_lib
from sadm_jax.data import layout, nifti, splits as splits_lib
from sadm_jax.data.preprocess import PreprocessConfig
from sadm_jax.utils import io


def load_valid_splits(data_dir: str, names: Sequence[str] | None = None, *, modality: str = "t1",
                      clean: bool = True, num_workers: int = 0, skip_invalid: bool = False,
                      validated: Callable[[splits_lib.Row], bool] | None = None):
  """Reads, cleans and validates splits; returns (root, {split: rows}, report, skipped).

  `names` () or None = every known split under `data_dir`. Every row of every requested split is
  checked before any work. Invalid rows raise one DataProblems error listing all of them, unless
  `skip_invalid` (then they are logged and dropped, and listed in `skipped`). Rows for which
  `validated(row)` is True are not read again (e.g. `VolumeCache.contains`: a cache entry is keyed
  by the files' identity and written only for a row that passed this validation).
  """
  root = layout.resolve_data_root(data_dir)
  logging.info("DATA_DIR %s", root.describe())
  if not names:
    unknown = root.unknown_split_files()
    if unknown:
      logging.warning("%s: %s not a known split name and ignored (expected e.g. IXI_train_fold0.csv"
                      ", Brats21_test.csv; names are case-sensitive)", root.splits_dir,
                      ", ".join(unknown) + (" is" if len(unknown) == 1 else " are"))
  names = list(names or root.available_splits())
  splits, report = splits_lib.load_splits(root, names, modality, clean=bool(clean))
  bad = invalid_rows([r for rows in splits.values() for r in rows], num_workers, validated)
  problems = [p for found in bad.values() for p in found]
  bad_keys = set(bad)
  skipped: dict[str, list[str]] = {}
  if problems and not skip_invalid:
    nifti.raise_problems(problems, f"invalid data under {root.data_dir} "
                                   "(use --config.data.skip_invalid=True to skip these rows)")
  for p, msg in problems:
    logging.warning("skipping invalid row: %s: %s", p, msg)
  for name, rows in splits.items():
    skipped[name] = [r.name for r in rows if file_key(r) in bad_keys]
    splits[name] = [r for r in rows if file_key(r) not in bad_keys]
  return root, splits, report, skipped


def file_key(row: splits_lib.Row) -> tuple:
  """What makes a row valid or invalid: its files and data set (not its name or split)."""
  return (row.img, row.mask, row.seg, row.dataset)


def invalid_rows(rows: Sequence[splits_lib.Row], num_workers: int = 0,
                 validated: Callable[[splits_lib.Row], bool] | None = None
                 ) -> dict[tuple, list[tuple[str, str]]]:
  """{`file_key`: its (path, problem) list} of the invalid rows among `rows`, each file key read
  once, in order; rows for which `validated(row)` is True are not read (known to be valid)."""
  unique: dict[tuple, splits_lib.Row] = {}
  for r in rows:
    unique.setdefault(file_key(r), r)
  keys = [k for k in unique if validated is None or not validated(unique[k])]
  bad = nifti.validate_rows([unique[k] for k in keys], num_workers=num_workers)
  return {keys[i]: bad[i] for i in sorted(bad)}


def why_empty(name: str, hygiene, skipped: dict) -> str:
  """Why split `name` has no row left after `load_valid_splits` (hygiene: its HygieneReport;
  skipped: split -> invalid rows skipped)."""
  dropped, bad = hygiene.dropped.get(name, 0), len(skipped.get(name, ()))
  total = dropped + bad + len(hygiene.duplicates.get(name, ()))
  why = []
  if dropped:
    others = ", ".join(sorted(hygiene.overlaps.get(name, {})))
    why.append(f"{dropped} of its {total} rows are in {others} too and were kept there only "
               "(test > val > train, Q17)")
  if bad:
    why.append(f"{bad} of its {total} rows are invalid and were skipped (data.skip_invalid)")
  return "; ".join(why) or "no rows"


def prepare(data_dir: str, workdir: str, cfg: PreprocessConfig, cache_dir: str,
            names: Sequence[str] | None = None, *, modality: str = "t1", clean: bool = True,
            num_workers: int = 0, skip_invalid: bool = False) -> dict:
  """Validates, preprocesses and caches every split; prints and writes `prepare_summary.json`."""
  start = time.time()
  root, splits, report, skipped = load_valid_splits(
      data_dir, names, modality=modality, clean=clean, num_workers=num_workers,
      skip_invalid=skip_invalid)
  unique = {}  # by cache entry: an image listed with other label files is another entry
  for rows in splits.values():
    for r in rows:
      unique.setdefault(_files(r), r)
  rows = list(unique.values())
  cache = cache_lib.VolumeCache(cache_dir, cfg)
  n_cached_before = sum(cache.contains(r) for r in rows)
  metas = cache_lib.ensure_cached(rows, cache_dir, cfg, num_workers=num_workers,
                                  warn_mixed=False)  # the summary prints it (`warnings`)
  by_files = {_files(r): m for r, m in zip(rows, metas)}
  summary = {
      "data_dir": root.data_dir, "layout": root.layout, "cache_dir": cache.root,
      "preprocess": cfg.key(), "clean_splits": bool(clean),
      "volumes_computed": len(rows) - n_cached_before, "volumes_cached_before": n_cached_before,
      "seconds": round(time.time() - start, 2), "splits": {},
  }
  for name, rows_ in splits.items():
    lesion = np.array([by_files[_files(r)]["lesion_voxels"] for r in rows_], dtype=np.int64)
    resampled = sum(by_files[_files(r)]["resampled_to_1mm"] for r in rows_)
    summary["splits"][name] = {
        "volumes": len(rows_), "lesion_voxels_total": int(lesion.sum()),
        "lesion_voxels_mean": float(lesion.mean()) if len(rows_) else 0.0,
        "volumes_with_lesion": int((lesion > 0).sum()), "resampled_to_1mm": int(resampled),
        "invalid_skipped": len(skipped.get(name, [])), **report.summary(name),
        "orientations": cache_lib.orientation_counts([by_files[_files(r)] for r in rows_]),
    }
  summary["orientations"] = cache_lib.orientation_counts(metas)
  summary["warnings"] = [w for w in (cache_lib.mixed_orientations(metas),) if w]
  os.makedirs(workdir, exist_ok=True)
  io.write_json(os.path.join(workdir, "prepare_summary.json"), summary)
  print(format_summary(summary))
  return summary


def _files(row: splits_lib.Row) -> tuple:
  """The files a cache entry is made of (`cache.entry_key` hashes their identity)."""
  return row.img, row.mask, row.seg


def format_summary(summary: dict) -> str:
  lines = [f"DATA_DIR {summary['data_dir']} ({summary['layout']} layout); cache {summary['cache_dir']}",
           f"{summary['volumes_computed']} volume(s) preprocessed, "
           f"{summary['volumes_cached_before']} already cached, {summary['seconds']} s",
           f"{'split':<18}{'volumes':>8}{'w/ lesion':>10}{'lesion vox':>12}{'dups':>6}"
           f"{'dropped':>8}{'skipped':>8}  overlaps"]
  for name, s in summary["splits"].items():
    ov = ", ".join(f"{k}:{v}" for k, v in s["overlaps"].items()) or "-"
    lines.append(f"{name:<18}{s['volumes']:>8}{s['volumes_with_lesion']:>10}"
                 f"{s['lesion_voxels_total']:>12}{s['duplicate_rows']:>6}{s['dropped']:>8}"
                 f"{s['invalid_skipped']:>8}  {ov}")
  lines += [f"WARNING: {w}" for w in summary.get("warnings", [])]
  return "\n".join(lines)
