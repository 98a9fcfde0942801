"""Predict's file handling without models: scan names, outputs after reruns and failed writes."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from configs import predict as predict_config
from sadm_jax import config as config_lib
from sadm_jax.data import nifti
from sadm_jax.data.errors import DataError
from sadm_jax.evaluate import listing, predict, predictor
from sadm_jax.evaluate import scans as scans_lib
from tests.helpers import REPO


def test_upper_case_extensions_are_scans_and_names_collide_regardless_of_case(tmp_path):
  """`.NII.GZ` / `.Nii` files (written by some Windows and scanner tools) are scans: listed in a
  folder, named without the extension; two scans whose names differ only in case would write the
  same files on a case-insensitive file system (macOS, Windows), so they are refused. A mask
  `A_mask.NII.GZ` is A's mask (it was neither listed as a scan nor found: A silently had none)."""
  for name in ("A.NII.GZ", "A_mask.NII.GZ", "b.Nii", "notes.txt"):
    (tmp_path / name).write_bytes(b"")
  scans, batch = listing.list_scans(str(tmp_path))
  assert [(s.name, os.path.basename(s.image), s.mask and os.path.basename(s.mask))
          for s in scans] == [("A", "A.NII.GZ", "A_mask.NII.GZ"), ("b", "b.Nii", None)]
  assert listing.scan_stem("x/sub.01.T1w.NII.GZ") == "sub.01.T1w"
  with pytest.raises(ValueError, match="two scans named 'sub-01' .* 'SUB-01'"):
    listing.list_scans("x/sub-01.nii.gz,x/SUB-01.nii")


def _threshold_predictor(tau, crop=(32, 32, 16)):
  """The intensity baseline on a small crop (no models, no curvature flow): fast geometry."""
  c = predict_config.get_config("tiny")
  c.data.preprocess.curvature_flow = False
  c.data.preprocess.crop_size = crop
  return predictor.Predictor(config_lib.resolve(c), "threshold", "residual", "test",
                           intensity_median=0.0, tau=tau, tau_source="test" if tau else "")


def _scan(tmp_path) -> str:
  """A skull-stripped scan [24, 26, 20] without a mask: its brain (image > 0) is every voxel but
  the outermost rows and columns of each slice."""
  path = str(tmp_path / "sub-01.nii.gz")
  data = np.zeros((24, 26, 20), np.float32)
  data[1:-1, 1:-1] = np.random.default_rng(0).uniform(100, 300, (22, 24, 20))
  nib.save(nib.Nifti1Image(data, np.eye(4)), path)
  return path


def test_a_rerun_without_threshold_leaves_no_mask_of_the_earlier_run(tmp_path):
  """The same output folder, first with τ, then without: the earlier run's mask must not sit next
  to the new map and prediction record as if it belonged to them."""
  image, out = _scan(tmp_path), str(tmp_path / "out")
  first = predict.predict(_threshold_predictor(0.5), image, None, out)
  assert os.path.isfile(first["anomaly_mask"])
  second = predict.predict(_threshold_predictor(None), image, None, out)
  assert "anomaly_mask" not in second
  assert sorted(os.listdir(out)) == ["sub-01_anomaly_map.nii.gz", "sub-01_prediction.json"]


def test_a_failed_write_leaves_none_of_the_scans_outputs(tmp_path, monkeypatch):
  """A write that fails after the map was written (a full disk at the mask) must not leave the new
  map next to the earlier run's mask and record: the scan's outputs are all removed, and nothing
  half-written (no temporary file) stays behind."""
  image, out = _scan(tmp_path), str(tmp_path / "out")
  pred = _threshold_predictor(0.5)
  predict.predict(pred, image, None, out)  # a complete earlier run
  real = nifti.save_volume

  def full_disk_at_the_mask(path, *args, **kwargs):
    if path.endswith("_anomaly_mask.nii.gz"):
      raise OSError(errno.ENOSPC, "No space left on device", path)
    return real(path, *args, **kwargs)

  monkeypatch.setattr(nifti, "save_volume", full_disk_at_the_mask)
  with pytest.raises(OSError, match="No space left"):
    predict.predict(pred, image, None, out)
  assert os.listdir(out) == []
  monkeypatch.setattr(nifti, "save_volume", real)
  # A failure before anything was written keeps the earlier complete outputs.
  predict.predict(pred, image, None, out)
  nib.save(nib.Nifti1Image(np.zeros((24, 26, 20), np.float32), np.eye(4)), image)
  with pytest.raises(DataError, match="no voxel is above 0"):
    predict.predict(pred, image, None, out)
  assert len(os.listdir(out)) == 3


