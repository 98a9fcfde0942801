"""Bad input gives one clear error naming every file and problem (METHOD §2, issue 'bad input')."""

import os

import nibabel as nib
import numpy as np
import pytest

from sadm_jax.data import nifti, splits
from sadm_jax.data.errors import DataError, DataProblems
from tests.data import fake_data


def _row(tmp_path, dataset="Brats21", name="s", img=None, mask=None, seg=None, seg_labels=(0, 1)):
  rng = np.random.default_rng(0)
  image, m, s = fake_data.make_subject(rng, shape=(12, 12, 8), lesion=True)
  paths = {}
  for role, data in (("img", image if img is None else img), ("mask", m if mask is None else mask),
                     ("seg", s if seg is None else seg)):
    p = str(tmp_path / f"{name}_{role}.nii.gz")
    if isinstance(data, tuple):  # (array, affine)
      fake_data.save(p, *data)
    elif isinstance(data, str):  # raw bytes / marker
      if data != "missing":
        with open(p, "wb") as f:
          f.write(data.encode())
    else:
      fake_data.save(p, data)
    paths[role] = p
  return splits.Row(name, f"{dataset}_test", dataset, "test", 0, 1, 30.0, paths["img"],
                    paths["mask"], paths["seg"], "x.csv")


def test_valid_row_has_no_problems(tmp_path):
  assert nifti.validate_row(_row(tmp_path)) == []


def test_missing_file(tmp_path):
  r = _row(tmp_path, img="missing")
  assert nifti.validate_row(r) == [(r.img, "file not found")]


