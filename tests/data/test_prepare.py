"""End-to-end tests of the `prepare` stage, in process and through `python -m sadm_jax.main`."""

import csv
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from configs import prepare as prepare_config
from sadm_jax import main as main_lib
from tests.data import fake_data
from tests.helpers import REPO


def _config(data_dir, **data):
  c = prepare_config.get_config("tiny")
  c.data.data_dir = data_dir
  c.data.preprocess.crop_size = (32, 32, 16)
  for k, v in data.items():
    c.data[k] = v
  return c


def _add_duplicate_and_overlap(base):
  path = os.path.join(base, "splits", "IXI_train_fold0.csv")
  header, rows = fake_data.read_csv(path)
  _, test_rows = fake_data.read_csv(os.path.join(base, "splits", "IXI_test.csv"))
  rows = rows + [rows[0][:]] + [test_rows[0][:]]
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    for i, r in enumerate(rows):
      w.writerow([i] + r[1:])


def test_prepare_summary_and_second_run(tmp_path):
  base = fake_data.write_data_dir(str(tmp_path / "dd"), n_ixi=8, n_patho=2)
  _add_duplicate_and_overlap(base)
  work = str(tmp_path / "w")
  summary = main_lib.run_stage(_config(str(tmp_path / "dd")), work)
  with open(os.path.join(work, "prepare_summary.json")) as f:
    on_disk = json.load(f)
  assert on_disk == json.loads(json.dumps(summary))
  assert summary["layout"] == "authors"
  train = summary["splits"]["IXI_train_fold0"]
  assert train["duplicate_rows"] == 1 and train["overlaps"]["IXI_test"] == 1
  assert train["dropped"] == 2 and train["volumes"] == 5  # 6 pool - 1 val = 5 after cleaning
  b = summary["splits"]["Brats21_test"]
  assert b["volumes"] == 2 and b["volumes_with_lesion"] == 2 and b["lesion_voxels_total"] > 0
  assert summary["volumes_computed"] == 8 + 4 * 2
  again = main_lib.run_stage(_config(str(tmp_path / "dd")), work)
  assert again["volumes_computed"] == 0 and again["volumes_cached_before"] == 16
  # Faithful keeps duplicates and overlaps (reported, not dropped).
  c = _config(str(tmp_path / "dd"))
  c.faithful = True
  faithful = main_lib.run_stage(c, str(tmp_path / "w2"))
  assert faithful["splits"]["IXI_train_fold0"]["volumes"] == 7  # 5 + duplicate + overlap
  assert faithful["splits"]["IXI_train_fold0"]["dropped"] == 0


def test_cached_rows_are_not_revalidated_until_their_files_change(tmp_path, monkeypatch):
  """Stages after `prepare` skip re-reading rows whose cache entry (keyed by file identity) exists."""
  from sadm_jax import config as config_lib
  from sadm_jax.data import nifti
  base = fake_data.write_data_dir(str(tmp_path / "dd"), n_ixi=8, n_patho=2)
  c = _config(base)
  main_lib.run_stage(c, str(tmp_path / "w"))
  seen = []
  real = nifti.validate_row
  monkeypatch.setattr(nifti, "validate_row", lambda row: seen.append(row.img) or real(row))
  _, splits, _, _ = config_lib.load_valid_splits(c)
  assert seen == [] and sum(map(len, splits.values())) > 0
  # A file that changes (here: corrupted) gets a new identity: it is read and refused again.
  img, _ = _break_data(base)
  with pytest.raises(nifti.DataProblems, match="Brats21_test_001_t1"):
    config_lib.load_valid_splits(c)
  assert img in seen


def _break_data(base):
  img = os.path.join(base, "Test", "Brats21", "t1", "Brats21_test_001_t1.nii.gz")
  with open(img, "rb") as f:
    data = f.read()
  with open(img, "wb") as f:
    f.write(data[:200])
  mask = os.path.join(base, "Test", "ATLAS_v2", "mask", "ATLAS_v2_val_000_mask.nii.gz")
  fake_data.save(mask, np.zeros(fake_data.SHAPE, np.uint8))
  return img, mask


def test_main_exits_nonzero_listing_every_invalid_file(tmp_path):
  base = fake_data.write_data_dir(str(tmp_path / "dd"), n_ixi=7, n_patho=2)
  img, mask = _break_data(base)
  cmd = [sys.executable, "-m", "sadm_jax.main", "--config=configs/prepare.py:tiny",
         f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={tmp_path / 'dd'}",
         "--config.data.preprocess.crop_size=(32, 32, 16)"]
  res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert res.returncode == 2, res.stderr[-2000:]
  assert "2 problem(s)" in res.stderr
  assert f"{img}: cannot read as NIfTI" in res.stderr
  assert f"{mask}: brain mask is empty" in res.stderr
  assert not os.path.exists(tmp_path / "w" / "prepare_summary.json")
  # The escape hatch skips (and reports) the invalid rows.
  summary = main_lib.run_stage(_config(str(tmp_path / "dd"), skip_invalid=True), str(tmp_path / "w"))
  assert summary["splits"]["Brats21_test"]["invalid_skipped"] == 1
  assert summary["splits"]["Brats21_test"]["volumes"] == 1
  assert summary["splits"]["ATLAS_v2_val"]["invalid_skipped"] == 1


def test_missing_data_dir_is_a_clear_error(tmp_path):
  from sadm_jax.data.errors import DataError
  with pytest.raises(DataError, match="DATA_DIR does not exist"):
    main_lib.run_stage(_config(str(tmp_path / "missing")), str(tmp_path / "w"))