_KILLED_AT_THE_MASK = """
import os, pathlib, signal, sys
from sadm_jax.data import nifti
from sadm_jax.evaluate import predict
from tests.evaluate import test_predict_files as t
tmp = pathlib.Path(sys.argv[1])
image, out = t._scan(tmp), str(tmp / "out")
predict.predict(t._threshold_predictor(0.5), image, None, out)  # a complete earlier run
real = nifti.save_volume
def killed_at_the_mask(path, *args, **kwargs):
  if path.endswith("_anomaly_mask.nii.gz"):
    os.kill(os.getpid(), signal.SIGKILL)  # no clean-up runs
  return real(path, *args, **kwargs)
nifti.save_volume = killed_at_the_mask
predict.predict(t._threshold_predictor(0.6), image, None, out)
"""


def test_a_run_killed_between_a_scans_writes_leaves_no_record_of_the_earlier_run(tmp_path):
  """SIGKILL after the new map was written, at the mask: the earlier run's record (another τ)
  and mask stayed beside the new map as if they described it; now the scan has no record (a
  rerun writes it)."""
  res = subprocess.run([sys.executable, "-c", _KILLED_AT_THE_MASK, str(tmp_path)], cwd=REPO,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                       timeout=300)
  assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
  out = str(tmp_path / "out")
  left = sorted(n for n in os.listdir(out) if not n.startswith("."))  # (a killed write's temp)
  assert left == ["sub-01_anomaly_map.nii.gz"]


def test_qform_and_sform_differing_only_in_origin_are_named_by_what_differs(tmp_path):
  """The refusal said 'qform spacing (1.0, 1.0, 1.0) and sform spacing (1.0, 1.0, 1.0) describe
  different grids' for forms that differ only in origin: it now shows each form's axes, spacing
  and origin."""
  img = nib.Nifti1Image(np.ones((8, 8, 6), np.float32), np.eye(4))
  moved = np.eye(4)
  moved[:3, 3] = (10.0, 0.0, 0.0)
  img.set_qform(moved, code=1)
  img.set_sform(np.eye(4), code=4)
  path = str(tmp_path / "shifted.nii.gz")
  nib.save(img, path)
  with pytest.raises(DataError) as e:
    scans_lib.load_scan(path)
  assert str(e.value) == (
      f"{path}: inconsistent header: qform (code 1: RAS, spacing (1.0, 1.0, 1.0) mm, origin "
      "(10.0, 0.0, 0.0) mm) and sform (code 4: RAS, spacing (1.0, 1.0, 1.0) mm, origin "
      "(0.0, 0.0, 0.0) mm) describe different grids; make them agree (e.g. nibabel "
      "img.set_qform(img.get_sform(), code=1)) and retry")


def test_a_sheared_sform_or_forms_turned_apart_are_named_not_shown_as_one_grid(tmp_path):
  """A sheared sform saved with its qform (nibabel stores the nearest rotation there; gantry-tilted
  scans) and forms turned 5° apart were refused as two grids shown with the same axes, spacing and
  origin; the sheared one with advice (copy the sform into the qform) that cannot work."""
  sheared = np.eye(4)
  sheared[0, 1] = 0.5
  img = nib.Nifti1Image(np.ones((8, 8, 6), np.float32), sheared)
  img.set_qform(sheared, code=1)
  img.set_sform(sheared, code=1)
  path = str(tmp_path / "tilted.nii.gz")
  nib.save(img, path)
  with pytest.raises(DataError) as e:
    scans_lib.load_scan(path)
  assert str(e.value) == (
      f"{path}: inconsistent header: the sform (code 1) is sheared (two voxel axes 26.6° from "
      "perpendicular), which a qform cannot store, so the qform (code 1) describes another grid; "
      "keep the form you trust (e.g. the sform: nibabel img.set_qform(None, code=0)) and retry")
  img = nib.Nifti1Image(np.pad(np.ones((6, 6, 6), np.float32), ((1, 1), (1, 1), (0, 0))),
                        sheared)  # (a skull-stripped brain: image > 0 is not every voxel)
  img.set_qform(None, code=0)  # the advice: the sform alone is a usable header
  img.set_sform(sheared, code=1)
  nib.save(img, path)
  assert scans_lib.load_scan(path)[0].data.shape == (8, 8, 6)
  turned = np.eye(4)
  c, s = np.cos(np.radians(5)), np.sin(np.radians(5))
  turned[:2, :2] = [[c, -s], [s, c]]
  img = nib.Nifti1Image(np.ones((8, 8, 6), np.float32), np.eye(4))
  img.set_qform(turned, code=1)
  img.set_sform(np.eye(4), code=1)
  nib.save(img, path)
  with pytest.raises(DataError, match=r"describe different grids, axes turned up to 5° apart;"):
    scans_lib.load_scan(path)


