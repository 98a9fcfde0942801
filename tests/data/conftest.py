"""Data-test fixtures: the tiny synthetic cohort, built once per session for test_synthetic*.py."""

from __future__ import annotations

import os

import pytest

from sadm_jax.data import synthetic
from sadm_jax.data.synthetic import cohort as cohort_lib


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
  """The tiny cohort (seed 0), built once with 2 spawn workers: (root, data_dir, summary,
  results). `results[(dataset, subject)]` is what the worker returned for that subject (its CSV
  `row`, `lesion_voxels` = nonzero voxels of its seg, and `stats` = `make_subject(0, dataset,
  subject).stats`), recorded as `generate_cohort` collects it. Tests read it and never change it
  (test_synthetic.py checks a rebuild writes nothing)."""
  root = str(tmp_path_factory.mktemp("demo"))
  results = {}
  run = cohort_lib._run

  def recording_run(tasks, num_workers):
    out = run(tasks, num_workers)
    results.update(((r["dataset"], r["subject"]), r) for r in out)
    return out

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(cohort_lib, "_run", recording_run)
    summary = synthetic.generate_cohort(root, synthetic.CohortConfig.tiny(seed=0, num_workers=2))
  assert len(results) == sum(summary["subjects"].values())
  return root, os.path.join(root, "Data"), summary, results