def test_missing_file_after_prepare_is_a_listed_problem_not_a_traceback(tmp_path):
  """A CSV listing a file that does not exist: the stages after `prepare` ask the cache whether the
  row is already validated (`VolumeCache.contains`, which stats the files); that question raised
  FileNotFoundError (a traceback from every training and evaluation stage) instead of the
  validation's one problem list naming the file, and skip_invalid could not skip it."""
  from sadm_jax import config as config_lib
  from sadm_jax.data import nifti
  base = fake_data.write_data_dir(str(tmp_path / "dd"), n_ixi=4, n_patho=1)
  img = os.path.join(base, "Train", "ixi", "t1", "IXI003-Fake-0003_t1.nii.gz")
  os.remove(img)
  c = _config(base)
  c.data.splits = ("IXI_test",)
  with pytest.raises(nifti.DataProblems, match=f"{img}: file not found"):
    config_lib.load_valid_splits(c)
  c.data.skip_invalid = True
  _, splits, _, skipped = config_lib.load_valid_splits(c)
  assert skipped["IXI_test"] == ["IXI003-Fake-0003"] and len(splits["IXI_test"]) == 1


def test_volumes_in_different_orientations_are_reported(tmp_path, capsys):
  """Preprocessing keeps each file's voxel order (as the reference): a Brats21 volume stored LPS
  among RAS volumes reaches the networks flipped, silently. prepare counts the orientations per
  split and prints one warning naming an example file of each."""
  base = fake_data.write_data_dir(str(tmp_path / "dd"), n_ixi=4, n_patho=1)
  lps = np.diag([-1.0, -1.0, 1.0, 1.0])
  for kind in ("t1", "mask", "seg"):
    path = os.path.join(base, "Test", "Brats21", kind, f"Brats21_test_000_{kind}.nii.gz")
    fake_data.save(path, np.asarray(nib.load(path).dataobj), lps)
  c = _config(base)
  c.data.splits = ("IXI_test", "Brats21_test")
  summary = main_lib.run_stage(c, str(tmp_path / "w"))
  assert summary["splits"]["IXI_test"]["orientations"] == {"RAS": 2}
  assert summary["splits"]["Brats21_test"]["orientations"] == {"LPS": 1}
  assert summary["orientations"] == {"RAS": 2, "LPS": 1}
  (warning,) = summary["warnings"]
  assert "2 different orientations" in warning and "Brats21_test_000_t1.nii.gz" in warning
  assert f"WARNING: {warning}" in capsys.readouterr().out


def test_same_image_with_another_segmentation_is_prepared_and_counted_as_listed(tmp_path):
  """Faithful mode keeps an image listed in two splits; with another seg in the second, prepare
  cached and counted only the first (by image path): the second split's lesion counts were the
  first's, and its cache entry (keyed by all its files) was left for the next stage."""
  base = fake_data.write_data_dir(str(tmp_path / "dd"), n_ixi=4, n_patho=1)
  val = os.path.join(base, "splits", "Brats21_val.csv")
  header, rows = fake_data.read_csv(os.path.join(base, "splits", "Brats21_test.csv"))
  empty = os.path.join(base, "Test", "Brats21", "seg", "empty_seg.nii.gz")
  fake_data.save(empty, np.zeros(fake_data.SHAPE, np.uint8))
  fake_data.write_csv(val, [rows[0][1:-1] + ["/Test/Brats21/seg/empty_seg.nii.gz"]], header)
  c = _config(base, clean_splits=False)
  c.data.splits = ("Brats21_val", "Brats21_test")
  summary = main_lib.run_stage(c, str(tmp_path / "w"))
  assert summary["splits"]["Brats21_test"]["lesion_voxels_total"] > 0
  assert summary["splits"]["Brats21_val"]["lesion_voxels_total"] == 0
  assert summary["volumes_computed"] == 2


def test_unknown_split_files_are_named_not_silently_ignored(tmp_path, caplog):
  """prepare (all splits) reads the known split names only: 'Brats21_tset.csv' or 'brats21_test.csv'
  was skipped without a word, and the set was missing from every later stage."""
  from sadm_jax.data import prepare
  base = fake_data.write_data_dir(str(tmp_path / "dd"), n_ixi=4, n_patho=1)
  os.rename(os.path.join(base, "splits", "ATLAS_v2_test.csv"),
            os.path.join(base, "splits", "ATLAS_v2_tset.csv"))
  with caplog.at_level("WARNING"):
    _, splits, _, _ = prepare.load_valid_splits(str(tmp_path / "dd"))
  assert "ATLAS_v2_test" not in splits
  (msg,) = [r.getMessage() for r in caplog.records if "ATLAS_v2_tset.csv" in r.getMessage()]
  assert "not a known split name" in msg and "ignored" in msg


def test_a_volume_that_cannot_be_preprocessed_is_named_once(tmp_path):
  """A constant image inside its brain mask: the problem is listed under its path, once."""
  base = fake_data.write_data_dir(str(tmp_path / "dd"), n_ixi=4, n_patho=1)
  path = os.path.join(base, "Train", "ixi", "t1", "IXI000-Fake-0000_t1.nii.gz")
  fake_data.save(path, np.zeros(fake_data.SHAPE, np.float32))
  with pytest.raises(ValueError) as e:
    main_lib.run_stage(_config(str(tmp_path / "dd")), str(tmp_path / "w"))
  lines = str(e.value).splitlines()
  assert lines[0] == "preprocessing failed: 1 problem(s)"
  assert lines[1].startswith(f"  {path}: intensities inside the brain mask are constant")
  assert str(e.value).count(path) == 1
