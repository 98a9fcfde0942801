"""The `evaluate` stage: val passes → thresholds → test passes → report, over processes and devices (§4)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from typing import Sequence

import jax
import ml_collections

from sadm_jax import agreements, config as config_lib
from sadm_jax.data import cache as cache_lib, layout, pipeline, prepare
from sadm_jax.data.resample import affine_spacing
from sadm_jax.evaluate import hosts, metrics, records, report, thresholds, weak_rows
from sadm_jax.evaluate.execute import Evaluation
from sadm_jax.evaluate.passes import Pass, check_splits, check_volume_names, test_passes, \
    val_passes
from sadm_jax.evaluate.planning import Models, needed_splits, plan_runs, protocol, \
    stage2_val_rows
from sadm_jax.evaluate.store import not_shared
from sadm_jax.utils import io

FPRS = ((0.01, "t_fpr1"), (0.05, "t_fpr5"), (0.1, "t_fpr10"))


def _stored(evaluation: Evaluation, p: Pass, extras: dict) -> dict[str, list[dict]]:
  """run id -> the records of pass `p`, in row order, read back from the store (all complete)."""
  out = {}
  for r in (r for r in evaluation.runs if r.id in p.rows):
    extra = extras.get((p.set_name, r.id))
    recs = [evaluation.store.read(r, p.set_name, p.split, p.volume_name(row),
                                  evaluation.fingerprint(r, p.kind, extra, row), p.keep_map)
            for row in p.rows[r.id]]
    missing = [row.name for row, rec in zip(p.rows[r.id], recs) if rec is None]
    if missing:
      path = os.path.dirname(evaluation.store.paths(r, p.set_name, p.split, missing[0])[0])
      raise not_shared(path, f"no stored result of {r.id} for {len(missing)} volume(s) "
                       f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}) after "
                       "every process finished its share")
    out[r.id] = recs
  return out


def _pooled_tau(evaluation: Evaluation, run, p: Pass, names: Sequence[str]) -> tuple[float, float]:
  """(pooled Dice at τ, τ) of `run`'s stored val maps of the volumes `names` of pass `p`, read
  one at a time (only the pooled voxels are held: `thresholds.pooled_ranking`)."""
  inside = not evaluation.faithful  # the voxels τ is tuned on (the whole grid when faithful)
  ranked = thresholds.pooled_ranking(
      evaluation.store.volumes(run, p.set_name, p.split, names), within_brain=inside,
      names=names)
  if not ranked.n_pos:  # every τ has Dice 0: the test Dice would be garbage
    raise ValueError(f"{p.set_name}_{p.split}: no lesion voxel in the segmentations of its "
                     f"{len(names)} volume(s){' inside the brain masks' if inside else ''} "
                     f"({run.id}): τ cannot be chosen; check the seg_path column of its CSV, or "
                     "leave the set out of evaluate.test_sets")
  dice_val, tau = thresholds.threshold_of(
      ranked, method=str(evaluation.config.evaluate.threshold_method),
      reference_arithmetic=evaluation.faithful)
  return float(dice_val), float(tau)


def _own_cddpm(evaluation: Evaluation, run, p: Pass):
  """The evaluated cDDPM run with `run`'s cDDPM weights, if it is in pass `p` (a pathological
  val pass: its rows do not depend on the IXI fold, which may differ with a warning, Q17)."""
  return next((c for c in evaluation.runs if c.method == "cddpm" and c.id in p.rows
               and run.cddpm_key and c.cddpm_key == run.cddpm_key), None)


def select_thresholds(evaluation: Evaluation, passes: Sequence[Pass]) -> dict:
  """run id -> {'fpr_thresholds', 'tau': {set: τ}, 'val_dice': {set: pooled Dice},
  'cddpm_val_dice': {set: pooled Dice}} from the val maps.

  'cddpm_val_dice': for a run that tunes τ on held-out rows only (Q15), its own cDDPM's pooled
  Dice on the same rows (τ tuned there), so that the two compare on one set of volumes.
  """
  out: dict[str, dict] = {r.id: {"fpr_thresholds": {}, "tau": {}, "val_dice": {},
                                 "cddpm_val_dice": {}} for r in evaluation.runs}
  for p in passes:
    recs = _stored(evaluation, p, {})
    for r in evaluation.runs:
      names = [x["name"] for x in recs[r.id]]
      if p.kind == "healthy_val":
        t = thresholds.pooled_fpr_thresholds(  # the maps read one at a time
            ((a, None if evaluation.faithful else m)
             for a, _, m in evaluation.store.volumes(r, p.set_name, p.split, names)),
            [f for f, _ in FPRS])
        out[r.id]["fpr_thresholds"] = {name: float(t[f]) for f, name in FPRS}
        continue
      dice_val, tau = _pooled_tau(evaluation, r, p, names)
      out[r.id]["tau"][p.set_name] = tau
      out[r.id]["val_dice"][p.set_name] = dice_val
      held_out = p.how.get(r.id, "all").startswith(report.TAU_ROWS_HELD_OUT)
      cddpm = _own_cddpm(evaluation, r, p) if held_out else None
      if cddpm is not None:
        out[r.id]["cddpm_val_dice"][p.set_name] = _pooled_tau(evaluation, cddpm, p, names)[0]
  return out


def _agree(evaluation: Evaluation, passes: Sequence[Pass]) -> dict:
  """The thresholds process 0 selects from the val `passes`, written to the store and read back
  by every process."""
  path = evaluation.store.shared("thresholds.json")
  with agreements.together("the threshold selection"):
    if jax.process_index() == 0:
      io.write_json(path, select_thresholds(evaluation, passes))
  with agreements.together("reading the thresholds"):  # a host without the shared store fails
    return evaluation.store.read_shared(os.path.basename(path))


def test_extras(passes: Sequence[Pass], chosen: dict) -> dict:
  """(set name, run id) -> what the test pass's records depend on (τ, FPR thresholds)."""
  out = {}
  for p in passes:
    for rid in p.rows:
      fpr = chosen[rid]["fpr_thresholds"]
      out[(p.set_name, rid)] = {"fpr_thresholds": fpr} if p.kind == "healthy_test" else \
          {"tau": chosen[rid]["tau"][p.set_name], "fpr_thresholds": fpr}
  return out


