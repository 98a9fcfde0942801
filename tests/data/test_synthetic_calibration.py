"""The synthetic cohort's calibration: quantile sampling, truncated log-normals, tables, speck removal, and calibrated subjects measured against their targets."""

from __future__ import annotations

import numpy as np
import pytest

from sadm_jax.data.synthetic import calibration as cal
from sadm_jax.data.synthetic import cohort, lesions


def test_quantiles_reproduce_the_published_atlas_percentiles():
  draws = cal.ATLAS_VOLUME_ML.sample(np.random.default_rng(0), 200_000)
  for p, v in zip(cal.ATLAS_VOLUME_ML.probs, cal.ATLAS_VOLUME_ML.values):
    assert np.quantile(draws, p) == pytest.approx(v, rel=0.03), p
  # Heavy tail as published: about half the subjects below 5 ml, a tenth above 106 ml.
  assert np.mean(draws < 5.29) == pytest.approx(0.5, abs=0.01)
  assert np.mean(draws > 106.0) == pytest.approx(0.1, abs=0.01)


def test_quantiles_interpolate_in_log_space():
  q = cal.Quantiles((0.0, 1.0), (1.0, 100.0))
  assert np.median(q.sample(np.random.default_rng(1), 100_001)) == pytest.approx(10.0, rel=0.02)
  assert isinstance(q.sample(np.random.default_rng(1)), float)


def test_truncated_log_normal_has_its_median_and_bounds():
  q = cal.log_normal(8.0, 1.0, 0.5, 80.0)
  draws = q.sample(np.random.default_rng(2), 100_000)
  assert draws.min() >= 0.5 and draws.max() <= 80.0
  # Truncation is nearly symmetric in log space here (2.8 vs 2.3 sigma), so the median stays close.
  assert np.median(draws) == pytest.approx(8.0, rel=0.05)
  log_sd = np.std(np.log(draws))
  assert 0.85 < log_sd < 1.0  # slightly below sigma = 1 because of the truncation


def test_choice_follows_its_table():
  rng = np.random.default_rng(3)
  counts = [cal.choice(rng, cal.ATLAS_LESION_COUNT) for _ in range(20_000)]
  assert np.mean(np.array(counts) == 1) == pytest.approx(0.546, abs=0.015)
  assert set(counts) == {1, 2, 3, 4}


def test_drop_specks_keeps_lesions_and_the_largest_component():
  seg = np.zeros((20, 20, 20), np.uint8)
  seg[2:6, 2:6, 2:6] = 1  # 64 voxels
  seg[10, 10, 10] = 1  # a speck
  seg[15:17, 15:17, 15:17] = 2  # 8 voxels: kept (>= 8)
  lesions.drop_specks(seg)
  assert seg[10, 10, 10] == 0 and seg[3, 3, 3] == 1 and seg[15, 15, 15] == 2
  tiny = np.zeros((5, 5, 5), np.uint8)
  tiny[1, 1, 1] = tiny[3, 3, 3] = 1
  tiny[3, 3, 4] = 1  # two specks, the larger (2 voxels) stays
  lesions.drop_specks(tiny)
  assert tiny.sum() == 2 and tiny[3, 3, 3] == 1


@pytest.fixture(scope="module")
def subjects(tiny_cohort):
  """Two subjects per data set, `make_subject(0, d, i)` for i in (0, 1), as the tiny cohort's
  workers made them (tests/data/conftest.py; all are in it): each one's `stats` and
  `lesion_voxels` (nonzero voxels of its seg). test_synthetic.py checks that the cohort's subjects
  equal the ones made in this process."""
  results = tiny_cohort[3]
  return {(d, i): results[(d, i)] for d in cohort.DATASETS for i in (0, 1)}


def test_tissue_contrast_is_in_the_mprage_range(subjects):
  gm = [s["stats"]["gm_to_wm"] for s in subjects.values()]
  csf = [s["stats"]["csf_to_wm"] for s in subjects.values()]
  # Targets GM/WM 0.62–0.70 and CSF/WM 0.21–0.28; each subject's gamma (scanner) and partial
  # volume spread them, the medians stay in range.
  assert 0.60 < np.median(gm) < 0.72 and 0.19 < np.median(csf) < 0.30, (gm, csf)
  assert all(0.5 < v < 0.8 for v in gm) and all(0.12 < v < 0.4 for v in csf), (gm, csf)


def test_lesion_contrast_and_load_follow_the_calibration(subjects):
  lo = {"Brats21": 0.2, "ATLAS_v2": 0.3, "WMH": 0.1, "MSLUB": 0.1}
  hi = {"Brats21": 0.75, "ATLAS_v2": 1.1, "WMH": 0.65, "MSLUB": 0.65}
  for (dataset, i), s in subjects.items():
    if dataset == "IXI":
      assert s["stats"]["lesion_ml"] == 0 and s["lesion_voxels"] == 0  # seg all zeros
      continue
    assert lo[dataset] < s["stats"]["lesion_f"] < hi[dataset], (dataset, i, s["stats"])
  volumes = {d: [subjects[(d, i)]["stats"]["lesion_ml"] for i in (0, 1)]
             for d in ("Brats21", "WMH", "MSLUB")}
  assert all(10.0 < v < 300.0 for v in volumes["Brats21"]), volumes  # WT 15–250 ml
  assert all(0.3 < v < 100.0 for v in volumes["WMH"] + volumes["MSLUB"]), volumes
  ms = [subjects[("MSLUB", i)]["stats"]["lesion_components"] for i in (0, 1)]
  assert min(ms) >= 15, ms  # many small lesions


def test_strokes_follow_the_drawn_volume(monkeypatch):
  """The stroke volume drawn from ATLAS's distribution is what ends up labelled (within the
  losses of clipping to the brain and sparing the ventricles)."""
  drawn = []
  sample = cal.Quantiles.sample

  def record(self, rng, size=None):
    value = sample(self, rng, size)
    if self is cal.ATLAS_VOLUME_ML:
      drawn.append(value)
    return value

  monkeypatch.setattr(cal.Quantiles, "sample", record)
  stats = [cohort.make_subject(0, "ATLAS_v2", i).stats for i in range(3)]
  for target, s in zip(drawn, stats):
    assert 0.5 * target < s["lesion_ml"] < 1.5 * target, (target, s)
