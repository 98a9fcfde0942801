"""The `evaluate` stage: val → τ, test → metrics per method × fold × data set; resumable (§4)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from typing import Any, Sequence

import ml_collections
import numpy as np

from sadm_jax import config as config_lib
from sadm_jax.anomaly import draem
from sadm_jax.data import cache as cache_lib, layout, prepare
from sadm_jax.data.preprocess import affine_spacing
from sadm_jax.data.splits import Row
from sadm_jax.evaluate import anomaly_map as am, inference, metrics, report, thresholds
from sadm_jax.utils import io

METHODS = ("threshold", "cddpm", "sadm")
DRAEM_SET = "DRAEM"  # IXI val/test volumes with deterministic DRAEM anomalies (paper Table 1)
SADM_MODES = {"draem": "draem", "brats": "Brats21", "atlas": "ATLAS_v2"}
# Reference weak-supervision rows of <set>_val.csv that the SegUnet trains on (METHOD §2.2).
REFERENCE_WEAK_TRAIN_ROWS = {"brats": (10, 100), "atlas": (6, 175)}
FPRS = ((0.01, "t_fpr1"), (0.05, "t_fpr5"), (0.1, "t_fpr10"))
PNG_VOLUMES = 3  # montages for the first few test volumes of each run and data set
CACHE_VERSION = 2  # 2: faithful per-volume records changed (τ as best_threshold, NaN empty Dice)


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


@dataclasses.dataclass
class Case:
  """One volume ready for inference; arrays slice-major [D, H, W] as cached."""
  name: str
  image: np.ndarray  # float32
  mask: np.ndarray  # bool
  seg: np.ndarray  # bool (all False for healthy volumes)
  affine: np.ndarray  # [4, 4] working grid
  index: int  # noise index

  def hwd(self, a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (1, 2, 0))


def _hash(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


# ----------------------------------------------------------------------------- planning


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
    self._by_workdir: dict[str, str] = {}
    self._sadm_cddpm: dict[str, str] = {}

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
      cfg, variables = inference.load_cddpm(workdir)
      self._by_workdir[workdir] = self.add_cddpm(cfg, variables, f"cDDPM {workdir}")
    return self._by_workdir[workdir]

  def sadm(self, workdir: str) -> tuple[ml_collections.ConfigDict, str]:
    """(saved SADM config, key of its frozen cDDPM or '') of a stage-II workdir."""
    workdir = os.path.abspath(workdir)
    if workdir not in self.segnets:
      ckpt = inference.load_sadm(workdir)
      _check_grid(ckpt.config, self.config, f"SADM run {workdir}")
      self.segnets[workdir] = inference.segnet_inference(ckpt, self.config)
      self.sadm_configs[workdir] = ckpt.config
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
  ev = config.evaluate
  unknown = set(ev.methods) - set(METHODS)
  if unknown:
    raise ValueError(f"unknown evaluate.methods {sorted(unknown)}; expected a subset of {METHODS}")
  runs: list[EvalRun] = []
  sadm_runs: list[EvalRun] = []
  if "sadm" in ev.methods:
    taken: dict[str, set] = {}
    for w in ev.sadm_workdirs:
      mode = str(models.sadm(w)[0].sadm.mode)
      sadm_runs.append(_sadm_run(config, models, w, taken.setdefault(mode, set())))
    if not ev.sadm_workdirs:
      logging.warning("evaluate.methods has 'sadm' but evaluate.sadm_workdirs is empty: "
                      "no SADM rows")
  folds = sorted({r.data_fold for r in sadm_runs}) or [int(config.data.fold)]
  if "threshold" in ev.methods:
    runs += [EvalRun("threshold", "none", f"fold{f}", f) for f in folds]
  if "cddpm" in ev.methods:
    workdirs = [ev.cddpm_workdir] if ev.cddpm_workdir else \
        list(dict.fromkeys(r.cddpm_workdir for r in sadm_runs if r.cddpm_workdir))
    if not workdirs:
      logging.warning("evaluate.methods has 'cddpm' but no cDDPM workdir is known: no cDDPM rows")
    taken_c: set = set()
    for w in workdirs:
      w = os.path.abspath(w)
      key = models.cddpm(w)
      f = int(models.cddpm_configs[key].data.fold)
      runs.append(EvalRun("cddpm", "none", _fold_label("fold", f, taken_c), f, cddpm_workdir=w,
                          cddpm_key=key))
  return runs + sadm_runs


# ----------------------------------------------------------------------------- evaluation


class Evaluator:
  """Runs the passes of one evaluation, caching one JSON per volume and run (resumable)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, models: Models,
               runs: Sequence[EvalRun], splits: dict[str, list[Row]], cache: cache_lib.VolumeCache):
    self.config, self.workdir = config, os.path.abspath(workdir)
    self.models, self.runs, self.splits, self.cache = models, list(runs), splits, cache
    ev = config.evaluate
    self.within_brain = not bool(ev.faithful_metrics)
    self.medians: dict[int, float] = {}
    self.stats = {"computed": 0, "cached": 0}
    self.map_settings = map_settings(config)
    common = {"version": CACHE_VERSION, "seed": int(config.seed), "dtype": str(ev.dtype),
              "timesteps": [int(t) for t in config.diffusion.ensemble_timesteps],
              "shared_noise": bool(config.diffusion.shared_noise), "map": self.map_settings,
              "faithful_metrics": bool(ev.faithful_metrics),
              "preprocess": config_lib.preprocess_config(config).key(),
              "uint8_wrap": bool(config.anomaly.faithful_uint8_wrap)}
    # What a per-volume result depends on (besides τ, part of the test passes' fingerprints).
    self.settings = {r.id: {**common, **dataclasses.asdict(r), **models.fingerprint(r)}
                     for r in self.runs}

  # -- volumes -----------------------------------------------------------------------------------

  def case(self, set_name: str, row: Row) -> Case:
    vol = self.cache.load(row, mmap=False)
    image = np.asarray(vol.image, np.float32)
    mask = np.asarray(vol.mask) > 0
    seg = np.asarray(vol.seg) > 0 if vol.seg is not None else np.zeros(mask.shape, bool)
    name = vol.meta["name"]
    if set_name == DRAEM_SET:
      image, seg = self._draem(name, image, mask)
      name = f"{name}_draem"
    return Case(name, image, mask, seg, vol.affine, inference.volume_index(f"{set_name}/{name}"))

  def _draem(self, name: str, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic DRAEM anomalies per axial slice, restricted to the brain (labels inside M)."""
    cfg = draem.DraemConfig(faithful_uint8_wrap=bool(self.config.anomaly.faithful_uint8_wrap),
                            restrict_to_brain=True)
    rng = np.random.default_rng([int(self.config.seed), inference.volume_index(name)])
    out, labels = image.copy(), np.zeros(mask.shape, bool)
    for k in range(image.shape[0]):
      x_ano, y = draem.synth_anomaly(image[k], rng, cfg, brain_mask=mask[k])
      out[k], labels[k] = x_ano, y > 0
    return out, labels

  def intensity_median(self, fold: int) -> float:
    """Median brain intensity of the healthy IXI training volumes of `fold` (threshold baseline)."""
    if fold in self.medians:
      return self.medians[fold]
    rows = self.splits[f"IXI_train_fold{fold}"]
    path = os.path.join(self.workdir, "eval", "threshold", f"intensity_median_fold{fold}.json")
    key = _hash({"rows": [r.img for r in rows],
                 "preprocess": config_lib.preprocess_config(self.config).key()})
    if os.path.isfile(path):
      with open(path) as f:
        saved = json.load(f)
      if saved.get("fingerprint") == key:
        self.medians[fold] = float(saved["median"])
        return self.medians[fold]
    values = [np.asarray(v.image)[np.asarray(v.mask) > 0] for v in map(self.cache.load, rows)]
    m = float(np.median(np.concatenate(values)))
    io.write_json(path, {"median": m, "fingerprint": key, "volumes": len(rows)})
    self.medians[fold] = m
    return m

  # -- maps and records --------------------------------------------------------------------------

  def anomaly(self, run: EvalRun, x: np.ndarray, mask: np.ndarray,
              inf: inference.VolumeInference | None) -> np.ndarray:
    """Anomaly map [H, W, D] of `run` for input x [H, W, D]."""
    median = self.intensity_median(run.data_fold) if run.method == "threshold" else None
    return anomaly_for(run.method, run.combination, x, mask, inf, self.map_settings, median)

  def _domain(self, mask: np.ndarray) -> np.ndarray:
    return mask if self.within_brain else np.ones_like(mask)

  def record(self, kind: str, run: EvalRun, case: Case, a: np.ndarray, x: np.ndarray,
             inf: inference.VolumeInference | None, extra: dict) -> dict:
    mask, gt = case.hwd(case.mask), case.hwd(case.seg)
    rec: dict[str, Any] = {"name": case.name}
    if inf is not None and inf.recon is not None:
      rec.update(recon_errors(x, inf.recon, mask, gt))
    dom = self._domain(mask)
    if kind == "val":
      m = metrics.volume_metrics(a, gt, mask, float("inf"),
                                 spacing=affine_spacing(case.affine),
                                 faithful=bool(self.config.evaluate.faithful_metrics))
      rec.update({k: m[k] for k in ("best_dice", "best_threshold", "auroc", "auprc", "auroc_grid",
                                    "auprc_grid", "volume_score", "lesion_voxels")})
    elif kind == "test":
      rec.update(metrics.volume_metrics(a, gt, mask, extra["tau"],
                                        spacing=affine_spacing(case.affine),
                                        faithful=bool(self.config.evaluate.faithful_metrics)))
      if self.config.evaluate.faithful_metrics:  # the reference stored τ as BestThresholdPerVol
        rec["best_threshold"] = rec["threshold"]
      for name, t in extra.get("fpr_thresholds", {}).items():
        pred = a > np.float32(t)
        rec[f"dice_at_{name}"] = metrics.dice(pred & dom, gt & dom)
    else:  # healthy_val / healthy_test
      rec["volume_score"] = metrics.volume_score(a, mask)
      n = max(int(dom.sum()), 1)
      for name, t in extra.get("fpr_thresholds", {}).items():
        rec[f"voxel_fpr_at_{name}"] = float(np.count_nonzero((a > np.float32(t)) & dom)) / n
    return rec

  # -- passes ------------------------------------------------------------------------------------

  def _paths(self, run: EvalRun, set_name: str, split: str, name: str) -> tuple[str, str]:
    d = os.path.join(self.workdir, "eval", run.method, run.train_anomalies, run.fold, set_name,
                     split)
    return os.path.join(d, f"{_safe(name)}.json"), os.path.join(d, f"{_safe(name)}.npz")

  def _cached(self, path: str, npz: str | None, fingerprint: str) -> dict | None:
    if not os.path.isfile(path) or (npz is not None and not os.path.isfile(npz)):
      return None
    try:
      with open(path) as f:
        rec = json.load(f)
    except (OSError, ValueError):
      return None
    return rec if rec.get("fingerprint") == fingerprint else None

  def run_pass(self, set_name: str, split: str, kind: str, rows_by_run: dict[str, list[Row]],
               extra: dict[str, dict] | None = None) -> dict[str, list[dict]]:
    """Every volume of one split for every run listed in `rows_by_run`; returns {run id: records}.

    kind: 'val' | 'test' (pathological or DRAEM) | 'healthy_val' | 'healthy_test' (IXI). Val kinds
    also keep each map (with labels and mask) as .npz for the pooled threshold search.
    """
    extra = extra or {}
    runs = [r for r in self.runs if r.id in rows_by_run]
    order: dict[tuple, tuple[int, Row]] = {}
    members: dict[str, set] = {}
    for r in runs:
      members[r.id] = {(row.split, row.img, row.name) for row in rows_by_run[r.id]}
      for pos, row in enumerate(rows_by_run[r.id]):
        order.setdefault((row.split, row.img, row.name), (pos, row))
    keep_map = kind in ("val", "healthy_val")
    fps = {r.id: _hash({"settings": self.settings[r.id], "extra": extra.get(r.id), "kind": kind})
           for r in runs}
    out: dict[str, list[dict]] = {r.id: [] for r in runs}
    start, n_new = time.time(), 0
    for done, (key, (pos, row)) in enumerate(order.items(), start=1):
      mine = [r for r in runs if key in members[r.id]]
      name = row.name if set_name != DRAEM_SET else f"{row.name}_draem"  # = Case.name
      todo = []
      for r in mine:
        path, npz = self._paths(r, set_name, split, name)
        rec = self._cached(path, npz if keep_map else None, fps[r.id])
        if rec is None:
          todo.append(r)
        else:
          out[r.id].append(rec)
          self.stats["cached"] += 1
      if todo:
        self._compute(kind, set_name, split, row, pos, todo, extra, fps, out)
        n_new += len(todo)
      if done % 25 == 0 or done == len(order):
        logging.info("%s/%s: %d/%d volumes (%d computed, %.1f s)", set_name, split, done,
                     len(order), n_new, time.time() - start)
    return out

  def _compute(self, kind: str, set_name: str, split: str, row: Row, pos: int,
               todo: Sequence[EvalRun], extra: dict, fps: dict, out: dict) -> None:
    """One volume for the runs in `todo`: inference (shared), map, record, files, JSON last."""
    case = self.case(set_name, row)
    x, mask = case.hwd(case.image), case.hwd(case.mask)
    requests = [(r.cddpm_key, r.sadm_workdir or None) for r in todo if r.method != "threshold"]
    infs = inference.infer_many(case.image, case.index, self.models.cddpms, requests,
                                self.models.segnets) if requests else {}
    for r in todo:
      inf = infs.get((r.cddpm_key, r.sadm_workdir or None)) if r.method != "threshold" else None
      a = self.anomaly(r, x, mask, inf)
      thresholds.check_finite(a, f"{set_name}/{case.name} ({r.id})")  # NonFiniteScoreError
      rec = {**self.record(kind, r, case, a, x, inf, extra.get(r.id, {})), "fingerprint": fps[r.id]}
      path, npz = self._paths(r, set_name, split, case.name)
      if kind in ("val", "healthy_val"):
        with io.atomic_path(npz, suffix=".npz") as tmp:
          np.savez(tmp, anomaly=a, gt=case.hwd(case.seg), mask=mask)
      if kind == "test":
        self._write_outputs(r, set_name, case, a, x, inf, extra[r.id]["tau"], pos)
      io.write_json(path, rec)  # written last: its presence marks the volume as done
      out[r.id].append(rec)
      self.stats["computed"] += 1

  def _write_outputs(self, run: EvalRun, set_name: str, case: Case, a: np.ndarray, x: np.ndarray,
                     inf, tau: float, pos: int) -> None:
    ev = self.config.evaluate
    png = bool(ev.write_png) and pos < PNG_VOLUMES
    if not (ev.write_nifti or png):
      return
    out = os.path.join(self.workdir, "report", "volumes", run.method, run.train_anomalies, run.fold,
                       set_name)
    pred = (a > np.float32(tau)) & (case.hwd(case.mask) if self.within_brain else True)
    report.write_volume_outputs(out, _safe(case.name), case.affine, x, a, pred, case.hwd(case.mask),
                                recon=None if inf is None else inf.recon, gt=case.hwd(case.seg),
                                nifti=bool(ev.write_nifti), png=png)

  def pooled(self, run: EvalRun, set_name: str, split: str, records: Sequence[dict]):
    """(maps, labels, masks) of a val pass, read back from the .npz files."""
    maps, gts, masks = [], [], []
    for rec in records:
      with np.load(self._paths(run, set_name, split, rec["name"])[1]) as z:
        maps.append(z["anomaly"])
        gts.append(z["gt"])
        masks.append(z["mask"])
    return maps, gts, masks


def map_settings(config: ml_collections.ConfigDict) -> dict:
  """`anomaly_map` keyword arguments from `config.evaluate` (besides the combination)."""
  ev = config.evaluate
  return {"lam": float(ev.lam), "median_size": int(ev.median_size),
          "erode_mask": int(ev.erode_mask), "min_component_size": int(ev.min_component_size),
          "residual_mode": str(ev.residual_mode)}


def anomaly_for(method: str, combination: str, x: np.ndarray, mask: np.ndarray,
                inf: inference.VolumeInference | None, settings: dict,
                intensity_median: float | None = None) -> np.ndarray:
  """Anomaly map A [H, W, D] of one method for input x [H, W, D] with brain mask [H, W, D].

  'threshold': |x − m|·M with m the median healthy brain intensity (intensity baseline);
  otherwise `anomaly_map` with the method's combination ('residual' for the cDDPM, Q10).
  """
  mask = np.asarray(mask) > 0
  if method == "threshold":
    return (np.abs(x - np.float32(intensity_median)) * mask).astype(np.float32)
  recon = inf.recon if inf.recon is not None else x  # unused by combination='segmentation'
  return am.anomaly_map(recon, x, mask, inf.seg_prob, combination=combination, lam=settings["lam"],
                        median_size=settings["median_size"], erode_mask=settings["erode_mask"],
                        min_component_size=settings["min_component_size"],
                        residual_mode=settings["residual_mode"])


def recon_errors(x: np.ndarray, recon: np.ndarray, mask: np.ndarray, gt: np.ndarray) -> dict:
  """Mean L1/L2 reconstruction errors inside the brain, and on its lesion / lesion-free parts."""
  d = np.asarray(x, np.float64) - np.asarray(recon, np.float64)
  out = {}
  for suffix, region in (("", mask), ("_lesion", mask & gt), ("_healthy", mask & ~gt)):
    n = int(region.sum())
    out[f"recon_l1{suffix}"] = float(np.abs(d[region]).mean()) if n else float("nan")
    out[f"recon_l2{suffix}"] = float((d[region] ** 2).mean()) if n else float("nan")
  return out


# ----------------------------------------------------------------------------- aggregation


def summarise(records: Sequence[dict]) -> dict:
  """Means (NaN-ignoring) and stds over volumes of every numeric field; counts for booleans."""
  out: dict[str, Any] = {"n_volumes": len(records)}
  keys = sorted({k for r in records for k in r if k not in ("name", "fingerprint")})
  for k in keys:
    vals = [r.get(k) for r in records]
    if all(isinstance(v, bool) for v in vals if v is not None):
      out[f"n_{k}"] = int(sum(bool(v) for v in vals if v is not None))
      continue
    arr = np.array([np.nan if v is None else float(v) for v in vals], np.float64)
    finite = arr[np.isfinite(arr)]
    out[k] = float(finite.mean()) if finite.size else float("nan")
    out[f"{k}_std"] = float(finite.std()) if finite.size else float("nan")
  if "lesion_voxels" in out:
    out["n_empty_gt"] = int(sum(1 for r in records if r.get("lesion_voxels") == 0))
  return out


def _row(run: EvalRun, set_name: str, records: Sequence[dict], **extra) -> dict:
  return {"method": run.method, "train_anomalies": run.train_anomalies, "test_set": set_name,
          "fold": run.fold, **summarise(records), **extra}


# ----------------------------------------------------------------------------- the stage


def _needed_splits(config, runs: Sequence[EvalRun], available: Sequence[str]
                   ) -> tuple[list, list, bool]:
  """(split names to load, data sets to evaluate, whether the healthy IXI passes run)."""
  ev = config.evaluate
  folds = sorted({r.data_fold for r in runs})
  sets = []
  for s in ev.test_sets:
    if s == DRAEM_SET:
      ok = "IXI_test" in available and all(f"IXI_val_fold{f}" in available for f in folds)
    else:
      ok = f"{s}_val" in available and f"{s}_test" in available
    if ok:
      sets.append(s)
    else:
      logging.warning("test set %s skipped: its val/test splits are not under data_dir", s)
  ixi = bool(ev.include_ixi) and "IXI_test" in available and \
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


def _val_rows(run: EvalRun, set_name: str, rows: list[Row]) -> tuple[list[Row], str]:
  """Rows of <set>_val for τ tuning: without the SegUnet's own training rows (Q15).

  The training rows are those stage II used (`train.sadm.weak_row_ranges` on the run's config).
  """
  if run.held_out and run.held_out[0] == set_name:
    from sadm_jax.train import sadm as sadm_train
    _, mode, train_rows, val_rows = run.held_out
    (start, stop), _ = sadm_train.weak_row_ranges(mode, len(rows), train_rows, val_rows)
    keep = [r for i, r in enumerate(rows) if not start <= i < stop]
    if keep:
      return keep, f"held-out (rows outside {start}:{stop})"
    logging.warning("%s: no %s_val rows outside its training rows %d:%d; tuning τ on all of them "
                    "(contains training volumes, Q15)", run.id, set_name, start, stop)
    return rows, "all (contains SegUnet training volumes, Q15)"
  return rows, "all"


def protocol(config, grid: Sequence[int], spacing: float) -> dict:
  ev = config.evaluate
  return {"threshold_method": str(ev.threshold_method),
          "within_brain": not bool(ev.faithful_metrics),
          "timesteps": [int(t) for t in config.diffusion.ensemble_timesteps],
          "shared_noise": bool(config.diffusion.shared_noise), "noise": str(config.diffusion.noise),
          "combination": str(ev.combination), "residual_mode": str(ev.residual_mode),
          "median_size": int(ev.median_size), "dtype": str(ev.dtype), "grid": list(grid),
          "spacing_mm": float(spacing), "faithful": bool(config.faithful),
          "faithful_metrics": bool(ev.faithful_metrics), "seed": int(config.seed)}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates every method of `evaluate.methods`; writes eval/ (per-volume cache) and report/."""
  config = config_lib.resolve(config)
  t0 = time.time()
  models = Models(config)
  runs = plan_runs(config, models)
  if not runs:
    raise ValueError("nothing to evaluate: no runs (check evaluate.methods and the workdirs)")
  root = layout.resolve_data_root(config.data.data_dir)
  names, sets, ixi = _needed_splits(config, runs, root.available_splits())
  _, splits, _, _ = prepare.load_valid_splits(config, names)
  cache_dir = config_lib.cache_dir(config)
  pre = config_lib.preprocess_config(config)
  unique = list({r.img: r for rows in splits.values() for r in rows}.values())
  cache_lib.ensure_cached(unique, cache_dir, pre, num_workers=config.data.num_workers)
  cache = cache_lib.VolumeCache(cache_dir, pre)
  ev = Evaluator(config, workdir, models, runs, splits, cache)
  rows, thresholds_out = evaluate_all(ev, sets, ixi)
  probe = cache.load(unique[0])
  proto = protocol(config, probe.volume("mask").shape, affine_spacing(probe.affine)[0])
  io.write_json(os.path.join(workdir, "eval", "config.json"), config.to_dict())
  io.write_json(os.path.join(workdir, "eval", "models.json"),
                {"runs": [{"id": r.id, **dataclasses.asdict(r), **thresholds_out.get(r.id, {})}
                          for r in runs], "test_sets": list(sets), "protocol": proto})
  text = report.write_report(workdir, rows, proto)
  print(text)
  summary = {"rows": len(rows), "volumes_computed": ev.stats["computed"],
             "volumes_cached": ev.stats["cached"], "seconds": round(time.time() - t0, 2),
             "report": os.path.join(workdir, "report", "report.md")}
  print(f"evaluate: {summary['volumes_computed']} volume result(s) computed, "
        f"{summary['volumes_cached']} reused, {summary['seconds']} s")
  return summary


def _healthy_passes(ev: Evaluator, rows: list[dict], saved: dict) -> tuple[dict, dict]:
  """IXI val → voxel-FPR thresholds per run; IXI test → scores; returns (thresholds, scores)."""
  runs, splits = ev.runs, ev.splits
  val = ev.run_pass("IXI", "val", "healthy_val",
                    {r.id: splits[f"IXI_val_fold{r.data_fold}"] for r in runs})
  fpr_t = {}
  for r in runs:
    maps, _, masks = ev.pooled(r, "IXI", "val", val[r.id])
    t = thresholds.healthy_fpr_thresholds(maps, masks if ev.within_brain else None,
                                          [f for f, _ in FPRS])
    fpr_t[r.id] = {name: t[f] for f, name in FPRS}
    saved[r.id]["fpr_thresholds"] = fpr_t[r.id]
  test = ev.run_pass("IXI", "test", "healthy_test", {r.id: splits["IXI_test"] for r in runs},
                     {r.id: {"fpr_thresholds": fpr_t[r.id]} for r in runs})
  for r in runs:
    rows.append(_row(r, "IXI", test[r.id], n_val_volumes=len(val[r.id]), **fpr_t[r.id]))
  return fpr_t, {r.id: [rec["volume_score"] for rec in test[r.id]] for r in runs}


def _set_passes(ev: Evaluator, s: str, rows: list[dict], saved: dict, fpr_t: dict,
                ixi_scores: dict) -> None:
  """<set>_val → τ per run (pooled voxels); <set>_test → metrics at τ; one row per run."""
  runs, splits = ev.runs, ev.splits
  if s == DRAEM_SET:
    val_rows = {r.id: (splits[f"IXI_val_fold{r.data_fold}"], "all") for r in runs}
    test_rows = {r.id: splits["IXI_test"] for r in runs}
  else:
    val_rows = {r.id: _val_rows(r, s, splits[f"{s}_val"]) for r in runs}
    test_rows = {r.id: splits[f"{s}_test"] for r in runs}
  val = ev.run_pass(s, "val", "val", {k: v[0] for k, v in val_rows.items()})
  extra = {}
  for r in runs:
    maps, gts, masks = ev.pooled(r, s, "val", val[r.id])
    dice_val, tau = thresholds.select_threshold(
        maps, gts, masks, method=str(ev.config.evaluate.threshold_method),
        within_brain=ev.within_brain, reference_arithmetic=bool(ev.config.evaluate.faithful_metrics))
    extra[r.id] = {"tau": tau, "fpr_thresholds": fpr_t.get(r.id, {})}
    saved[r.id]["tau"][s] = tau
    saved[r.id].setdefault("val_dice", {})[s] = dice_val
  test = ev.run_pass(s, "test", "test", test_rows, extra)
  for r in runs:
    det = float("nan")
    if r.id in ixi_scores:
      det = metrics.volume_detection_auroc(ixi_scores[r.id],
                                           [rec["volume_score"] for rec in test[r.id]])
    rows.append(_row(r, s, test[r.id], tau=extra[r.id]["tau"],
                     val_pooled_dice=saved[r.id]["val_dice"][s], tau_rows=val_rows[r.id][1],
                     n_val_volumes=len(val[r.id]),
                     val_best_dice_oracle=summarise(val[r.id]).get("best_dice", float("nan")),
                     detection_auroc=det, **extra[r.id]["fpr_thresholds"]))


def evaluate_all(ev: Evaluator, sets: Sequence[str], ixi: bool) -> tuple[list[dict], dict]:
  """IXI val (FPR thresholds) → IXI test → per data set val (τ) → test; (rows, thresholds)."""
  rows: list[dict] = []
  saved: dict[str, dict] = {r.id: {"tau": {}} for r in ev.runs}
  fpr_t, ixi_scores = _healthy_passes(ev, rows, saved) if ixi else ({}, {})
  for s in sets:
    _set_passes(ev, s, rows, saved, fpr_t, ixi_scores)
  for r in ev.runs:
    if r.method == "threshold":
      saved[r.id]["intensity_median"] = ev.intensity_median(r.data_fold)
  return rows, saved
