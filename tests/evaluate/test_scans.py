"""Predict's reading of one scan: NaN/Inf voxels outside and inside the brain."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from sadm_jax.data.errors import DataError
from sadm_jax.evaluate import predict
from sadm_jax.evaluate import scans as scans_lib
from tests.evaluate.test_predict_files import _threshold_predictor


def _brain(shape=(24, 26, 20)):
  z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
  return ((z - 12) / 10) ** 2 + ((y - 13) / 11) ** 2 + ((x - 10) / 8) ** 2 < 1


def test_nan_outside_the_brain_is_background_and_counted(tmp_path):
  """SPM and other tools write NaN where a resampled scan has no data: such a scan was refused
  whole ('image contains NaN or infinite values') though its brain was intact. NaN/Inf outside
  the brain (the mask's, or image > 0) now read as 0, are counted in the record and named in the
  status; the map equals that of the same scan with 0 there."""
  inside = _brain()
  rng = np.random.default_rng(0)
  clean = np.where(inside, rng.uniform(100, 300, inside.shape), 0).astype(np.float32)
  holes = clean.copy()
  holes[:3] = np.nan  # the slab the resampling had no data for (outside the brain)
  holes[-1, 0, 0] = -np.inf
  mask = str(tmp_path / "brain_mask.nii.gz")
  nib.save(nib.Nifti1Image(inside.astype(np.uint8), np.eye(4)), mask)
  maps = {}
  for name, data, brain in (("clean", clean, None), ("holes", holes, None),
                            ("holes_masked", holes, mask)):
    path = str(tmp_path / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    out = predict.predict(_threshold_predictor(0.5), path, brain, str(tmp_path / name))
    maps[name] = np.asarray(nib.load(out["anomaly_map"]).dataobj)
    expected = 0 if name == "clean" else 3 * 26 * 20 + 1
    assert out["nonfinite_voxels_outside_brain"] == expected
    message = predict._ok_message(out)
    assert message.endswith(f", {expected} NaN/Inf voxels outside the brain read as 0") == (
        expected > 0), message
  np.testing.assert_array_equal(maps["holes"], maps["clean"])
  np.testing.assert_array_equal(maps["holes_masked"], maps["clean"])


def test_nan_inside_the_brain_is_refused_naming_how_many(tmp_path):
  """NaN or Inf in the brain cannot be read as anything: the scan is refused, one line."""
  inside = _brain()
  data = np.where(inside, 200.0, 0).astype(np.float32)
  data[12, 13, 8:10] = [np.nan, np.inf]  # inside the brain (without a mask: the NaN as a hole
  path = str(tmp_path / "bad.nii.gz")
  nib.save(nib.Nifti1Image(data, np.eye(4)), path)
  mask = str(tmp_path / "bad_mask.nii.gz")
  nib.save(nib.Nifti1Image(inside.astype(np.uint8), np.eye(4)), mask)
  for brain, count, named in ((None, 2, "image > 0"), (mask, 2, mask)):  # image > 0 encloses)
    img, m = scans_lib.load_scan(path, brain)
    with pytest.raises(DataError) as e:
      scans_lib.clear_background(img.data, m, path, brain)
    assert str(e.value) == (f"{path}: {count} voxel(s) inside its brain ({named}) are NaN or "
                            "infinite; the map cannot be computed there: fill or mask them and "
                            "retry")


def test_a_nan_mask_and_unreadable_kinds_of_path_are_named_for_what_they_are(tmp_path):
  """A mask of NaN was 'brain mask is empty' (it holds no voxel > 0, but the user sees values);
  a named pipe or a broken symlink (a DataLad file not fetched) given as a scan was 'file not
  found' though `ls` lists it."""
  import os
  data = np.where(_brain(), 200.0, 0).astype(np.float32)
  path, mask = str(tmp_path / "s.nii.gz"), str(tmp_path / "s_mask.nii.gz")
  nib.save(nib.Nifti1Image(data, np.eye(4)), path)
  nib.save(nib.Nifti1Image(np.full(data.shape, np.nan, np.float32), np.eye(4)), mask)
  with pytest.raises(DataError, match=rf"^{mask}: brain mask is empty \(no voxel > 0; "
                                      rf"{data.size} of {data.size} voxels are NaN\)$"):
    scans_lib.load_scan(path, mask)
  fifo, link = str(tmp_path / "f.nii.gz"), str(tmp_path / "l.nii.gz")
  os.mkfifo(fifo)
  os.symlink(".git/annex/objects/x.nii.gz", link)
  with pytest.raises(DataError, match=rf"^{fifo}: not a regular file \(a pipe, socket or "
                                      r"device\)$"):
    scans_lib.load_scan(fifo)
  with pytest.raises(DataError, match=rf"^{link}: a broken symbolic link \(to "
                                      r"\.git/annex/objects/x\.nii\.gz; a git-annex"):
    scans_lib.load_scan(link)


def test_a_scan_in_metres_is_read_in_mm_and_absurd_spacings_are_named(tmp_path):
  """NIfTI's spatial units were ignored: a scan stored in metres (spacing 0.001) was resampled
  to '1 mm' as a speck and failed with 'intensities ... are constant'. Metres and microns are now
  converted (the map equals the mm scan's; the record's spacing is in mm), a wrong units label on
  a mm-valued affine is read as mm, as other tools do, and a spacing finer than 0.05 mm is refused
  naming the units."""
  inside = _brain()
  data = np.where(inside, np.random.default_rng(1).uniform(100, 300, inside.shape), 0)
  maps = {}
  for name, scale, units in (("mm", 1.0, "mm"), ("metres", 0.001, "meter"),
                             ("mislabelled", 1.0, "micron")):
    affine = np.diag([scale, scale, scale, 1.0])
    affine[:3, 3] = np.array([-12.0, -13.0, -10.0]) * scale
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    img.header.set_xyzt_units(units)
    path = str(tmp_path / f"{name}.nii.gz")
    nib.save(img, path)
    out = predict.predict(_threshold_predictor(0.5), path, None, str(tmp_path / name))
    assert out["input_spacing_mm"] == pytest.approx([1.0, 1.0, 1.0], rel=1e-6)
    maps[name] = np.asarray(nib.load(out["anomaly_map"]).dataobj)
    assert nib.load(out["anomaly_map"]).header.get_xyzt_units()[0] == units  # the scan's header
  np.testing.assert_array_equal(maps["metres"], maps["mm"])
  np.testing.assert_array_equal(maps["mislabelled"], maps["mm"])
  tiny = nib.Nifti1Image(data.astype(np.float32), np.diag([0.01, 0.01, 0.01, 1.0]))
  tiny.header.set_xyzt_units("mm")
  path = str(tmp_path / "tiny.nii.gz")
  nib.save(tiny, path)
  with pytest.raises(DataError) as e:
    scans_lib.load_scan(path)
  assert str(e.value) == (f"{path}: voxel spacing (0.01, 0.01, 0.01) mm is finer than 0.05 mm: "
                          "not a brain MRI's voxels, or the header's spatial units (mm) or "
                          "affine are wrong")


def test_a_scan_that_is_not_skull_stripped_needs_a_mask(tmp_path):
  """Without a mask the brain is image > 0: a scan that is not skull-stripped (its background
  noise is > 0 everywhere) was 'ok', its whole field of view scored as brain. It is refused,
  asking for a mask; with one it is predicted."""
  inside = _brain()
  rng = np.random.default_rng(2)
  head = np.where(inside, rng.uniform(100, 300, inside.shape),
                  np.abs(rng.normal(0, 5, inside.shape))).astype(np.float32)  # Rician-like noise
  path = str(tmp_path / "head.nii.gz")
  nib.save(nib.Nifti1Image(head, np.eye(4)), path)
  with pytest.raises(DataError) as e:
    scans_lib.load_scan(path)
  assert str(e.value) == (f"{path}: 100.0% of its voxels are above 0, so its brain (image > 0, as "
                          "no mask was given) would be nearly the whole field of view: a scan that "
                          "is not skull-stripped? Give its brain mask (predict.mask) or skull-strip "
                          "it (e.g. SynthStrip, HD-BET)")
  mask = str(tmp_path / "head_mask.nii.gz")
  nib.save(nib.Nifti1Image(inside.astype(np.uint8), np.eye(4)), mask)
  np.testing.assert_array_equal(scans_lib.load_scan(path, mask)[1], inside)


def test_a_header_with_an_undefined_units_code_is_read_as_mm(tmp_path):
  """NIfTI's xyzt_units byte holds codes 0-3 for space (unknown, m, mm, µm): an old converter's
  undefined one (5, or garbage: 255) stopped reading the units with 'KeyError: np.uint8(5)' (a
  bug's traceback in the log) where the scan had been read as mm before; it is mm, as for
  'unknown', and so is a time-only code."""
  inside = _brain()
  data = np.where(inside, 200.0, 0).astype(np.float32)
  for code in (0, 5, 8, 255):
    img = nib.Nifti1Image(data, np.diag([0.9, 0.9, 0.9, 1.0]))
    img.header["xyzt_units"] = code
    path = str(tmp_path / f"units{code}.nii.gz")
    nib.save(img, path)
    vol, brain = scans_lib.load_scan(path)
    np.testing.assert_allclose(np.diag(vol.affine), [0.9, 0.9, 0.9, 1.0])
  tiny = nib.Nifti1Image(data, np.diag([0.01, 0.01, 0.01, 1.0]))
  tiny.header["xyzt_units"] = 6
  nib.save(tiny, path)
  with pytest.raises(DataError, match=r"the header's spatial units \(code 6\) or affine"):
    scans_lib.load_scan(path)


def test_nan_enclosed_by_a_brain_without_mask_is_inside_it(tmp_path):
  """Without a mask the brain is image > 0, which NaN never is: NaN voxels in the middle of the
  brain (a corrupted block) were 'outside the brain', read as 0 and the scan 'ok' with a hole,
  though NaN inside the brain refuses a scan. NaN enclosed by image > 0 is inside it; NaN or -Inf
  around it (SPM's background) is still background, and -Inf there is not 'far below 0' (an
  intensity-normalised scan)."""
  inside = _brain()
  data = np.where(inside, 200.0, 0).astype(np.float32)
  holed = data.copy()
  holed[11:13, 12:14, 9:11] = np.nan  # 8 voxels in the brain's centre
  path = str(tmp_path / "holed.nii.gz")
  nib.save(nib.Nifti1Image(holed, np.eye(4)), path)
  img, brain = scans_lib.load_scan(path)
  with pytest.raises(DataError) as e:
    scans_lib.clear_background(img.data, brain, path, None)
  assert str(e.value) == (f"{path}: 8 voxel(s) inside its brain (image > 0) are NaN or infinite; "
                          "the map cannot be computed there: fill or mask them and retry")
  spm = np.where(inside, data, np.float32(np.nan))
  spm[:4][~inside[:4]] = -np.inf  # more than 1 % of the brain's count
  path = str(tmp_path / "spm.nii.gz")
  nib.save(nib.Nifti1Image(spm, np.eye(4)), path)
  img, brain = scans_lib.load_scan(path)
  cleared, count = scans_lib.clear_background(img.data, brain, path, None)
  assert count == (~inside).sum() and np.array_equal(cleared, data)
