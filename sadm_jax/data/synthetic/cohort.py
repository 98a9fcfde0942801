"""A synthetic cohort in the authors' layout: subjects of five data sets, their splits, and the writer that makes it reproducible and resumable."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any

import numpy as np
from scipy import ndimage

from sadm_jax.data import layout, nifti, splits
from sadm_jax.data.errors import DataError
from sadm_jax.data.synthetic import acquisition, anatomy, lesions
from sadm_jax.utils import io, workers

DATASETS = layout.DATASETS  # dataset_index = position here (part of every subject's seed)
GENERATOR_VERSION = 2
MARKER_NAME = ".cohort_complete.json"


@dataclasses.dataclass(frozen=True)
class CohortConfig:
  """Size and seed of a cohort. The defaults are the demo's cohort (~1–2 min on 2 cores).

  Attributes:
    seed: master seed; subject s of data set d uses `default_rng([seed, d, s])`.
    n_ixi_trainval: healthy IXI pool split by a 5-fold K-fold into `IXI_{train,val}_fold{k}`.
    n_ixi_test: further healthy subjects for `IXI_test` (disjoint from the pool).
    n_<dataset>_val / n_<dataset>_test: rows of `<Dataset>_val.csv` / `<Dataset>_test.csv`.
    num_workers: processes (spawn); results do not depend on it. <= 1 runs in this process.
  """
  seed: int = 0
  n_ixi_trainval: int = 20
  n_ixi_test: int = 5
  n_brats21_val: int = 5
  n_brats21_test: int = 6
  n_atlas_v2_val: int = 5
  n_atlas_v2_test: int = 6
  n_mslub_val: int = 4
  n_mslub_test: int = 5
  n_wmh_val: int = 4
  n_wmh_test: int = 5
  num_workers: int = 2

  def __post_init__(self):
    if self.n_ixi_trainval < layout.NUM_FOLDS:
      raise ValueError(f"n_ixi_trainval={self.n_ixi_trainval}: need >= {layout.NUM_FOLDS} for "
                       f"{layout.NUM_FOLDS} folds")
    counts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
              if f.name.startswith("n_")}
    bad = {k: v for k, v in counts.items() if v < 1}
    if bad:
      raise ValueError(f"every split needs >= 1 subject, got {bad}")

  @classmethod
  def default(cls, **overrides: Any) -> CohortConfig:
    """The demo's cohort (20+5 IXI, 9–11 volumes per pathological data set)."""
    return cls(**overrides)

  @classmethod
  def tiny(cls, **overrides: Any) -> CohortConfig:
    """A handful of volumes for tests: 5+1 IXI and one val + one test volume per pathology."""
    sizes = dict(n_ixi_trainval=5, n_ixi_test=1)
    sizes.update({f"n_{d.lower()}_{s}": 1 for d in layout.PATHOLOGICAL for s in ("val", "test")})
    sizes.update(overrides)
    return cls(**sizes)

  def split_sizes(self, dataset: str) -> tuple[int, int]:
    """(pool or val size, test size) of `dataset`; subjects 0.. are the pool/val, then test."""
    if dataset == "IXI":
      return self.n_ixi_trainval, self.n_ixi_test
    key = dataset.lower()
    return getattr(self, f"n_{key}_val"), getattr(self, f"n_{key}_test")

  def identity(self) -> dict[str, int]:
    """The fields that determine the output (everything but `num_workers`)."""
    return {k: v for k, v in dataclasses.asdict(self).items() if k != "num_workers"}


@dataclasses.dataclass(frozen=True)
class Subject:
  """One synthetic subject.

  Attributes:
    name: `img_name` (e.g. `BraTS2021_00003`).
    dataset: one of DATASETS.
    meta: data-set-specific CSV columns (splits.META_COLUMNS) plus `age`.
    t1: [X, Y, Z] float32 skull-stripped T1 (integer-valued scanner units, 0 outside the brain).
    mask: [X, Y, Z] uint8 brain mask {0, 1}.
    seg: [X, Y, Z] uint8 lesion labels ({0,1,2,4} for Brats21, {0,1} otherwise; zeros for IXI).
    affine: [4, 4] voxel -> MNI mm (1 mm isotropic).
    stats: what the calibration targets, measured on this subject (`subject_stats`).
  """
  name: str
  dataset: str
  meta: dict[str, Any]
  t1: np.ndarray
  mask: np.ndarray
  seg: np.ndarray
  affine: np.ndarray
  stats: dict[str, float]


