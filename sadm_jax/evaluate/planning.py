"""Planning an evaluation: its runs (method × fold), the checkpoints they need, their rows and protocol."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Sequence

import ml_collections

from sadm_jax import config as config_lib
from sadm_jax.data import prepare
from sadm_jax.data.splits import Row
from sadm_jax.evaluate import inference, report

METHODS = ("threshold", "cddpm", "sadm")
DRAEM_SET = "DRAEM"  # IXI val/test volumes with deterministic DRAEM anomalies (paper Table 1)
SADM_MODES = {"draem": "draem", "brats": "Brats21", "atlas": "ATLAS_v2"}


@dataclasses.dataclass(frozen=True)
class EvalRun:
  """One row family of the report: a method with its models, on one fold.

  method: 'threshold' | 'cddpm' | 'sadm' | 'unet' (a SADM run whose SegUnet ignores the residual).
  train_anomalies: 'none' | 'draem' | 'Brats21' | 'ATLAS_v2'.
  fold: label, e.g. 'fold0' (IXI folds) or 'repeat2' (weak supervision, Q18).
  data_fold: the IXI fold whose val/train splits the run uses.
  cddpm_key: weights fingerprint of the cDDPM it uses (Models.cddpms), '' for none.
  held_out: weak supervision only: (data set, sadm.mode, sadm.weak_train_rows, sadm.weak_val_rows);
    the SegUnet's training rows of <data set>_val are excluded from τ tuning on that set (Q15).
  """
  method: str
  train_anomalies: str
  fold: str
  data_fold: int
  cddpm_workdir: str = ""
  sadm_workdir: str = ""
  cddpm_key: str = ""
  combination: str = "residual"
  held_out: tuple = ()

  @property
  def id(self) -> str:
    return f"{self.method}/{self.train_anomalies}/{self.fold}"



def _check_grid(model_config, config, what: str) -> None:
  mine = config_lib.preprocess_config(config).key()
  theirs = config_lib.preprocess_config(model_config).key()
  if mine != theirs:
    raise ValueError(f"{what} was trained on another preprocessing/grid "
                     f"({dict(model_config.data.preprocess)}) than this evaluation "
                     f"({dict(config.data.preprocess)}); set --config.data.preprocess.* to match")


def _fold_label(prefix: str, value: int, taken: set) -> str:
  label = f"{prefix}{value}"
  i = 1
  while label in taken:
    label = f"{prefix}{value}_{i}"
    i += 1
  taken.add(label)
  return label


class Models:
  """Every checkpoint the evaluation needs, loaded once before any volume (Q5).

  cDDPMs are keyed by the fingerprint of their weights: a SADM run whose frozen cDDPM is
  bit-identical to the evaluated cDDPM (no Q6 drift) shares its reconstructions.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.cddpms: dict[str, inference.CDDPMInference] = {}
    self.cddpm_configs: dict[str, ml_collections.ConfigDict] = {}
    self.segnets: dict[str, inference.SegmentationInference] = {}
    self.sadm_configs: dict[str, ml_collections.ConfigDict] = {}
    # SADM workdir -> what it recorded of its data (`pipeline.data_identity`), None if nothing
    self.sadm_data: dict[str, dict | None] = {}
    self._by_workdir: dict[str, str] = {}
    self._sadm_cddpm: dict[str, str] = {}
    # SADM workdir -> where its frozen cDDPM was opened (`open_run`: the recorded relative place
    # or the absolute one), '' for a run without one
    self.frozen_cddpm_workdirs: dict[str, str] = {}
    self.opened: list = []  # the cDDPM runs opened (a SADM run's frozen cDDPM is reused from them)

  def _hold(self, run):
    """Keeps an opened cDDPM run for reuse (`open_run(opened=...)`); returns it."""
    if all(r is not run for r in self.opened):
      self.opened.append(run)
    return run

  def add_cddpm(self, model_config, variables, what: str) -> str:
    """Registers a cDDPM (deduplicated by weights); returns its key."""
    key = inference.variables_fingerprint(variables)
    if key not in self.cddpms:
      _check_grid(model_config, self.config, what)
      self.cddpms[key] = inference.cddpm_inference(model_config, variables, self.config, key)
      self.cddpm_configs[key] = model_config
      logging.info("%s loaded (weights %s)", what, key)
    return key

  def cddpm(self, workdir: str) -> str:
    """Key of the cDDPM of a stage-I workdir."""
    workdir = os.path.abspath(workdir)
    if workdir not in self._by_workdir:
      run = self._hold(inference.load_cddpm(workdir, opened=self.opened))
      self._by_workdir[workdir] = self.add_cddpm(run.config, inference.cddpm_variables(run),
                                                 f"cDDPM {workdir}")
    return self._by_workdir[workdir]

  def sadm(self, workdir: str) -> tuple[ml_collections.ConfigDict, str]:
    """(saved SADM config, key of its frozen cDDPM or '') of a stage-II workdir."""
    workdir = os.path.abspath(workdir)
    if workdir not in self.segnets:
      ckpt = inference.load_sadm(workdir, opened=self.opened)
      if ckpt.run.cddpm is not None:
        self._hold(ckpt.run.cddpm)
      self.frozen_cddpm_workdirs[workdir] = ckpt.run.cddpm.workdir if ckpt.run.cddpm else ""
      _check_grid(ckpt.config, self.config, f"SADM run {workdir}")
      self.segnets[workdir] = inference.segnet_inference(ckpt, self.config)
      self.sadm_configs[workdir] = ckpt.config
      self.sadm_data[workdir] = ckpt.run.run_meta.get("data") or None
      self._sadm_cddpm[workdir] = (self.add_cddpm(ckpt.cddpm_config, ckpt.cddpm,
                                                  f"cDDPM frozen in {workdir}")
                                   if ckpt.uses_residual else "")
      logging.info("SADM run %s loaded (SegUnet weights %s)", workdir,
                   self.segnets[workdir].fingerprint)
    return self.sadm_configs[workdir], self._sadm_cddpm[workdir]

  def fingerprint(self, run: EvalRun) -> dict:
    out = {}
    if run.cddpm_key:
      out["cddpm_weights"] = run.cddpm_key
    if run.sadm_workdir:
      out["segnet_weights"] = self.segnets[run.sadm_workdir].fingerprint
    return out