def test_a_folder_holding_earlier_outputs_does_not_predict_them_as_scans(tmp_path):
  """A scan predicted with its outputs written next to it (predict.output = its folder), then the
  folder predicted: sub-01_anomaly_map.nii.gz was listed as a scan, with sub-01_anomaly_mask.nii.gz
  (by the <base>_mask rule) as its brain mask."""
  image = _scan(tmp_path)
  predict.predict(_threshold_predictor(0.5), image, None, str(tmp_path))
  scans, _ = listing.list_scans(str(tmp_path))
  assert [(s.name, s.mask) for s in scans] == [("sub-01", None)]


def test_a_mask_stored_in_another_voxel_order_is_refused_naming_how_the_grids_differ(tmp_path):
  """The same brain mask stored LPS next to a RAS scan (same shape and spacing) was refused as
  'mask affine (spacing (1.0, 1.0, 1.0)) differs from the image affine (spacing (1.0, 1.0, 1.0))',
  which does not say what differs; the axis codes and origins do."""
  image = _scan(tmp_path)
  flip = np.array([[-1.0, 0, 0, 23], [0, -1, 0, 25], [0, 0, 1, 0], [0, 0, 0, 1]])
  path = str(tmp_path / "sub-01_mask.nii.gz")
  nib.save(nib.Nifti1Image(np.ones((24, 26, 20), np.uint8), flip), path)
  with pytest.raises(DataError) as e:
    scans_lib.load_scan(image, path)
  assert str(e.value) == (
      f"{path}: mask affine (LPS, spacing (1.0, 1.0, 1.0) mm, origin (23.0, 25.0, 0.0) mm) differs "
      f"from the image affine (RAS, spacing (1.0, 1.0, 1.0) mm, origin (0.0, 0.0, 0.0) mm; "
      f"{image}): not the same grid")


def test_hidden_files_in_a_folder_are_not_scans(tmp_path):
  """macOS writes `._<name>` AppleDouble files next to every file copied to a FAT/exFAT disk or a
  network share, and an interrupted write leaves `.<name>.<random>.tmp.nii.gz`: they are not
  scans (they were listed, failed as unreadable and made the batch exit 2)."""
  for name in ("sub-01.nii.gz", "._sub-01.nii.gz", ".sub-02_anomaly_map.nii.gz.x1.tmp.nii.gz"):
    (tmp_path / name).write_bytes(b"")
  scans, _ = listing.list_scans(str(tmp_path))
  assert [s.name for s in scans] == ["sub-01"]