# ----------------------------------------------------------------------------- subjects


def _render(rng: np.random.Generator, dataset: str, meta: dict, profile: acquisition.Profile
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, anatomy.LowRes]:
  """Deforms the template and draws the pathology. Returns (image, mask, seg), each [X, Y, Z],
  and the subject's low-resolution tissue maps (after any mass effect)."""
  tmpl = anatomy.template()
  warp = anatomy.random_warp(rng, tmpl)
  low = anatomy.low_res(tmpl, warp)
  tumour = lesions.plan_tumour(rng, low, meta["grade"]) if dataset == "Brats21" else None
  grow = 2  # low-resolution voxels the brain may move outward (the elastic part is in `low`)
  if tumour is not None:
    sigma = tumour.radius * rng.uniform(1.2, 1.5)
    amp = rng.uniform(0.4, 0.6) if tumour.hgg else rng.uniform(0.25, 0.4)
    warp = dataclasses.replace(warp, mass=(tuple(tumour.centre), amp, sigma))
    grow += math.ceil(0.61 * amp * sigma / 2)  # max_r a r exp(-r^2 / 2 sigma^2) = a sigma e^-1/2
  r = profile.ratios
  contrast = tmpl.t1 * (1 + (r["gm"] - 1) * tmpl.gm + (r["wm"] - 1) * tmpl.wm
                        + (r["csf"] - 1) * tmpl.csf)
  # Only voxels near the (low-resolution) deformed brain are interpolated; the rest is background.
  shape = tmpl.t1.shape
  roi = ndimage.binary_dilation(low.mask, iterations=grow)
  roi = roi.repeat(2, 0).repeat(2, 1).repeat(2, 2)[:shape[0], :shape[1], :shape[2]]
  points = warp.coords(*[np.arange(n) for n in shape])[:, roi]  # [3, N]
  image = np.zeros(shape, np.float32)
  image[roi] = anatomy.sample(contrast, points)
  del points
  # The template's brain mask is T1 > 0.2 (all tissue); the same cut on the deformed image.
  mask = image > np.float32(anatomy.MASK_LEVEL)
  levels = {"csf": anatomy.T_CSF * r["csf"], "gm": anatomy.T_GM * r["gm"],
            "wm": anatomy.T_WM * r["wm"]}
  canvas = lesions.Canvas(image, mask, np.zeros(mask.shape, np.uint8), levels, tmpl, warp)
  for _ in range(5):  # retried only in the (unlikely) case a lesion fell outside the mask
    if dataset == "Brats21":
      lesions.paint_tumour(canvas, rng, tumour)
    elif dataset == "ATLAS_v2":
      lesions.paint_strokes(canvas, rng, low)
    elif dataset in ("MSLUB", "WMH"):
      lesions.paint_wm_lesions(canvas, rng, low, dataset)
    if dataset == "IXI" or canvas.seg.any():
      break
  lesions.drop_specks(canvas.seg)
  if tumour is not None:  # the tissue maps after the mass effect (for subject_stats)
    low = anatomy.low_res(tmpl, warp)
  return canvas.image, mask, canvas.seg, low


def subject_stats(t1: np.ndarray, seg: np.ndarray, low: anatomy.LowRes) -> dict[str, float]:
  """Measured on the final image: GM/WM and CSF/WM intensity ratios (medians over voxels of
  nearly pure tissue, lesions excluded), lesion volume (ml, 1 mm voxels), connected lesion
  components, and the lesion's median intensity as a fraction f from WM (0) to CSF (1)."""
  sub = (slice(0, None, 2),) * 3
  t1_low, healthy = t1[sub], (seg[sub] == 0) & low.mask
  level = {k: float(np.median(t1_low[(getattr(low, k) > th) & healthy]))
           for k, th in (("wm", 0.9), ("gm", 0.8), ("csf", 0.9))}
  out = {"gm_to_wm": level["gm"] / level["wm"], "csf_to_wm": level["csf"] / level["wm"],
         "lesion_ml": float(np.count_nonzero(seg)) / 1000.0, "lesion_components": 0.0,
         "lesion_f": float("nan")}
  if seg.any():
    out["lesion_components"] = float(ndimage.label(seg > 0)[1])
    out["lesion_f"] = (level["wm"] - float(np.median(t1[seg > 0]))) / (level["wm"] - level["csf"])
  return {k: round(v, 4) for k, v in out.items()}