def _sadm_run(config, models: Models, workdir: str, taken: set) -> EvalRun:
  workdir = os.path.abspath(workdir)
  cfg, cddpm_key = models.sadm(workdir)
  s = cfg.sadm
  mode = str(s.mode)
  if mode not in SADM_MODES:
    raise ValueError(f"SADM run {workdir}: unknown sadm.mode {mode!r}; "
                     f"expected one of {sorted(SADM_MODES)}")
  held_out = ()
  if mode != "draem":
    rows = lambda v: None if v is None else tuple(int(i) for i in v)
    held_out = (SADM_MODES[mode], mode, rows(s.get("weak_train_rows")),
                rows(s.get("weak_val_rows")))
    fold = _fold_label("repeat", int(s.get("repeat", 0)), taken)
  else:
    fold = _fold_label("fold", int(cfg.data.fold), taken)
  return EvalRun(method="sadm" if cddpm_key else "unet", train_anomalies=SADM_MODES[mode],
                 fold=fold, data_fold=int(cfg.data.fold), cddpm_workdir=str(s.cddpm_workdir or ""),
                 sadm_workdir=workdir, cddpm_key=cddpm_key,
                 combination=str(config.evaluate.combination) if cddpm_key else "segmentation",
                 held_out=held_out)


def plan_runs(config: ml_collections.ConfigDict, models: Models) -> list[EvalRun]:
  """The runs of `evaluate.methods`, loading each checkpoint once."""
  ecfg = config.evaluate
  unknown = set(ecfg.methods) - set(METHODS)
  if unknown:
    raise ValueError(f"unknown evaluate.methods {sorted(unknown)}; expected a subset of {METHODS}")
  runs: list[EvalRun] = []
  sadm_runs: list[EvalRun] = []
  if "sadm" in ecfg.methods:
    taken: dict[tuple[str, bool], set] = {}  # fold labels are unique per run id's method/anomalies
    for w in ecfg.sadm_workdirs:
      cfg, cddpm_key = models.sadm(w)
      key = (str(cfg.sadm.mode), bool(cddpm_key))  # (SADM mode, SADM rather than input-only UNet)
      sadm_runs.append(_sadm_run(config, models, w, taken.setdefault(key, set())))
    if not ecfg.sadm_workdirs:
      logging.warning("evaluate.methods has 'sadm' but evaluate.sadm_workdirs is empty: "
                      "no SADM rows")
  if "cddpm" in ecfg.methods:
    # Without evaluate.cddpm_workdir: the SADM runs' own, where `open_run` found them (their
    # saved sadm.cddpm_workdir may be stale: moved together, resumed from elsewhere, relative).
    frozen = lambda r: models.frozen_cddpm_workdirs.get(r.sadm_workdir) or r.cddpm_workdir
    workdirs = [ecfg.cddpm_workdir] if ecfg.cddpm_workdir else \
        list(dict.fromkeys(w for w in map(frozen, sadm_runs) if w))
    if not workdirs:
      logging.warning("evaluate.methods has 'cddpm' but no cDDPM workdir is known: no cDDPM rows")
    taken_c: set = set()
    for w in workdirs:
      w = os.path.abspath(w)
      key = models.cddpm(w)
      f = int(models.cddpm_configs[key].data.fold)
      runs.append(EvalRun("cddpm", "none", _fold_label("fold", f, taken_c), f, cddpm_workdir=w,
                          cddpm_key=key))
  # The baseline on the folds of the models it is compared with (SADM runs, else cDDPMs).
  folds = sorted({r.data_fold for r in sadm_runs or runs}) or [int(config.data.fold)]
  if "threshold" in ecfg.methods:
    runs = [EvalRun("threshold", "none", f"fold{f}", f) for f in folds] + runs
  return runs + sadm_runs