def test_a_4d_int16_scan_with_scaling_gives_the_map_of_its_scaled_values(tmp_path):
  """[H, W, D, 1] int16 with scl_slope/scl_inter, qform code 1 and sform code 4: the same map as the
  3-D float32 file of its scaled values, written 3-D on the scan's grid with its codes and units
  and without its scaling."""
  raw = np.zeros((24, 26, 20, 1), np.int16)  # a skull-stripped brain: 0 around it
  raw[1:-1, 1:-1] = np.random.default_rng(1).integers(50, 150, (22, 24, 20, 1))
  affine = np.array([[0, 0, -1.0, 30], [-1, 0, 0, 20], [0, 1, 0, -10], [0, 0, 0, 1]])
  img = nib.Nifti1Image(raw, affine)
  img.set_qform(affine, code=1)
  img.set_sform(affine, code=4)
  img.header.set_slope_inter(2.0, -5.0)
  img.header.set_xyzt_units("mm", "sec")
  nib.save(img, str(tmp_path / "four_d.nii.gz"))
  float_3d = nib.Nifti1Image((2.0 * raw[..., 0] - 5.0).astype(np.float32), affine)
  nib.save(float_3d, str(tmp_path / "float_3d.nii.gz"))
  pred = _threshold_predictor(0.5)
  maps = {}
  for stem in ("four_d", "float_3d"):
    out = predict.predict(pred, str(tmp_path / f"{stem}.nii.gz"), None, str(tmp_path / stem))
    maps[stem] = nib.load(out["anomaly_map"])
  got = maps["four_d"]
  assert got.shape == (24, 26, 20) and got.get_data_dtype() == np.float32
  assert (int(got.header["qform_code"]), int(got.header["sform_code"])) == (1, 4)
  assert got.header.get_xyzt_units() == ("mm", "sec")
  assert got.header.get_slope_inter() == (None, None)
  np.testing.assert_allclose(got.affine, affine)
  np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(maps["float_3d"].dataobj))


def test_a_csv_saved_by_excel_with_a_byte_order_mark_is_read(tmp_path):
  """Excel's 'CSV UTF-8' starts the file with a byte order mark: the header was read as
  ['\\ufeffimage', 'mask'] and refused as having no image column."""
  (tmp_path / "scans.csv").write_bytes("image,mask\r\na.nii.gz,a_mask.nii.gz\r\n".encode("utf-8-sig"))
  scans, batch = listing.list_scans(str(tmp_path / "scans.csv"))
  assert batch and [(s.name, s.image, s.mask) for s in scans] == [
      ("a", str(tmp_path / "a.nii.gz"), str(tmp_path / "a_mask.nii.gz"))]


def test_a_csv_that_is_not_utf8_is_one_line_naming_it(tmp_path):
  """A CSV saved in Latin-1 (Excel's plain "CSV" on Windows): the decoder's own message named
  neither the file nor the setting."""
  path = tmp_path / "scans.csv"
  path.write_bytes("image,mask\nscän.nii.gz,\n".encode("latin-1"))
  with pytest.raises(ValueError, match=rf"^predict.input={path}: not UTF-8 text \(byte 13: "
                                       r"invalid continuation byte\); save it as UTF-8"):
    listing.list_scans(str(path))


@pytest.mark.parametrize("key,value", [("run", "cddpm"), ("threshold_set", "Brats21")])
def test_an_evaluation_choice_with_a_training_workdir_is_refused(tmp_path, key, value):
  """predict.run / threshold_set choose among an evaluation's runs; with a SADM or cDDPM workdir
  they were ignored without a word (predict.run=cddpm predicted with the SADM run's model)."""
  (tmp_path / "best").mkdir()
  c = predict_config.get_config("tiny")
  c.predict[key] = value
  with pytest.raises(ValueError, match=rf"^--config.predict.{key}={value} chooses among an "
                                       rf"evaluation workdir's runs and τs; {tmp_path} is a "
                                       "training workdir"):
    predictor.load_predictor(str(tmp_path), c)


def test_a_scan_missing_from_the_given_mask_folder_fails_naming_the_mask(tmp_path):
  """With predict.mask=<folder>, a scan whose mask is not there took `image > 0` as its brain
  without a word; it now fails alone, naming the mask it was expected to have."""
  scans, masks = tmp_path / "scans", tmp_path / "masks"
  scans.mkdir()
  masks.mkdir()
  for name in ("sub-01_T1w.nii.gz", "sub-02_T1w.nii.gz"):
    (scans / name).write_bytes(b"")
  (masks / "sub-01_mask.nii.gz").write_bytes(b"")
  for spec in (str(scans), f"{scans / 'sub-01_T1w.nii.gz'},{scans / 'sub-02_T1w.nii.gz'}"):
    found, _ = listing.list_scans(spec, str(masks))
    assert [s.mask for s in found] == [str(masks / "sub-01_mask.nii.gz"),
                                       str(masks / "sub-02_mask.nii.gz")]
  nifti.save_volume(found[1].image, np.ones((4, 4, 4), np.float32), np.eye(4))
  with pytest.raises(DataError, match=rf"^{masks / 'sub-02_mask.nii.gz'}: file not found$"):
    scans_lib.load_scan(found[1].image, found[1].mask)
  assert listing.list_scans(str(scans))[0][0].mask is None  # no mask folder given: image > 0
  (scans / "patient_001.nii.gz").write_bytes(b"")  # a number, not a modality, after the last _
  found, _ = listing.list_scans(str(scans / "patient_001.nii.gz"), str(masks))
  assert found[0].mask == str(masks / "patient_001_mask.nii.gz")
  (masks / "patient_mask.nii.gz").write_bytes(b"")  # not patient_001's (nor patient_002's) mask
  assert listing.find_mask("patient_001", str(masks)) is None


