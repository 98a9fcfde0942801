"""The predict stage: outputs on the scan's own grid and affine; clear errors for bad inputs."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from configs import predict as predict_config
from sadm_jax import config as config_lib
from sadm_jax import main as main_lib
from sadm_jax.data.errors import DataError
from sadm_jax.data.preprocess import PreprocessConfig, preprocess_volume
from sadm_jax.evaluate import predict
from tests.data import fake_data


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
  """A fake pathological scan (1 mm, shifted origin) with its brain mask."""
  d = tmp_path_factory.mktemp("scan")
  image, mask, seg = fake_data.make_subject(np.random.default_rng(5), lesion=True)
  affine = np.diag([-1.0, 1.0, 1.0, 1.0])
  affine[:3, 3] = (20.0, -30.0, 12.0)
  paths = {"image": str(d / "sub-01_T1w.nii.gz"), "mask": str(d / "sub-01_mask.nii.gz"),
           "dir": str(d)}
  fake_data.save(paths["image"], image, affine)
  fake_data.save(paths["mask"], mask, affine)
  return paths


def _config(checkpoint_dir, scan_paths, out, **predict_fields):
  c = predict_config.get_config()
  c.predict.checkpoint_dir = checkpoint_dir
  c.predict.input = scan_paths["image"]
  c.predict.mask = scan_paths.get("mask", "")
  c.predict.output = str(out)
  for k, v in predict_fields.items():
    c.predict[k] = v
  return c


def test_predict_from_an_evaluation_writes_outputs_on_the_input_grid(evaluation, scan, tmp_path):
  workdir, _ = evaluation
  out = main_lib.run_stage(_config(workdir, scan, tmp_path), str(tmp_path))
  src = nib.load(scan["image"])
  amap, amask = nib.load(out["anomaly_map"]), nib.load(out["anomaly_mask"])
  for img in (amap, amask):
    assert img.shape == src.shape
    np.testing.assert_allclose(img.affine, src.affine)
  brain = nib.load(scan["mask"]).get_fdata() > 0
  a, m = amap.get_fdata(), amask.get_fdata()
  assert np.all(a[~brain] == 0) and np.all(m[~brain] == 0) and a[brain].max() > 0
  assert set(np.unique(m)) <= {0, 1} and amask.get_data_dtype() == np.uint8
  with open(os.path.join(tmp_path, "sub-01_T1w_prediction.json")) as f:
    saved = json.load(f)
  with open(os.path.join(workdir, "eval", "models.json")) as f:
    runs = {r["id"]: r for r in json.load(f)["runs"]}
  assert saved["method"] == "sadm"
  assert saved["threshold"] == runs["sadm/draem/fold0"]["tau"]["DRAEM"]
  assert saved["threshold_source"] == "DRAEM_val (sadm/draem/fold0)"
  # The mask at the stored τ equals the working-grid prediction carried to the input grid.
  assert out["flagged_voxels_input_grid"] == int(m.sum())


def test_working_grid_maps_land_on_the_right_input_voxels(scan):
  """The preprocessed brain mask, carried back by the affines, matches the input mask."""
  for spacing in (1.0, 1.25):
    img, mask = predict.load_scan(scan["image"], scan["mask"])
    affine = img.affine @ np.diag([1.0, 1.0, spacing, 1.0])
    work = preprocess_volume(img.data, mask, None, affine,
                             PreprocessConfig(crop_size=(128, 128, 16)))
    back = predict.to_input_grid(work.mask, work.affine, affine, mask.shape, order=0)
    zs = np.flatnonzero(back.any((0, 1)))  # the axial slab kept by the crop
    inside = mask[..., zs[0]:zs[-1] + 1] > 0
    got = back[..., zs[0]:zs[-1] + 1] > 0
    dice = 2 * (inside & got).sum() / (inside.sum() + got.sum())
    assert dice > 0.93, (spacing, dice)


def test_predict_from_a_sadm_workdir_with_explicit_threshold(tiny_sadm_dir, scan, tmp_path):
  c = _config(tiny_sadm_dir, {"image": scan["image"]}, tmp_path, threshold=0.5)  # mask = image > 0
  out = main_lib.run_stage(c, str(tmp_path))
  assert out["threshold"] == 0.5 and out["threshold_source"] == "predict.threshold"
  assert out["mask"] == "image > 0" and out["method"] == "sadm"
  assert nib.load(out["anomaly_mask"]).shape == nib.load(scan["image"]).shape
  # Without any threshold only the map is written.
  c = _config(tiny_sadm_dir, scan, tmp_path / "nothr")
  out = main_lib.run_stage(c, str(tmp_path))
  assert "anomaly_mask" not in out and os.path.isfile(out["anomaly_map"])


def test_bad_inputs_raise_data_errors_naming_the_file(scan, tmp_path):
  four_d = str(tmp_path / "four_d.nii.gz")
  fake_data.save(four_d, np.zeros((40, 44, 30, 2), np.float32))
  with pytest.raises(DataError, match="four_d.nii.gz: expected a 3-D volume"):
    predict.load_scan(four_d)
  small = str(tmp_path / "small_mask.nii.gz")
  fake_data.save(small, np.ones((40, 44, 29), np.uint8))
  with pytest.raises(DataError, match="small_mask.nii.gz: mask shape .* differs from the image"):
    predict.load_scan(scan["image"], small)
  moved = str(tmp_path / "moved_mask.nii.gz")
  mask = nib.load(scan["mask"]).get_fdata().astype(np.uint8)
  fake_data.save(moved, mask, np.diag([2, 2, 2, 1.0]))
  with pytest.raises(DataError, match="moved_mask.nii.gz: mask affine .* not the same grid"):
    predict.load_scan(scan["image"], moved)
  thick = str(tmp_path / "thick.nii.gz")
  fake_data.save(thick, np.ones((40, 44, 10), np.float32), np.diag([1, 1, 5.0, 1]))
  with pytest.raises(DataError, match="thick.nii.gz: voxel spacing .* coarser than 3.0 mm"):
    predict.load_scan(thick)
  odd = str(tmp_path / "odd.nii.gz")
  img = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4))
  img.set_qform(np.diag([2, 2, 2, 1.0]), code=1)
  img.set_sform(np.eye(4), code=1)
  nib.save(img, odd)
  with pytest.raises(DataError, match="odd.nii.gz: inconsistent header"):
    predict.load_scan(odd)


def test_predict_needs_a_checkpoint_and_an_input(tmp_path):
  with pytest.raises(ValueError, match="checkpoint_dir"):
    main_lib.run_stage(predict_config.get_config(), str(tmp_path))
  c = predict_config.get_config()
  c.predict.checkpoint_dir, c.predict.input = str(tmp_path), "x.nii.gz"
  with pytest.raises(FileNotFoundError, match="neither an evaluation workdir"):
    predict.load_predictor(str(tmp_path), config_lib.resolve(c))