def make_subject(seed: int, dataset: str, subject: int) -> Subject:
  """Synthesises subject `subject` of `dataset` (deterministic in (seed, dataset, subject))."""
  if dataset not in DATASETS:
    raise ValueError(f"unknown data set {dataset!r}; expected one of {DATASETS}")
  rng = np.random.default_rng([seed, DATASETS.index(dataset), subject])
  name, meta, scanner = acquisition.subject_metadata(rng, dataset, subject)
  profile = acquisition.scanner_profile(rng, scanner)
  image, mask, seg, low = _render(rng, dataset, meta, profile)
  t1 = acquisition.acquire(rng, image, mask, profile)
  stats = subject_stats(t1, seg, low)
  meta = dict(meta, age=round(float(meta["age"]), 1))
  if dataset == "ATLAS_v2":  # voxels / 1000: exactly 3 decimals
    meta["lesion_volume_ml"] = round(stats["lesion_ml"], 3)
  return Subject(name, dataset, meta, t1, mask.astype(np.uint8), seg, anatomy.template().affine,
                 stats)


# ----------------------------------------------------------------------------- writing


def subject_row(subject: Subject) -> dict[str, Any]:
  """The subject's split-CSV row (without the leading index), keyed by column name."""
  paths = layout.volume_paths(subject.dataset, subject.name)
  meta = {c: subject.meta[c] for c in splits.META_COLUMNS[subject.dataset]}
  return {"img_name": subject.name, **meta, "label": 0 if subject.dataset == "IXI" else 1,
          "age": subject.meta["age"], "img_path": paths["t1"], "mask_path": paths["mask"],
          "seg_path": paths.get("seg", "")}


def _generate_subject(task: tuple[str, int, str, int]) -> dict[str, Any]:
  """Worker: synthesises and writes one subject; returns its CSV row and lesion statistics."""
  base, seed, dataset, subject = task
  s = make_subject(seed, dataset, subject)
  arrays = {"t1": s.t1, "mask": s.mask, "seg": s.seg}
  for kind, rel in layout.volume_paths(dataset, s.name).items():
    nifti.save_volume(layout.resolve_csv_path(base, rel), arrays[kind], s.affine)
  return {"dataset": dataset, "subject": subject, "row": subject_row(s),
          "lesion_voxels": int(np.count_nonzero(s.seg)), "stats": s.stats}


def _run(tasks: list[tuple], num_workers: int) -> list[dict[str, Any]]:
  if num_workers <= 1 or len(tasks) <= 1:
    return [_generate_subject(t) for t in tasks]
  return list(workers.map_in_processes(_generate_subject, tasks, num_workers,
                                       anatomy.install_template, (anatomy.template(),)))


def split_indices(cfg: CohortConfig) -> dict[str, tuple[str, list[int]]]:
  """{split name: (dataset, subject indices)}; IXI folds are a K-fold over the train/val pool."""
  n_pool, n_test = cfg.split_sizes("IXI")
  perm = np.random.default_rng([cfg.seed, len(DATASETS), 0]).permutation(n_pool)
  folds = [sorted(int(i) for i in f) for f in np.array_split(perm, layout.NUM_FOLDS)]
  out: dict[str, tuple[str, list[int]]] = {}
  for k in range(layout.NUM_FOLDS):
    out[f"IXI_train_fold{k}"] = ("IXI", sorted(i for j, f in enumerate(folds) if j != k for i in f))
    out[f"IXI_val_fold{k}"] = ("IXI", folds[k])
  out["IXI_test"] = ("IXI", list(range(n_pool, n_pool + n_test)))
  for dataset in layout.PATHOLOGICAL:
    n_val, n_test = cfg.split_sizes(dataset)
    out[f"{dataset}_val"] = (dataset, list(range(n_val)))
    out[f"{dataset}_test"] = (dataset, list(range(n_val, n_val + n_test)))
  return out