def test_truncated_gzip(tmp_path):
  r = _row(tmp_path)
  with open(r.img, "rb") as f:
    data = f.read()
  with open(r.img, "wb") as f:
    f.write(data[: len(data) // 2])
  (path, problem), = nifti.validate_row(r)
  assert path == r.img and problem.startswith("cannot read as NIfTI")


def test_not_a_nifti(tmp_path):
  r = _row(tmp_path, img="this is not a nifti file")
  (path, problem), = nifti.validate_row(r)
  assert path == r.img and "cannot read as NIfTI" in problem


def test_2d_and_4d_images(tmp_path):
  r = _row(tmp_path, name="a", img=np.zeros((12, 12), np.float32))
  assert any("expected a 3-D volume, got shape (12, 12)" in p for _, p in nifti.validate_row(r))
  r = _row(tmp_path, name="b", img=np.zeros((12, 12, 8, 2), np.float32))
  assert any("expected a 3-D volume, got shape (12, 12, 8, 2)" in p for _, p in nifti.validate_row(r))
  # A trailing singleton dimension is a 3-D volume.
  vol = nifti.load_volume(_row(tmp_path, name="c", img=np.ones((12, 12, 8, 1), np.float32)).img)
  assert vol.data.shape == (12, 12, 8)


def test_shape_and_affine_mismatch(tmp_path):
  r = _row(tmp_path, name="a", mask=np.ones((12, 12, 9), np.uint8))
  assert nifti.validate_row(r) == [(r.mask, f"mask shape (12, 12, 9) differs from image shape "
                                            f"(12, 12, 8) ({r.img})")]
  aff = np.diag([1.0, 1.0, 2.0, 1.0])
  r = _row(tmp_path, name="b", seg=(np.zeros((12, 12, 8), np.uint8), aff))
  assert nifti.validate_row(r) == [(r.seg, f"seg affine differs from the image affine ({r.img})")]


def test_nan_inf_and_empty_mask_and_labels(tmp_path):
  img = np.ones((12, 12, 8), np.float32)
  img[0, 0, 0], img[1, 1, 1] = np.nan, np.inf
  r = _row(tmp_path, name="a", img=img, mask=np.zeros((12, 12, 8), np.uint8))
  probs = nifti.validate_row(r)
  assert (r.img, "image contains 2 NaN/Inf voxel(s)") in probs
  assert (r.mask, "brain mask is empty") in probs
  seg = np.zeros((12, 12, 8), np.uint8)
  seg[2, 2, 2] = 3
  r = _row(tmp_path, dataset="ATLAS_v2", name="b", seg=seg)
  assert nifti.validate_row(r) == [(r.seg, "segmentation has unexpected label value(s) 3; "
                                           "allowed [0, 1]")]
  # BraTS labels {1, 2, 4} are valid for Brats21 (binarised later), 3 is not.
  seg[2, 2, 2], seg[3, 3, 3] = 4, 2
  assert nifti.validate_row(_row(tmp_path, name="c", seg=seg)) == []
  seg[4, 4, 4] = 3
  r = _row(tmp_path, name="d", seg=seg)
  assert nifti.validate_row(r) == [(r.seg, "segmentation has unexpected label value(s) 3; "
                                           "allowed [0, 1, 2, 4]")]
  # Non-integer labels of a float mask: listed once each, in ascending order; -0.0 is 0.
  mask = np.ones((12, 12, 8), np.float32)
  mask[0, 0, 0], mask[1, 1, 1], mask[2, 2, 2], mask[3, 3, 3] = 7.0, 0.5, 0.5, -0.0
  r = _row(tmp_path, name="e", mask=mask)
  assert nifti.validate_row(r) == [(r.mask, "brain mask has unexpected label value(s) 0.5, 7; "
                                            "allowed [0, 1]")]
  # A NaN or Inf voxel is reported instead of the values.
  for name, bad in (("f", np.nan), ("g", -np.inf)):
    mask[4, 4, 4] = bad
    r = _row(tmp_path, name=name, mask=mask)
    assert nifti.validate_row(r) == [(r.mask, "brain mask contains NaN/Inf voxels")]


def test_all_problems_collected_in_one_message(tmp_path):
  rows = [_row(tmp_path, name="ok"), _row(tmp_path, name="bad1", img="missing"),
          _row(tmp_path, name="bad2", mask=np.zeros((12, 12, 8), np.uint8))]
  bad = nifti.validate_rows(rows, num_workers=2)
  assert sorted(bad) == [1, 2]
  with pytest.raises(DataProblems) as e:
    nifti.raise_problems([p for i in sorted(bad) for p in bad[i]], "invalid data")
  msg = str(e.value)
  assert "2 problem(s)" in msg and rows[1].img in msg and rows[2].mask in msg
  assert "file not found" in msg and "brain mask is empty" in msg
  assert isinstance(e.value, DataError)


def test_complex_and_rgb_volumes_are_refused_by_name(tmp_path):
  """A complex image was cast to its real part silently (not its magnitude); an RGB one raised a
  TypeError traceback. Both are one DataError naming the file and its data type."""
  rgb = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
  for name, data in (("complex", np.full((4, 4, 4), 1 + 2j, np.complex64)), ("rgb", rgb)):
    path = str(tmp_path / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(DataError, match=f"^{path}: data type .* is not real-valued"):
      nifti.load_volume(path)


def test_a_directory_and_a_gzip_file_named_nii_are_named_for_what_they_are(tmp_path):
  """A path to a folder was 'file not found'; a .nii.gz renamed .nii (nibabel goes by the name)
  was 'Cannot work out file type' with no hint."""
  with pytest.raises(DataError, match=rf"^{tmp_path}: is a directory, not a NIfTI file$"):
    nifti.load_volume(str(tmp_path))
  gz = tmp_path / "scan.nii.gz"
  fake_data.save(str(gz), np.ones((4, 4, 4), np.float32))
  os.rename(gz, tmp_path / "scan.nii")
  with pytest.raises(DataError, match=r"cannot read as NIfTI .*; the file is gzip-compressed: "
                                      r"name it \.nii\.gz$"):
    nifti.load_volume(str(tmp_path / "scan.nii"))


def test_values_beyond_float32_a_plain_file_named_gz_and_a_huge_header_are_named(tmp_path):
  """float64 values (or int16 × scl_slope) beyond float32 became ±Inf when read and were refused
  as 'image contains NaN or infinite values', which the file does not hold; an uncompressed NIfTI
  named .nii.gz was 'not a gzip file' with no hint; a header claiming 32000³ voxels was
  'MemoryError: ' and nothing more."""
  big = str(tmp_path / "big.nii.gz")
  nib.save(nib.Nifti1Image(np.full((4, 4, 4), 3e39), np.eye(4)), big)
  img = nib.Nifti1Image(np.full((4, 4, 4), 30000, np.int16), np.eye(4))
  img.header.set_slope_inter(1e35, 0.0)
  scaled = str(tmp_path / "scaled.nii.gz")
  nib.save(img, scaled)
  for path in (big, scaled):
    with pytest.raises(DataError, match=rf"^{path}: values up to 3e\+39 exceed float32's range "
                                        r"\(±3.403e\+38\); rescale the scan"):
      nifti.load_volume(path)
  plain = tmp_path / "plain.nii"
  nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(plain))
  os.rename(plain, tmp_path / "plain.nii.gz")
  with pytest.raises(DataError, match=r"cannot read as NIfTI .*; the file is not "
                                      r"gzip-compressed: name it \.nii$"):
    nifti.load_volume(str(tmp_path / "plain.nii.gz"))
  huge = tmp_path / "huge.nii"
  nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(huge))
  header = nib.load(str(huge)).header.copy()
  header.set_data_shape((32000, 32000, 32000))
  with open(huge, "r+b") as f:
    f.write(header.binaryblock)
  with pytest.raises(DataError, match=r"cannot read as NIfTI \(MemoryError: \); its header's data "
                                      r"shape \(32000, 32000, 32000\) does not fit in memory"):
    nifti.load_volume(str(huge))
