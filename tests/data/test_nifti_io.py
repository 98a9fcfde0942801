"""The one NIfTI writer (`data.nifti.save_volume`): round trip, kept header, atomic writes."""

import os

import nibabel as nib
import numpy as np
import pytest

from sadm_jax.data import nifti

AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])


def _data(dtype) -> np.ndarray:
  return (np.arange(4 * 5 * 3).reshape(4, 5, 3) % 7).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16])
def test_round_trip_data_affine_dtype(tmp_path, dtype):
  path = str(tmp_path / "v.nii.gz")
  nifti.save_volume(path, _data(dtype), AFFINE)
  img = nib.load(path)
  assert img.get_data_dtype() == np.dtype(dtype)
  np.testing.assert_array_equal(np.asanyarray(img.dataobj), _data(dtype))
  np.testing.assert_allclose(img.affine, AFFINE)
  for form in ("qform", "sform"):  # sform = qform = affine, code 1 (scanner)
    matrix, code = getattr(img.header, f"get_{form}")(coded=True)
    assert int(code) == 1
    np.testing.assert_allclose(matrix, AFFINE, atol=1e-5)
  assert img.header.get_xyzt_units()[0] == "mm"
  vol = nifti.load_volume(path)  # and the project's own reader agrees
  np.testing.assert_array_equal(vol.data, _data(np.float32))
  assert vol.spacing == pytest.approx((2.0, 2.0, 2.0))
  assert os.listdir(tmp_path) == ["v.nii.gz"]  # no temporary file left behind


def test_dtype_casts_before_writing(tmp_path):
  path = str(tmp_path / "m.nii.gz")
  nifti.save_volume(path, _data(np.float64) > 3, AFFINE, dtype=np.uint8)
  img = nib.load(path)
  assert img.get_data_dtype() == np.uint8
  np.testing.assert_array_equal(np.asanyarray(img.dataobj), (_data(np.float64) > 3).astype(np.uint8))


def _reference(tmp_path) -> nib.Nifti1Image:
  """A scan with its own codes, units, description and int16 scaling, as scanners write them."""
  ref = nib.Nifti1Image(_data(np.int16), AFFINE)
  ref.set_qform(AFFINE, code=2)
  ref.set_sform(AFFINE, code=4)
  ref.header.set_xyzt_units("mm", "sec")
  ref.header["descrip"] = b"scanner T1w"
  ref.header.set_slope_inter(2.0, 10.0)
  path = str(tmp_path / "ref.nii.gz")
  nib.save(ref, path)
  return nib.load(path)


def test_header_is_kept_with_the_data_dtype_and_unit_scaling(tmp_path):
  ref = _reference(tmp_path)
  path = str(tmp_path / "map.nii.gz")
  data = _data(np.float32) / 7.0
  nifti.save_volume(path, data, ref.affine, header=ref.header, dtype=np.float32)
  img = nib.load(path)
  hdr = img.header
  assert img.get_data_dtype() == np.float32
  assert hdr["descrip"] == ref.header["descrip"]
  assert hdr.get_xyzt_units() == ("mm", "sec")
  assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (2, 4)
  assert hdr.get_slope_inter() == (None, None)  # unscaled (the scan's 2·x + 10 is dropped)
  np.testing.assert_allclose(img.affine, AFFINE)
  np.testing.assert_allclose(img.get_fdata(), data, rtol=1e-6)  # no scaling applied on reading
  assert ref.header.get_data_dtype() == np.int16  # the caller's header is copied, not changed
  assert ref.header["descrip"] == b"scanner T1w"


def test_header_display_window_and_intent_of_the_scan_are_not_carried_over(tmp_path):
  """The scan's cal_min/cal_max (a display window in ITS intensities, e.g. 0..600) would make
  viewers that honour them show a [0, 1] anomaly map or a {0, 1} mask as black; its intent (e.g.
  a z-score map) does not describe the new data either. Both are reset to 'unset'."""
  ref = _reference(tmp_path)
  hdr = ref.header.copy()
  hdr["cal_min"], hdr["cal_max"] = 0.0, 600.0
  hdr.set_intent("z score", name="zmap")
  for dtype in (np.float32, np.uint8):
    path = str(tmp_path / f"out_{np.dtype(dtype).name}.nii.gz")
    nifti.save_volume(path, _data(np.float32) / 7.0, ref.affine, header=hdr, dtype=dtype)
    out = nib.load(path).header
    assert (float(out["cal_min"]), float(out["cal_max"])) == (0.0, 0.0)
    assert out.get_intent() == ("none", (), "")
    assert out["descrip"] == b"scanner T1w" and int(out["sform_code"]) == 4  # the rest is kept
  assert float(hdr["cal_max"]) == 600.0  # the caller's header is not changed


def test_header_with_another_affine_takes_that_affine_and_keeps_its_codes(tmp_path):
  ref = _reference(tmp_path)
  moved = AFFINE.copy()
  moved[:3, 3] += (1.0, -2.0, 3.0)
  path = str(tmp_path / "moved.nii.gz")
  nifti.save_volume(path, _data(np.uint8), moved, header=ref.header)
  hdr = nib.load(path).header
  for form, code in (("qform", 2), ("sform", 4)):
    matrix, got = getattr(hdr, f"get_{form}")(coded=True)
    assert int(got) == code
    np.testing.assert_allclose(matrix, moved, atol=1e-5)


def test_a_failing_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
  path = str(tmp_path / "v.nii.gz")
  real_save = nib.save

  def broken(img, filename):
    with open(filename, "wb") as f:
      f.write(b"\x1f\x8b partial")
    raise OSError("disk full")

  monkeypatch.setattr(nib, "save", broken)
  with pytest.raises(OSError, match="disk full"):
    nifti.save_volume(path, _data(np.float32), AFFINE)
  assert os.listdir(tmp_path) == []  # neither the target nor a temporary file

  monkeypatch.setattr(nib, "save", real_save)
  nifti.save_volume(path, _data(np.float32), AFFINE)
  before = open(path, "rb").read()
  monkeypatch.setattr(nib, "save", broken)
  with pytest.raises(OSError):
    nifti.save_volume(path, np.zeros((4, 5, 3), np.float32), AFFINE)
  assert os.listdir(tmp_path) == ["v.nii.gz"] and open(path, "rb").read() == before