def report_rows(evaluation: Evaluation, vals: Sequence[Pass], tests: Sequence[Pass], chosen: dict,
                extras: dict) -> list[dict]:
  """metrics.csv rows: per data set (IXI first) and run, from the stored records."""
  val = {p.set_name: _stored(evaluation, p, {}) for p in vals}
  test = {p.set_name: _stored(evaluation, p, extras) for p in tests}
  rows = []
  ixi = test.get("IXI")
  for p in tests:
    for r in (r for r in evaluation.runs if r.id in p.rows):
      c, recs = chosen[r.id], test[p.set_name][r.id]
      n_val = len(val[p.set_name][r.id])
      if p.kind == "healthy_test":
        rows.append(records.row(r, "IXI", recs, n_val_volumes=n_val, **c["fpr_thresholds"]))
        continue
      det = float("nan")
      if ixi is not None:
        det = metrics.volume_detection_auroc([x["volume_score"] for x in ixi[r.id]],
                                             [x["volume_score"] for x in recs])
      vp = next(v for v in vals if v.set_name == p.set_name)
      oracle = records.summarise(val[p.set_name][r.id]).get("best_dice", float("nan"))
      same_rows = c.get("cddpm_val_dice", {})
      same_rows = ({"cddpm_val_pooled_dice_same_rows": same_rows[p.set_name]}
                   if p.set_name in same_rows else {})
      rows.append(records.row(r, p.set_name, recs, tau=c["tau"][p.set_name],
                              val_pooled_dice=c["val_dice"][p.set_name], tau_rows=vp.how[r.id],
                              n_val_volumes=n_val, val_best_dice_oracle=oracle,
                              detection_auroc=det, **same_rows, **c["fpr_thresholds"]))
  return rows


def _counts(evaluation: Evaluation, done: list[str]) -> int:
  """Writes this process's computed results; process 0 returns the total over processes."""
  p, n = jax.process_index(), jax.process_count()
  with agreements.together("the count of results"):
    io.write_json(evaluation.store.shared(f"process_{p}-of-{n}.json"), {"computed": done})
  total = 0
  with agreements.together("reading the counts"):  # a host without the shared store fails
    for i in range(n):
      total += len(evaluation.store.read_shared(f"process_{i}-of-{n}.json",
                                                f"process {i}")["computed"])
  return total


def _provenance(evaluation, r, workdir: str) -> dict:
  """What `predict` checks before applying a run's τ: the SegUnet's weights fingerprint (the
  cDDPM's is `cddpm_key`), and each model workdir's path relative to this evaluation's, so that
  an evaluation moved or copied together with its runs still finds them."""
  out = {}
  if r.sadm_workdir:
    out["segnet_key"] = evaluation.models.segnets[r.sadm_workdir].fingerprint
  field = "sadm_workdir" if r.sadm_workdir else "cddpm_workdir" if r.method == "cddpm" else ""
  if field:  # the workdir predict opens (a SADM run finds its own cDDPM: `open_run`)
    out["relative"] = {field: os.path.relpath(os.path.abspath(getattr(r, field)),
                                              os.path.abspath(workdir))}
  return out