def test_a_csv_separated_by_semicolons_says_so(tmp_path):
  """Excel in many European locales saves "CSV" with ';' (as the split CSVs' check already says)."""
  path = tmp_path / "scans.csv"
  path.write_text("image;mask\na.nii.gz;\n")
  with pytest.raises(ValueError, match=r"got \['image;mask'\]; the file is separated by ';', "
                                       r"expected ','$"):
    listing.list_scans(str(path))


def test_a_csv_whose_rows_or_columns_would_be_misread_is_refused_naming_it(tmp_path):
  """A row with more fields than the header (an unquoted path with a comma) was an AttributeError
  traceback; a mask column under another name ('brain_mask') was ignored, silently predicting
  with image > 0 as the brain; a column named twice kept only its last path."""
  path = tmp_path / "scans.csv"
  path.write_text("image,mask\na.nii.gz,a_mask.nii.gz\nb,1.nii.gz,b_mask.nii.gz\n")
  with pytest.raises(ValueError) as e:
    listing.list_scans(str(path))
  assert str(e.value) == (f"predict.input={path}: line 3 has 3 fields, the header 2; quote a path "
                          "that holds a comma")
  path.write_text("image,brain_mask\na.nii.gz,a_mask.nii.gz\n")
  with pytest.raises(ValueError, match=r"column\(s\) \['brain_mask'\] are not read \(columns "
                                       r"image\[,mask\]\); name the brain masks' column 'mask'"):
    listing.list_scans(str(path))
  path.write_text("image,image\na.nii.gz,b.nii.gz\n")
  with pytest.raises(ValueError, match=r"column\(s\) \['image'\] appear twice in the header"):
    listing.list_scans(str(path))
  path.write_text("image,mask,subject\n\"b,1.nii.gz\",,s1\n")  # other columns beside a mask one
  assert [(s.image, s.mask) for s in listing.list_scans(str(path))[0]] == [
      (str(tmp_path / "b,1.nii.gz"), None)]


def test_an_empty_mask_suffix_needs_a_mask_folder(tmp_path):
  """Masks named like the scans (an images/ + masks/ layout) are found with an empty suffix when
  predict.mask is their folder; next to the scans, every file would be taken for a mask."""
  scans, masks = tmp_path / "images", tmp_path / "masks"
  scans.mkdir()
  masks.mkdir()
  for folder in (scans, masks):
    (folder / "case_001.nii.gz").write_bytes(b"")
  found, _ = listing.list_scans(str(scans), str(masks), "")
  assert [(s.name, s.mask) for s in found] == [("case_001", str(masks / "case_001.nii.gz"))]
  with pytest.raises(ValueError, match=r"^predict.mask_suffix is empty: the masks next to the "
                                       r"scans in .*images cannot be told from the scans"):
    listing.list_scans(str(scans), "", "")


def test_the_threshold_baseline_scores_the_eroded_brain_as_evaluation_does(tmp_path):
  """With evaluate.erode_mask > 0 evaluation gives the intensity threshold the eroded brain mask
  (the models' M); predict gave it the whole mask, so τ met another map on the brain's rim. An
  erosion that leaves nothing fails the scan, naming the setting, instead of an all-zero map."""
  pred = _threshold_predictor(None)
  image = np.full((8, 8, 2), 2.0, np.float32)
  mask = np.zeros((8, 8, 2), bool)
  mask[1:7, 1:7] = True
  infer = lambda: pred.infer([(image, pred.brain(mask, "sub-01.nii.gz"), 0)], None)[0]
  plain = infer()
  assert (plain > 0).sum() == 6 * 6 * 2
  pred.settings_config.evaluate.erode_mask = 1
  eroded = infer()
  assert (eroded > 0).sum() == 4 * 4 * 2 and np.all(eroded[2:6, 2:6] == 2.0)
  pred.settings_config.evaluate.erode_mask = 3
  with pytest.raises(ValueError, match=r"^--config.evaluate.erode_mask=3 erodes the brain mask of "
                                       r"sub-01.nii.gz to nothing"):
    infer()


