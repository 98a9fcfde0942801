"""The preprocessing benchmark's own logic: both variants run and agree on a small phantom."""

import types

import numpy as np

from benchmarks import preprocess as bench
from sadm_jax.data import nifti
from sadm_jax.data import preprocess as pp


def test_measure_times_both_variants_and_checks_they_agree(tmp_path):
  rng = np.random.default_rng(0)
  rows = []
  for i in range(2):
    image = np.zeros((40, 36, 30), np.float32)
    image[4:-4, 4:-4, 4:-4] = 100 + rng.normal(scale=10, size=(32, 28, 22))
    paths = {k: str(tmp_path / f"s{i}_{k}.nii.gz") for k in ("t1", "mask")}
    nifti.save_volume(paths["t1"], image, np.eye(4))
    nifti.save_volume(paths["mask"], (image > 0).astype(np.uint8), np.eye(4))
    rows.append(types.SimpleNamespace(img=paths["t1"], mask=paths["mask"], seg=""))
  r = bench.measure(rows, pp.PreprocessConfig(crop_size=(24, 24, 12)))
  assert r["volumes"] == 2 and r["shape_1mm"] == [40, 36, 30] and r["identical"] is True
  assert 0 < r["crop_box_s_median"] <= r["crop_box_s_total"]
  assert 0 < r["whole_volume_s_median"] <= r["whole_volume_s_total"]