def _quartiles(values: list[float]) -> list[float] | None:
  """[P25, median, P75] of the finite values (None when there are none, e.g. IXI's lesions)."""
  v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
  return [round(float(q), 3) for q in np.percentile(v, (25, 50, 75))] if v.size else None


def _summary(cfg: CohortConfig, split_map: dict, results: list[dict], seconds: float) -> dict:
  """Counts, split sizes, lesion voxels, and per data set the quartiles of every measured
  calibration target (`subject_stats`)."""
  voxels, measured = {}, {}
  for dataset in DATASETS:
    mine = [r for r in results if r["dataset"] == dataset]
    measured[dataset] = {k: _quartiles([r["stats"][k] for r in mine]) for k in mine[0]["stats"]}
    if dataset != "IXI":
      vox = [r["lesion_voxels"] for r in mine]
      voxels[dataset] = {"total": int(sum(vox)), "min": int(min(vox)), "max": int(max(vox))}
  return {"subjects": {d: sum(r["dataset"] == d for r in results) for d in DATASETS},
          "splits": {name: len(idx) for name, (_, idx) in split_map.items()},
          "lesion_voxels": voxels, "measured": measured, "seconds": round(seconds, 1),
          "config": cfg.identity()}


def generate_cohort(root: str | os.PathLike, cfg: CohortConfig | None = None) -> dict[str, Any]:
  """Writes the cohort under `<root>/Data` in the authors' layout; returns a summary.

  Layout (sadm_jax.data.layout): `Data/Train/ixi/{t1,mask}/<id>_{t1,mask}.nii.gz`,
  `Data/Test/<Dataset>/{t1,mask,seg}/<id>_{t1,mask,seg}.nii.gz`, `Data/splits/<split>.csv`.
  Every file is written atomically; `Data/.cohort_complete.json` first says the cohort is being
  generated and last holds its summary: when it holds one with the same generator version and
  config the cohort is not regenerated (summary['skipped'] is True); an interrupted one is
  generated again. A folder with split CSVs but no marker (a real DATA_DIR) is refused.

  Returns:
    {'subjects': {dataset: n}, 'splits': {split: rows},
     'lesion_voxels': {dataset: {total, min, max}},
     'measured': {dataset: {stat: [P25, median, P75] or None}} (stats: `subject_stats`),
     'seconds', 'config', 'skipped', 'data_dir'}.
  """
  cfg = cfg or CohortConfig.default()
  root = layout.authors_root(root)
  marker = os.path.join(root.base, MARKER_NAME)
  identity = {"generator_version": GENERATOR_VERSION, "config": cfg.identity()}
  if os.path.isfile(marker):
    with open(marker, encoding="utf-8") as f:
      done = json.load(f)
    if {k: done.get(k) for k in identity} == identity:
      return dict(done["summary"], skipped=True, data_dir=root.base)
  elif os.path.isdir(root.splits_dir) and any(n.endswith(".csv")
                                              for n in os.listdir(root.splits_dir)):
    # split files but no marker: not a cohort this generator started (a real DATA_DIR given as
    # the demo's root?), whose split files it would overwrite
    raise DataError(f"{root.base}: holds split files ({root.splits_dir}) but no {MARKER_NAME}: not "
                    "a demo cohort; give a new or empty folder for the synthetic cohort")
  # Until the summary replaces it: a cohort being written (an interrupted one is written again).
  io.write_json(marker, {"generating": identity})
  start = time.perf_counter()
  split_map = split_indices(cfg)
  tasks = []
  for dataset in DATASETS:
    n = sum(cfg.split_sizes(dataset))
    tasks += [(root.base, cfg.seed, dataset, s) for s in range(n)]
  results = _run(tasks, cfg.num_workers)
  by_key = {(r["dataset"], r["subject"]): r for r in results}
  for name, (dataset, indices) in split_map.items():
    splits.write_split(root, name, [by_key[(dataset, i)]["row"] for i in indices])
  summary = _summary(cfg, split_map, results, time.perf_counter() - start)
  io.write_json(marker, dict(identity, summary=summary))
  return dict(summary, skipped=False, data_dir=root.base)