def needed_splits(config, runs: Sequence[EvalRun], available: Sequence[str]
                   ) -> tuple[list, list, bool]:
  """(split names to load, data sets to evaluate, whether the healthy IXI passes run)."""
  ecfg = config.evaluate
  folds = sorted({r.data_fold for r in runs})
  sets = []
  for s in ecfg.test_sets:
    if s == DRAEM_SET:
      ok = "IXI_test" in available and all(f"IXI_val_fold{f}" in available for f in folds)
    else:
      ok = f"{s}_val" in available and f"{s}_test" in available
    if ok:
      sets.append(s)
    else:
      logging.warning("test set %s skipped: its val/test splits are not under data_dir", s)
  ixi = bool(ecfg.include_ixi) and "IXI_test" in available and \
      all(f"IXI_val_fold{f}" in available for f in folds)
  names = []
  if ixi or DRAEM_SET in sets:
    names += [f"IXI_val_fold{f}" for f in folds] + ["IXI_test"]
  if any(r.method == "threshold" for r in runs):
    names += [f"IXI_train_fold{f}" for f in folds]
  for s in sets:
    if s != DRAEM_SET:
      names += [f"{s}_val", f"{s}_test"]
  return list(dict.fromkeys(names)), sets, ixi


def training_rows(run: EvalRun, seen: list[Row]) -> tuple[tuple[int, int], list[Row]]:
  """((start, stop), rows) of `seen`, <set>_val as stage II read it, that a weakly supervised
  run's SegUnet trained on by its saved row ranges (`train.sadm.weak_row_ranges`)."""
  from sadm_jax.train import sadm as sadm_train
  _, mode, train_rows, val_rows = run.held_out
  (start, stop), _ = sadm_train.weak_row_ranges(mode, len(seen), train_rows, val_rows)
  return (start, stop), seen[start:stop]


