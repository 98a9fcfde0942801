"""Published statistics the synthetic lesions and tissue contrast are drawn from, each with its source (docs/synthetic-cohort.md has the table and the confidence of every number)."""

from __future__ import annotations

import dataclasses

import numpy as np

# ----------------------------------------------------------------------------- tissue contrast

# T1-weighted intensity of grey matter and CSF relative to white matter (= 1) for a 3 T MPRAGE,
# from T1 relaxation times (WM 0.83–1.08 s, GM 1.33–1.82 s, CSF ~3.8 s; Wansapura et al. 1999,
# Stanisz et al. 2005, Lu et al. 2005) and water content (Gasparovic et al. 2006) through the
# MPRAGE signal equation with ADNI-like settings (docs/synthetic-cohort.md, "Tissue contrast").
GM_TO_WM = (0.62, 0.70)
CSF_TO_WM = (0.21, 0.28)

# ----------------------------------------------------------------------------- lesion volumes


@dataclasses.dataclass(frozen=True)
class Quantiles:
  """An empirical distribution given by quantiles: `values[i]` is the `probs[i]` quantile.

  Sampling interpolates the inverse CDF linearly in log(value), so a few published percentiles
  reproduce a heavy-tailed (log-scale) distribution without assuming its family.
  """
  probs: tuple[float, ...]
  values: tuple[float, ...]

  def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray | float:
    u = rng.uniform(0.0, 1.0, size)
    out = np.exp(np.interp(u, self.probs, np.log(self.values)))
    return float(out) if size is None else out


def log_normal(median: float, sigma: float, lo: float, hi: float) -> Quantiles:
  """A log-normal with `median` and log-std `sigma`, truncated to [lo, hi], as 2001 quantiles."""
  from scipy import stats
  p_lo, p_hi = (stats.norm.cdf(np.log(v / median) / sigma) for v in (lo, hi))
  probs = np.linspace(0.0, 1.0, 2001)
  values = median * np.exp(sigma * stats.norm.ppf(p_lo + probs * (p_hi - p_lo)))
  return Quantiles(tuple(probs), tuple(np.clip(values, lo, hi)))


# ATLAS v2.0 (Liew et al. 2022, Sci Data 9:320), total lesion volume per subject in ml, 655
# training subjects (1 mm MNI masks): min, P5, P10, P25, median, P75, P90, P95, max.
ATLAS_VOLUME_ML = Quantiles((0.0, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 1.0),
                            (0.013, 0.17, 0.38, 1.17, 5.29, 36.0, 106.0, 153.0, 497.0))
# ATLAS R1.1 (Liew et al. 2018, Sci Data 5:180011) metadata, 229 scans: lesions per scan 1, 2, 3, 4.
ATLAS_LESION_COUNT = ((1, 2, 3, 4), (0.546, 0.258, 0.105, 0.092))
# A stroke this large (ml) is a cortical territorial infarct, smaller ones are subcortical: in
# ATLAS R1.1, 27 % of scans have a cortical lesion and 72 % of ATLAS v2.0 totals are < 30 ml.
CORTICAL_FROM_ML = 30.0
# Territories of the cortical strokes (R1.1: MCA 31 % of all strokes, PCA and ACA < 3 % each).
TERRITORIES = (("MCA", "ACA", "PCA"), (0.84, 0.08, 0.08))
# Deep strokes: lacunar / striatocapsular (basal ganglia, thalamus, internal capsule) vs corona
# radiata / centrum semiovale (R1.1 primary locations). Brainstem and cerebellar strokes (8 % of
# R1.1 lesions) are drawn as deep strokes: the working slab excludes most of the posterior fossa.
DEEP_SITES = (("basal_ganglia", "corona_radiata"), (0.6, 0.4))
# Hemisphere of the (first) stroke: left 53 %, right 39 % of R1.1 scans (rest: brainstem/bilateral).
LEFT = 0.53 / (0.53 + 0.39)

# BraTS: high-grade fraction 293 / 369 in the BraTS 2020 training set (name_mapping.csv).
BRATS_HGG = 0.794
# Whole-tumour volume (ml). The sub-region medians of the BraTS 2021 training labels (edema 52,
# enhancing 18, necrosis 8 ml) sum to ~78 ml; the spread is not published in a form we could read:
# sigma = 0.6 is an assumption (docs/synthetic-cohort.md marks it so).
BRATS_WT_ML = log_normal(78.0, 0.6, 15.0, 250.0)
# Share of the tumour core (enhancing + necrosis) in the whole tumour: (18 + 8) / 78 = 0.33.
BRATS_CORE_FRACTION = (0.25, 0.42)
# Share of necrosis in an HGG core: 8 / (18 + 8) = 0.31.
BRATS_NECROSIS_FRACTION = (0.2, 0.45)

# WMH challenge (Kuijf et al. 2019) and MSLUB (Lesjak et al. 2018): the per-subject lesion loads
# are not in a source we could read; these are assumptions, marked as such in the docs.
WMH_VOLUME_ML = log_normal(8.0, 1.0, 0.5, 80.0)
MS_VOLUME_ML = log_normal(10.0, 0.9, 1.0, 60.0)
# MS: many small lesions (~58 per patient >= 14 mm^3 in MSLUB, third-party count): one lesion's
# volume (ml) so that ~10 ml total makes ~60 lesions.
MS_LESION_ML = log_normal(0.08, 1.1, 0.015, 3.0)

# ----------------------------------------------------------------------------- lesion contrast

# Lesion T1 intensity as a fraction f of the way from white matter (f = 0) to CSF (f = 1): the
# intensity is WM - f (WM - CSF); grey matter sits at f ~ 0.45 (GM_TO_WM, CSF_TO_WM).
# Chronic stroke: cavitated core approaching CSF, a gliotic rim 1–3 mm wide in between.
STROKE_CORE_F = (0.8, 1.0)
STROKE_RIM_F = (0.3, 0.5)
STROKE_RIM_MM = (1.0, 3.0)
# Glioma on native T1: edema iso- to mildly hypointense, solid / enhancing tumour hypointense,
# necrosis approaching CSF (VASARI definitions: necrosis and non-enhancing tumour T1-hypointense).
TUMOUR_EDEMA_F = (0.25, 0.45)
TUMOUR_SOLID_F = (0.35, 0.55)
TUMOUR_NECROSIS_F = (0.75, 0.95)
# WMH on T1: most only mildly hypointense; a third clearly hypointense (T1-hypointense subset).
WMH_F = (0.1, 0.4)
WMH_DARK_F = (0.4, 0.6)
WMH_DARK_FRACTION = 1 / 3
# MS on T1: mostly mildly hypointense; "black holes" (darker than WM and GM) in a subset whose
# share in MSLUB is not published in a source we could read (assumed 25 %).
MS_F = (0.15, 0.4)
MS_BLACK_HOLE_F = (0.6, 0.9)
MS_BLACK_HOLE_FRACTION = 0.25


def choice(rng: np.random.Generator, table: tuple[tuple, tuple[float, ...]]):
  """One draw from a (values, probabilities) table."""
  values, probs = table
  p = np.asarray(probs, np.float64)
  return values[int(rng.choice(len(values), p=p / p.sum()))]