def _start(config: ml_collections.ConfigDict, workdir: str):
  """(evaluation, data sets, val passes, test passes, the distinct volumes, the weak runs'
  training rows `weak_rows.Trained`, the volumes still to preprocess): the models loaded, the runs
  planned, the splits checked and this process's share of the weak runs' training rows
  preprocessed (`run` preprocesses the rest once they are verified)."""
  models = Models(config)
  runs = plan_runs(config, models)
  if not runs:
    raise ValueError("nothing to evaluate: no runs (check evaluate.methods and the workdirs)")
  root = layout.resolve_data_root(config.data.data_dir)
  names, sets, ixi = needed_splits(config, runs, root.available_splits())
  if not sets and not ixi:
    healthy = "missing" if config.evaluate.include_ixi else "off (evaluate.include_ixi=False)"
    raise ValueError(f"evaluate.test_sets={tuple(config.evaluate.test_sets)}: none has its val and "
                     f"test splits in {root.splits_dir}, and the healthy IXI passes are {healthy}: "
                     "nothing to evaluate")
  _, splits, hygiene, skipped = config_lib.load_valid_splits(config, names)
  check_splits(root, splits, hygiene, skipped)
  cache_dir = config_lib.cache_dir(config)
  pre = config_lib.preprocess_config(config)
  cache = cache_lib.VolumeCache(cache_dir, pre)
  stage2 = stage2_val_rows(root, runs, models.sadm_configs, sets, str(config.data.modality),
                           _invalid_rows(config, splits, cache))
  vals, tests = val_passes(runs, splits, sets, ixi, stage2), test_passes(runs, splits, sets, ixi)
  check_volume_names(vals + tests)
  weak = weak_rows.trained(runs, stage2, sets, root.split_csv)
  entry = lambda r: (r.img, r.mask, r.seg)  # a row's files make its cache entry (its labels too)
  # by entry: one image listed with other labels in two splits (no data hygiene) is two volumes
  unique = list({entry(r): r for rows in splits.values() for r in rows}.values())
  # The weak runs' training rows first (their check needs them; a refusal should not wait for
  # every other volume's preprocessing).
  first = list({entry(r): r for t in weak for r in t.volumes}.values())
  _cache_share(config, first, cache_dir, pre)
  evaluation = Evaluation(config, workdir, models, runs, splits, cache)
  done = {entry(r) for r in first}
  return evaluation, sets, vals, tests, unique, weak, [r for r in unique if entry(r) not in done]


def _invalid_rows(config: ml_collections.ConfigDict, splits: dict, cache: cache_lib.VolumeCache):
  """rows -> file keys of the invalid ones (`prepare.invalid_rows`), reading only the rows neither
  among the evaluation's valid `splits` nor in `cache`: a weak run's val read with its own cleaning
  may hold rows the evaluation skipped in another split, or dropped by its own cleaning."""
  valid = {prepare.file_key(r) for rows in splits.values() for r in rows}
  known = lambda row: prepare.file_key(row) in valid or cache.contains(row)
  return lambda rows: set(prepare.invalid_rows(rows, int(config.data.num_workers), known))


def _cache_share(config: ml_collections.ConfigDict, rows: list, cache_dir: str, pre) -> None:
  """Preprocesses this process's share of `rows` (p, p + P, ...) into the cache."""
  cache_lib.ensure_cached(rows[jax.process_index()::jax.process_count()], cache_dir, pre,
                          num_workers=config.data.num_workers)


