"""The per-volume result store: a val map that no longer opens counts as not computed."""

import types

import numpy as np

from sadm_jax.evaluate.store import Store


def test_a_damaged_val_map_is_computed_again(tmp_path):
  store = Store(str(tmp_path))
  run = types.SimpleNamespace(method="cddpm", train_anomalies="none", fold="fold0")
  maps = {"anomaly": np.ones((2, 4, 4), np.float32), "gt": np.zeros((2, 4, 4), np.uint8),
          "mask": np.ones((2, 4, 4), np.uint8)}
  store.write(run, "Brats21", "val", {"name": "v0", "fingerprint": "fp"}, maps)
  assert store.read(run, "Brats21", "val", "v0", "fp", with_map=True)["name"] == "v0"
  _, npz = store.paths(run, "Brats21", "val", "v0")
  with open(npz, "r+b") as f:  # a disk fault cut the file short
    f.truncate(100)
  assert store.read(run, "Brats21", "val", "v0", "fp", with_map=True) is None
  assert store.read(run, "Brats21", "val", "v0", "fp")["name"] == "v0"  # test passes keep no map
  store.write(run, "Brats21", "val", {"name": "v0", "fingerprint": "fp"}, maps)
  pooled, _, _ = store.pooled(run, "Brats21", "val", ["v0"])
  np.testing.assert_array_equal(pooled[0], maps["anomaly"])
