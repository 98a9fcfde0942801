"""Predict over a process's devices: scans batched one per device get the maps of one scan at a time."""

from __future__ import annotations

import jax
import nibabel as nib
import numpy as np
import pytest

from sadm_jax import config as config_lib
from sadm_jax import main as main_lib
from sadm_jax.evaluate import predict, predictor, preparation
from tests.evaluate.conftest import scan_config


def test_batches_are_as_few_as_the_devices_allow_and_even():
  b = predict._batches
  assert b([], 8) == []
  assert b([0, 1, 2], 8) == [[0, 1, 2]]
  assert [len(x) for x in b(list(range(10)), 8)] == [5, 5]  # not 8 + 2 padded with 6 copies
  assert [len(x) for x in b(list(range(16)), 8)] == [8, 8]
  assert [len(x) for x in b(list(range(9)), 4)] == [3, 3, 3]
  assert b([0, 2, 4], 1) == [[0], [2], [4]]
  assert sum(b(list(range(37)), 8), []) == list(range(37))


def _copies(scan, folder, n):
  """n versions of the scan as sub-0k_T1w with masks, each image and mask shifted by 2k voxels
  along the first axis: different images, masks and noise indices."""
  folder.mkdir()
  for k in range(1, n + 1):
    for key, name in (("image", f"sub-0{k}_T1w"), ("mask", f"sub-0{k}_mask")):
      img = nib.load(scan[key])
      data = np.roll(np.asarray(img.dataobj), 2 * (k - 1), axis=0)
      nib.save(nib.Nifti1Image(data, img.affine, img.header), str(folder / f"{name}.nii.gz"))
  return [(str(folder / f"sub-0{k}_T1w.nii.gz"), str(folder / f"sub-0{k}_mask.nii.gz"))
          for k in range(1, n + 1)]


def test_scans_on_several_devices_get_the_maps_of_one_scan_at_a_time(tiny_sadm_dir, scan,
                                                                       tmp_path, monkeypatch):
  """Three scans on this process's 8 devices run as one batch on 3 of them (the evaluation's
  per-volume program); each map equals the one `predict.predict` computes for that scan alone on
  one device, so no scan got another's image, mask or noise. The stage prepares them in 2 worker
  processes here (as from `preparation.PROCESSES_FROM` cores on), `predict.predict` in this one."""
  monkeypatch.setattr(preparation, "PROCESSES_FROM", 2)
  monkeypatch.setattr(predict, "available_cores", lambda: 2)
  pools = []
  real = predict.preparer
  monkeypatch.setattr(predict, "preparer", lambda pred, workers: pools.append(workers) or
                      real(pred, workers))
  paths = _copies(scan, tmp_path / "scans", 3)
  c = scan_config(tiny_sadm_dir, {"image": str(tmp_path / "scans")}, tmp_path / "out",
                  threshold=0.5)
  summary = main_lib.run_stage(c, str(tmp_path))
  assert summary["num_ok"] == 3 and summary["devices"] == 3 < jax.local_device_count()
  assert pools == [2]
  pred = predictor.load_predictor(tiny_sadm_dir, config_lib.resolve(c))
  maps = []
  for (image, mask), rec in zip(paths, summary["scans"]):
    alone = predict.predict(pred, image, mask, str(tmp_path / "alone" / rec["scan"]))
    batched = nib.load(rec["prediction"]["anomaly_map"]).get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(batched, nib.load(alone["anomaly_map"]).get_fdata(dtype=np.float32))
    assert rec["prediction"]["volume_score"] == alone["volume_score"]
    maps.append(batched)
  assert not np.array_equal(maps[0], maps[1])  # a mix-up would show


def test_more_devices_than_the_process_has_is_refused(tiny_sadm_dir, scan, tmp_path):
  c = scan_config(tiny_sadm_dir, scan, tmp_path / "out")
  c.mesh.num_devices = jax.local_device_count() + 1
  with pytest.raises(ValueError, match=rf"^--config.mesh.num_devices={c.mesh.num_devices}: this "
                                       rf"process sees {jax.local_device_count()} device\(s\)"):
    main_lib.run_stage(c, str(tmp_path))
  assert not (tmp_path / "out").exists()