def _write_report(evaluation: Evaluation, workdir: str, sets, vals, tests, chosen: dict,
                  extras: dict, unique, given: ml_collections.ConfigDict, verified: dict) -> int:
  """Process 0: report/ and eval/{config,models}.json from the stored records (the config as
  `given`, faithful placeholders unresolved, like a training run's; a weak run's entry has its
  checked training rows, `verified`: `weak_rows.verify`), and an earlier evaluation's volume
  files that this one does not write removed; returns the number of metrics.csv rows."""
  config, models = evaluation.config, evaluation.models
  rows = report_rows(evaluation, vals, tests, chosen, extras)
  for r in evaluation.runs:
    if r.method == "threshold":
      chosen[r.id]["intensity_median"] = evaluation.intensity_median(r.data_fold)
  probe = evaluation.cache.load(unique[0])
  proto = protocol(config, probe.volume("mask").shape, affine_spacing(probe.affine)[0],
                   list(models.cddpm_configs.values()))
  io.write_json(os.path.join(workdir, "eval", "config.json"), given.to_dict())
  io.write_json(os.path.join(workdir, "eval", "models.json"),
                {"runs": [{"id": r.id, **dataclasses.asdict(r), **chosen.get(r.id, {}),
                           **_provenance(evaluation, r, workdir),
                           **({"training_rows": verified[r.id]} if r.id in verified else {})}
                          for r in evaluation.runs],
                 "test_sets": list(sets), "protocol": proto})
  print(report.write_report(workdir, rows, proto))
  stale = report.remove_stale_outputs(os.path.join(workdir, "report", "volumes"),
                                      evaluation.output_files(tests))
  if stale:
    logging.info("report: removed %d volume file(s) of an earlier evaluation that this one "
                 "does not write", stale)
  return len(rows)


def report_files(workdir: str) -> list[str]:
  """The files an evaluation writes last, from all its results: report/{metrics.csv,
  metrics.json, report.md} and eval/summary.json."""
  return [os.path.join(workdir, "report", n) for n in ("metrics.csv", "metrics.json", "report.md")
          ] + [os.path.join(workdir, "eval", "summary.json")]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates every method of `evaluate.methods`; writes eval/ (per-volume store) and report/.

  Every process evaluates its share of the volumes on its local devices; process 0 selects the
  thresholds (shared through the store) and writes the report. An error on any process stops
  every process at the end of that step (`agreements.together`). Returns the summary.
  """
  given, config = config, config_lib.resolve(config)
  t0 = time.time()
  # A failure on one process only (a volume, split or checkpoint its host cannot read) stops them
  # all (each process opens the runs for itself: `train.checkpoint.Checkpointer(create=False)`).
  with agreements.together("the evaluation's start"):
    evaluation, sets, vals, tests, unique, weak, rest = _start(config, workdir)
    plan = hosts.volume_plan(vals + tests, evaluation.cache, evaluation.splits, weak)
  hosts.check_same_plan(plan, str(config.data.data_dir))  # before reading others' entries
  hosts.check_same_settings(evaluation)
  # Before any τ (and before the other volumes are preprocessed): every process's share of the
  # training rows' cache entries is written, so each reads the same entries.
  with agreements.together("checking the weak runs' training rows"):
    hosts.cache_seen(config, evaluation.cache, [r for t in weak for r in t.volumes])
    table = lambda rows: pipeline.SliceTable.from_rows(evaluation.cache, rows)
    verified = weak_rows.verify(weak, table, evaluation.models.sadm_data)
  with agreements.together("preprocessing the evaluation's volumes"):
    _cache_share(config, rest, config_lib.cache_dir(config), evaluation.cache.cfg)
  with agreements.together("checking the preprocessing cache"):  # every share written
    hosts.cache_seen(config, evaluation.cache, rest)
  for fold in sorted({r.data_fold for r in evaluation.runs if r.method == "threshold"}):
    evaluation.intensity_median(fold)  # before the passes: process 0 computes, the others wait

  if jax.process_index() == 0:  # the passes replace results and volume files: an earlier
    for path in report_files(workdir):  # evaluation's report no longer describes them, gone
      with contextlib.suppress(FileNotFoundError):  # until rewritten (a killed rerun leaves none)
        os.remove(path)
  done, cached = evaluation.run_passes(vals, {}, "val")
  chosen = _agree(evaluation, vals)
  extras = test_extras(tests, chosen)
  more, cached_test = evaluation.run_passes(tests, extras, "test")
  computed = _counts(evaluation, done + more)
  summary = {"rows": 0, "volumes_computed": computed, "volumes_cached": cached + cached_test,
             "processes": jax.process_count(), "devices_per_process": evaluation.mesh.size,
             "report": os.path.join(workdir, "report", "report.md")}
  with agreements.together("the report"):
    if jax.process_index() == 0:
      summary["rows"] = _write_report(evaluation, workdir, sets, vals, tests, chosen, extras, unique,
                                      given, verified)
  summary["seconds"] = round(time.time() - t0, 2)
  if jax.process_index() == 0:
    io.write_json(os.path.join(workdir, "eval", "summary.json"), summary)
    print(f"evaluate: {summary['volumes_computed']} volume result(s) computed, "
          f"{summary['volumes_cached']} reused, {summary['seconds']} s "
          f"({summary['processes']} process(es) × {summary['devices_per_process']} device(s))")
  return summary