class _Killed(BaseException):
  """Stands for a SIGKILL: nothing after it runs."""


def test_a_killed_run_leaves_no_summary_of_the_earlier_run(tmp_path, monkeypatch):
  """A run into the folder of an earlier one (another τ), killed after a scan's new map was
  written: the earlier run's predict_summary.json stayed, saying every scan was predicted with its
  τ, beside maps of the new run; now it is removed when the run starts (its own is written last)."""
  image, out = _scan(tmp_path), str(tmp_path / "out")
  summary = os.path.join(out, "predict_summary.json")
  scans, _ = listing.list_scans(image)
  c = predict_config.get_config("tiny")
  c.predict.checkpoint_dir, c.predict.input, c.predict.output = str(tmp_path), image, out
  monkeypatch.setattr(predict, "_start", lambda p, config: (scans, False, pred, 1))
  pred = _threshold_predictor(0.5)
  assert predict.run(c, out)["threshold"] == 0.5 and os.path.isfile(summary)
  pred = _threshold_predictor(0.6)
  real = nifti.save_volume

  def killed_after_the_map(path, *args, **kwargs):
    real(path, *args, **kwargs)
    if "_anomaly_map" in os.path.basename(path):
      raise _Killed()

  monkeypatch.setattr(nifti, "save_volume", killed_after_the_map)
  with pytest.raises(_Killed):
    predict.run(c, out)
  assert not os.path.exists(summary)