def val_rows(run: EvalRun, set_name: str, rows: list[Row], stage2: list[Row] | None = None
             ) -> tuple[list[Row], str]:
  """Rows of <set>_val for τ tuning: without the SegUnet's own training rows (Q15).

  The training rows are those stage II used (`train.sadm.weak_row_ranges` on the run's config):
  positions in `stage2`, <set>_val as stage II read it (`stage2_val_rows`; default `rows`), left
  out of `rows` by image — positions in `rows` may differ (cleaning against the test split).
  """
  if run.held_out and run.held_out[0] == set_name:
    (start, stop), used = training_rows(run, rows if stage2 is None else stage2)
    trained = {r.img for r in used}
    keep = [r for r in rows if r.img not in trained]
    if keep:
      return keep, f"{report.TAU_ROWS_HELD_OUT} (rows outside {start}:{stop})"
    logging.warning("%s: no %s_val rows outside its training rows %d:%d; tuning τ on all of them "
                    "(contains training volumes, Q15)", run.id, set_name, start, stop)
    return rows, report.TAU_ROWS_LEAKED
  return rows, "all"


def stage2_val_rows(root, runs: Sequence[EvalRun], sadm_configs: dict, sets: Sequence[str],
                    modality: str, invalid: Callable[[Sequence[Row]], set]
                    ) -> dict[str, list[Row]]:
  """run id -> <set>_val as each weakly supervised run's stage II read it (Q15): that split
  alone, cleaned with the run's own `data.clean_splits`, without its invalid rows (by file key,
  `prepare.file_key`) if the run skipped invalid rows (`data.skip_invalid`) — whichever split
  the evaluation itself skipped them in, or dropped them from by its own cleaning. Cleaning drops
  from val the images it shares with <set>_test (Q17), on disk whether or not that split was
  loaded, so with cleaning on these are the evaluation's positions; with the run's
  `clean_splits=False` they are not. (A weak run trained before stage II cleaned against the test
  split on disk read an uncleaned val: if its val and test share images, its rows here are not the
  ones it trained on; retrain it.)

  root: `layout.DataRoot`; sadm_configs: SADM workdir -> saved config; invalid: rows -> the file
  keys of those that are invalid (`prepare.invalid_rows`).
  """
  from sadm_jax.data import splits as splits_lib
  out = {}
  for r in runs:
    if not r.held_out or r.held_out[0] not in sets:
      continue
    cfg, name = sadm_configs[r.sadm_workdir], f"{r.held_out[0]}_val"
    clean = bool(config_lib.saved_value(cfg, "data", "clean_splits", absent=True))
    rows = splits_lib.load_splits(root, [name], modality, clean=clean)[0][name]
    if config_lib.saved_value(cfg, "data", "skip_invalid"):
      bad = invalid(rows)
      rows = [x for x in rows if prepare.file_key(x) not in bad]
    out[r.id] = rows
  return out


def protocol(config, grid: Sequence[int], spacing: float, cddpm_configs: Sequence = ()) -> dict:
  """How every number of the report was computed (report.md's protocol paragraph).

  cddpm_configs: the saved configs of the evaluated cDDPMs: the ensemble draws the noise kind each
  was trained with (`inference.NoiseSpec`), not the evaluation config's diffusion.noise.
  """
  ecfg = config.evaluate
  noise = "/".join(sorted({str(m.diffusion.noise) for m in cddpm_configs})) or \
      str(config.diffusion.noise)
  return {"threshold_method": str(ecfg.threshold_method),
          "within_brain": not bool(ecfg.faithful_metrics),
          "timesteps": [int(t) for t in config.diffusion.ensemble_timesteps],
          "shared_noise": bool(config.diffusion.shared_noise), "noise": noise,
          "combination": str(ecfg.combination), "residual_mode": str(ecfg.residual_mode),
          "median_size": int(ecfg.median_size), "dtype": str(ecfg.dtype), "grid": list(grid),
          "spacing_mm": float(spacing), "faithful": bool(config.faithful),
          "faithful_metrics": bool(ecfg.faithful_metrics), "seed": int(config.seed)}
