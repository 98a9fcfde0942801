"""benchmarks/label_check.py: both label checks timed and agreeing; the old formulation is the old behaviour."""

import numpy as np

from benchmarks import label_check
from sadm_jax.data import nifti


def test_measure_times_both_variants_and_they_agree():
  r = label_check.measure((12, 10, 8), repeats=2)
  assert r["shape"] == [12, 10, 8] and r["agree"] is True
  assert r["package_s_median"] > 0 and r["sorted_s_median"] > 0


def test_sorted_check_reports_what_the_package_reports():
  mask = label_check.ball_mask((12, 10, 8))
  assert set(np.unique(mask)) == {0.0, 1.0} and mask.sum() > 0
  for bad in (None, 0.5, 7.0, np.nan):
    data = mask.copy()
    if bad is not None:
      data[0, 0, 0] = bad
    vol = nifti.Volume(data, np.eye(4), "m")
    want = nifti.check_labels(vol, nifti.MASK_LABELS, "brain mask")
    assert label_check.sorted_check(vol, nifti.MASK_LABELS, "brain mask") == want
    assert bool(want) == (bad is not None)