def test_a_scan_whose_brain_leaves_no_working_voxel_fails_instead_of_a_nan_score(tmp_path):
  """A single-slice (2-D) scan, or one whose brain is a few voxels, has no brain voxel on the
  ×2-downsampled working grid: it was "ok" with an all-zero map and a volume score of NaN (written
  into its record as the invalid JSON `NaN`)."""
  image = str(tmp_path / "slice.nii.gz")
  data = np.zeros((24, 26, 1), np.float32)
  data[1:-1, 1:-1] = np.random.default_rng(0).uniform(100, 300, (22, 24, 1))
  nib.save(nib.Nifti1Image(data, np.eye(4)), image)
  with pytest.raises(DataError, match=rf"^{image}: its brain \(image > 0, 528 voxel\(s\)\) leaves "
                                      r"no voxel on the models' working grid \(cropped to "
                                      r"\(32, 32, 16\), downsampled ×2\): a single-slice"):
    predict.predict(_threshold_predictor(0.5), image, None, str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


def test_a_probabilistic_brain_mask_is_refused_not_taken_as_every_voxel_above_0(tmp_path):
  """A brain probability map (0.01 outside the brain, 0.9 inside) or a mask resampled with
  linear interpolation was used as `mask > 0`: the whole field of view (or a grown brain) was
  scored, without a word. Whole-number labels ({0, 255}, tissue classes) are still brains."""
  image = _scan(tmp_path)
  inside = np.zeros((24, 26, 20), bool)
  inside[4:20, 4:22, 4:16] = True
  path = str(tmp_path / "sub-01_mask.nii.gz")
  nib.save(nib.Nifti1Image(np.where(inside, 0.9, 0.01).astype(np.float32), np.eye(4)), path)
  with pytest.raises(DataError) as e:
    scans_lib.load_scan(image, path)
  assert str(e.value) == (f"{path}: brain mask has 12480 voxel(s) with fractional values (0.01 to "
                          "0.9; a probability map or an interpolated mask?): the brain is every "
                          "voxel > 0, so binarise it first (e.g. > 0.5) and retry")
  for labels in (inside * np.uint8(255), inside * np.int16(3)):
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    np.testing.assert_array_equal(scans_lib.load_scan(image, path)[1], inside)


def test_a_scan_without_a_mask_whose_brain_is_not_image_above_0_is_refused(tmp_path):
  """Without a mask the brain is image > 0: an intensity-normalised (z-scored) scan was "ok" with
  the map of half its brain, without a word, and a scan with nothing above 0 was refused as
  'brain mask is empty', naming a mask nobody gave. Interpolation's small undershoot beside a
  skull-stripped brain's edge still predicts."""
  rng = np.random.default_rng(0)
  z, y, x = np.mgrid[:24, :26, :20]
  inside = ((z - 12) / 10) ** 2 + ((y - 13) / 11) ** 2 + ((x - 10) / 8) ** 2 < 1
  brain = np.where(inside, rng.uniform(100, 300, inside.shape), 0).astype(np.float32)
  paths = {}
  for name, data in (("zscored", np.where(inside, (brain - 200) / 58, 0)), ("negative", -brain),
                     ("undershoot", brain - 8 * (np.abs(z - 12) == 11))):
    paths[name] = str(tmp_path / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), paths[name])
  with pytest.raises(DataError, match=rf"^{paths['zscored']}: \d+ voxels are far below 0 \(down to "
                                      r"-1.7\d+; an intensity-normalised scan, e.g. z-scores\?\), "
                                      r"so image > 0 is not its brain; give its brain mask"):
    scans_lib.load_scan(paths["zscored"])
  with pytest.raises(DataError) as e:
    scans_lib.load_scan(paths["negative"])
  assert str(e.value) == (f"{paths['negative']}: no voxel is above 0, so its brain (image > 0, as "
                          "no mask was given) is empty; give its brain mask (predict.mask)")
  np.testing.assert_array_equal(scans_lib.load_scan(paths["undershoot"])[1], inside)
  # A scan of NaN only: it was 'no voxel is above 0 … give its brain mask', as if a mask could help.
  nib.save(nib.Nifti1Image(np.full((24, 26, 20), np.nan, np.float32), np.eye(4)),
           str(tmp_path / "nan.nii.gz"))
  with pytest.raises(DataError) as e:
    scans_lib.load_scan(str(tmp_path / "nan.nii.gz"))
  assert str(e.value) == (f"{tmp_path / 'nan.nii.gz'}: every voxel is NaN: no image to predict "
                          "on (a damaged or unfinished export?)")


def test_brain_outside_the_crop_box_is_counted_and_named_in_the_scans_status(tmp_path):
  """The crop box keeps 100 slices at 1 mm (here 16): a 256-slice scan's top and bottom of the
  brain got map 0, reported as 'ok' like a whole brain; the record counts those voxels and the
  table's message gives their share."""
  image = _scan(tmp_path)  # 20 slices of brain (image > 0)
  out = predict.predict(_threshold_predictor(0.5), image, None, str(tmp_path / "out"))
  assert (out["brain_voxels_input_grid"], out["brain_voxels_outside_crop"]) == (22 * 24 * 20,
                                                                               22 * 24 * 4)
  a = np.asarray(nib.load(out["anomaly_map"]).dataobj)
  assert np.all(a[:, :, [0, 1, 18, 19]] == 0) and np.all(a[1:-1, 1:-1, 2:18] > 0)
  assert predict._ok_message(out).endswith(", 20% of the brain outside the crop box (not scored)")
  small = str(tmp_path / "small.nii.gz")
  nib.save(nib.Nifti1Image(nib.load(image).get_fdata()[..., 2:18].astype(np.float32), np.eye(4)),
           small)
  out = predict.predict(_threshold_predictor(0.5), small, None, str(tmp_path / "out"))
  assert out["brain_voxels_outside_crop"] == 0 and "crop box" not in predict._ok_message(out)


def test_a_scan_listed_twice_is_named_as_such_not_asked_to_be_renamed(tmp_path):
  """The same file twice in a CSV (or as `./x` and `x`) was 'two scans named ...; rename one'."""
  path = tmp_path / "scans.csv"
  path.write_text("image\nok.nii.gz\n./ok.nii.gz\n")
  with pytest.raises(ValueError) as e:
    listing.list_scans(str(path))
  assert str(e.value) == (f"predict.input lists {tmp_path}/./ok.nii.gz twice; list each "
                          "scan once")
