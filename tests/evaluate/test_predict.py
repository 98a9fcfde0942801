"""The predict stage in one process: outputs on the scan's grid and affine, orientation, errors."""

from __future__ import annotations

import json
import os
import shutil
import types

import nibabel as nib
import numpy as np
import pytest

from configs import predict as predict_config
from sadm_jax import config as config_lib
from sadm_jax import main as main_lib
from sadm_jax.data.errors import DataError
from sadm_jax.data.preprocess import PreprocessConfig, preprocess_volume
from sadm_jax.evaluate import listing, predict, predictor
from sadm_jax.evaluate import scans as scans_lib
from sadm_jax.train.checkpoint import RunError
from tests.data import fake_data
from tests.evaluate.conftest import scan_config


def _single(summary):
  """The prediction record of a one-scan run."""
  assert summary["num_scans"] == 1 and summary["scans"][0]["status"] == "ok", summary
  return summary["scans"][0]["prediction"]


def test_predict_from_an_evaluation_writes_outputs_on_the_input_grid(evaluation, scan, tmp_path):
  workdir, _ = evaluation
  out = _single(main_lib.run_stage(scan_config(workdir, scan, tmp_path), str(tmp_path)))
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


def test_evaluated_models_are_found_moved_and_refused_when_changed(evaluation, tiny_sadm_dir,
                                                                    tiny_cddpm_dir, tmp_path):
  """predict applies an evaluation's τ only to the weights that evaluation tuned it for
  (models.json's `segnet_key` / `cddpm_key`), and finds a model moved or copied together with the
  evaluation at its recorded relative path."""
  import shutil
  workdir, _ = evaluation
  with open(os.path.join(workdir, "eval", "models.json")) as f:
    runs = {r["id"]: r for r in json.load(f)["runs"]}
  sadm_row, cddpm_row = runs["sadm/draem/fold0"], runs["cddpm/none/fold0"]
  assert sadm_row["segnet_key"] and sadm_row["cddpm_key"]
  assert sadm_row["relative"] == {"sadm_workdir": os.path.relpath(tiny_sadm_dir, workdir)}
  assert cddpm_row["relative"] == {"cddpm_workdir": os.path.relpath(tiny_cddpm_dir, workdir)}
  ckpt = predictor._evaluated_model(sadm_row, "sadm_workdir", workdir, predictor._sadm_keys)
  assert ckpt.run.workdir == os.path.abspath(tiny_sadm_dir)
  run = predictor._evaluated_model(cddpm_row, "cddpm_workdir", workdir, predictor._cddpm_keys)
  assert run.workdir == os.path.abspath(tiny_cddpm_dir)
  # The evaluation and its SADM run copied elsewhere together: the copy is the one opened.
  rel = sadm_row["relative"]["sadm_workdir"]
  moved = tmp_path.joinpath(*[f"d{i}" for i in range(rel.split(os.sep).count(".."))], "eval")
  moved_sadm = os.path.normpath(os.path.join(moved, rel))
  assert moved_sadm.startswith(str(tmp_path))
  shutil.copytree(tiny_sadm_dir, moved_sadm)
  ckpt = predictor._evaluated_model(sadm_row, "sadm_workdir", str(moved), predictor._sadm_keys)
  assert ckpt.run.workdir == moved_sadm
  # Weights other than the evaluated ones (e.g. trained further since): refused, in one line.
  other = dict(sadm_row, segnet_key="0123456789abcdef")
  with pytest.raises(RunError, match=r"sadm/draem/fold0 of this evaluation changed since it was "
                                     r"evaluated .*segnet_key 0123456789abcdef"):
    predictor._evaluated_model(other, "sadm_workdir", str(moved), predictor._sadm_keys)
  gone = dict(sadm_row, sadm_workdir=str(tmp_path / "nowhere"), relative={})
  with pytest.raises(RunError, match="is gone or unusable"):
    predictor._evaluated_model(gone, "sadm_workdir", workdir, predictor._sadm_keys)


def test_changed_model_of_an_evaluation_is_one_error_line_from_the_cli(evaluation, scan,
                                                                        tmp_path):
  """The CLI: an evaluation whose SADM run no longer holds the evaluated SegUnet weights (here its
  models.json records others) is refused in one line, exit 2, with nothing written."""
  import shutil
  import subprocess
  import sys
  from tests.helpers import REPO
  workdir, _ = evaluation
  copy = tmp_path / "evaluation"
  (copy / "eval").mkdir(parents=True)
  shutil.copy(os.path.join(workdir, "eval", "config.json"), copy / "eval" / "config.json")
  with open(os.path.join(workdir, "eval", "models.json")) as f:
    saved = json.load(f)
  for r in saved["runs"]:
    if r["id"] == "sadm/draem/fold0":
      r["segnet_key"] = "0123456789abcdef"
  (copy / "eval" / "models.json").write_text(json.dumps(saved))
  out = tmp_path / "out"
  res = subprocess.run(
      [sys.executable, "-m", "sadm_jax.main", "--config=configs/predict.py", f"--workdir={out}",
       f"--config.predict.checkpoint_dir={copy}", f"--config.predict.input={scan['image']}",
       f"--config.predict.output={out}", "--config.predict.run=sadm/draem/fold0"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert res.returncode == 2, res.stderr[-3000:]
  assert "Traceback" not in res.stderr
  errors = [l for l in res.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and (f"{copy}: run sadm/draem/fold0 of this evaluation changed since "
                               "it was evaluated") in errors[0], res.stderr[-3000:]
  assert "segnet_key 0123456789abcdef" in errors[0]
  assert not out.exists() or not any(out.iterdir())


def test_working_grid_maps_land_on_the_right_input_voxels(scan):
  """The preprocessed brain mask, carried back by the affines, matches the input mask."""
  for spacing in (1.0, 1.25):
    img, mask = scans_lib.load_scan(scan["image"], scan["mask"])
    affine = img.affine @ np.diag([1.0, 1.0, spacing, 1.0])
    work = preprocess_volume(img.data, mask, None, affine,
                             PreprocessConfig(crop_size=(128, 128, 16)))
    back = scans_lib.to_input_grid(work.mask, work.affine, affine, mask.shape, order=0)
    zs = np.flatnonzero(back.any((0, 1)))  # the axial slab kept by the crop
    inside = mask[..., zs[0]:zs[-1] + 1] > 0
    got = back[..., zs[0]:zs[-1] + 1] > 0
    dice = 2 * (inside & got).sum() / (inside.sum() + got.sum())
    assert dice > 0.93, (spacing, dice)


def test_predict_from_a_sadm_workdir_with_explicit_threshold(tiny_sadm_dir, scan, tmp_path):
  # mask = image > 0
  c = scan_config(tiny_sadm_dir, {"image": scan["image"]}, tmp_path, threshold=0.5)
  out = _single(main_lib.run_stage(c, str(tmp_path)))
  assert out["threshold"] == 0.5 and out["threshold_source"] == "predict.threshold"
  assert out["mask"] == "image > 0" and out["method"] == "sadm"
  assert nib.load(out["anomaly_mask"]).shape == nib.load(scan["image"]).shape
  # Without any threshold only the map is written.
  c = scan_config(tiny_sadm_dir, scan, tmp_path / "nothr")
  out = _single(main_lib.run_stage(c, str(tmp_path)))
  assert "anomaly_mask" not in out and os.path.isfile(out["anomaly_map"])


def test_bad_inputs_raise_data_errors_naming_the_file(scan, tmp_path):
  four_d = str(tmp_path / "four_d.nii.gz")
  fake_data.save(four_d, np.zeros((40, 44, 30, 2), np.float32))
  with pytest.raises(DataError, match="four_d.nii.gz: expected a 3-D volume"):
    scans_lib.load_scan(four_d)
  small = str(tmp_path / "small_mask.nii.gz")
  fake_data.save(small, np.ones((40, 44, 29), np.uint8))
  with pytest.raises(DataError, match="small_mask.nii.gz: mask shape .* differs from the image"):
    scans_lib.load_scan(scan["image"], small)
  moved = str(tmp_path / "moved_mask.nii.gz")
  mask = nib.load(scan["mask"]).get_fdata().astype(np.uint8)
  fake_data.save(moved, mask, np.diag([2, 2, 2, 1.0]))
  with pytest.raises(DataError, match="moved_mask.nii.gz: mask affine .* not the same grid"):
    scans_lib.load_scan(scan["image"], moved)
  thick = str(tmp_path / "thick.nii.gz")
  fake_data.save(thick, np.ones((40, 44, 10), np.float32), np.diag([1, 1, 5.0, 1]))
  with pytest.raises(DataError, match="thick.nii.gz: voxel spacing .* coarser than 3.0 mm"):
    scans_lib.load_scan(thick)
  odd = str(tmp_path / "odd.nii.gz")
  img = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4))
  img.set_qform(np.diag([2, 2, 2, 1.0]), code=1)
  img.set_sform(np.eye(4), code=1)
  nib.save(img, odd)
  with pytest.raises(DataError, match="odd.nii.gz: inconsistent header"):
    scans_lib.load_scan(odd)


def test_predict_needs_a_checkpoint_and_an_input(tmp_path):
  with pytest.raises(ValueError, match="checkpoint_dir"):
    main_lib.run_stage(predict_config.get_config(), str(tmp_path))
  c = predict_config.get_config()
  c.predict.checkpoint_dir, c.predict.input = str(tmp_path), "x.nii.gz"
  with pytest.raises(RunError) as e:  # a ValueError: one line and exit code 2 from the CLI
    predictor.load_predictor(str(tmp_path), config_lib.resolve(c))
  assert str(e.value) == (f"{tmp_path}: neither an evaluation workdir (eval/models.json) nor a "
                          "training workdir with a best checkpoint (best/)")


def test_damaged_evaluation_records_are_named(tmp_path):
  """An evaluation workdir whose eval/config.json is gone or eval/models.json is cut short."""
  c = config_lib.resolve(predict_config.get_config())
  (tmp_path / "eval").mkdir()
  models = tmp_path / "eval" / "models.json"
  models.write_text('{"runs": []}')
  with pytest.raises(RunError) as e:
    predictor.load_predictor(str(tmp_path), c)
  assert str(e.value) == (f"{tmp_path / 'eval' / 'config.json'}: unreadable (No such file or "
                          "directory); run the evaluate stage in that workdir again")
  (tmp_path / "eval" / "config.json").write_text("{}")
  with pytest.raises(RunError, match=r"config.json: not an evaluation's config \(no "):
    predictor.load_predictor(str(tmp_path), c)
  (tmp_path / "eval" / "config.json").write_text(json.dumps(predict_config.get_config().to_dict()))
  models.write_text('{"runs": [')
  with pytest.raises(RunError, match=f"^{models}: unreadable \\(Expecting value"):
    predictor.load_predictor(str(tmp_path), c)


def _flip_xy(image, affine):
  """The same scan stored with voxel axes 0 and 1 reversed: RAS → LPS, world points unchanged."""
  n = image.shape
  flip = np.array([[-1, 0, 0, n[0] - 1], [0, -1, 0, n[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1.0]])
  return np.ascontiguousarray(image[::-1, ::-1]), affine @ flip


def test_ras_and_lps_copies_give_the_same_map_in_world_space(tiny_sadm_dir, tmp_path):
  image, mask, _ = fake_data.make_subject(np.random.default_rng(7), lesion=True)
  ras = np.diag([1.0, 1.0, 1.0, 1.0])
  ras[:3, 3] = (-20.0, -22.0, -15.0)
  paths = {}
  for codes, (img, aff), (msk, _) in (("RAS", (image, ras), (mask, ras)),
                                      ("LPS", _flip_xy(image, ras), _flip_xy(mask, ras))):
    os.makedirs(tmp_path / codes)
    paths[codes] = (str(tmp_path / codes / "sub-07_T1w.nii.gz"),  # same name: same noise seed
                    str(tmp_path / codes / "sub-07_mask.nii.gz"))
    fake_data.save(paths[codes][0], img, aff)
    fake_data.save(paths[codes][1], msk, aff)
    assert "".join(nib.aff2axcodes(nib.load(paths[codes][0]).affine)) == codes
  c = config_lib.resolve(scan_config(tiny_sadm_dir, {"image": "unused"}, tmp_path, threshold=0.5))
  pred = predictor.load_predictor(tiny_sadm_dir, c)
  # The tiny runs were trained on RAS data and recorded it; older runs fall back to RAS (logged).
  assert pred.orientation == "RAS" and pred.orientation_source.startswith("training data of")
  old = types.SimpleNamespace(meta={"run": {}}, workdir="old")  # records no orientation
  assert predictor._trained_orientation(old)[0] == "RAS"
  assert predictor._trained_orientation(None)[1] == \
      "assumed (the threshold baseline has no trained model)"
  lps = types.SimpleNamespace(meta={"run": {"orientation": "LPS"}}, workdir="lps")
  assert predictor._trained_orientation(lps) == ("LPS", "training data of lps")
  outs = {k: predict.predict(pred, *paths[k], str(tmp_path / k / "out")) for k in paths}
  assert outs["LPS"]["input_orientation"] == "LPS" and outs["LPS"]["model_orientation"] == "RAS"
  maps = {k: nib.load(outs[k]["anomaly_map"]) for k in outs}
  masks = {k: nib.load(outs[k]["anomaly_mask"]) for k in outs}
  for k in paths:  # each output on its input's own voxel order and affine
    np.testing.assert_allclose(maps[k].affine, nib.load(paths[k][0]).affine)
    np.testing.assert_allclose(masks[k].affine, nib.load(paths[k][0]).affine)
  a_ras = maps["RAS"].get_fdata()
  a_lps = maps["LPS"].get_fdata()[::-1, ::-1]  # LPS voxel order → RAS voxel order
  assert a_ras.max() > a_ras.min()
  assert np.abs(a_ras - a_lps).max() <= 1e-5 * (a_ras.max() - a_ras.min())
  np.testing.assert_array_equal(masks["RAS"].get_fdata(), masks["LPS"].get_fdata()[::-1, ::-1])


def test_scans_without_an_orientation_are_refused_in_one_line(scan, tmp_path):
  data = nib.load(scan["image"]).get_fdata().astype(np.float32)
  codes0 = nib.Nifti1Image(data, np.eye(4))
  codes0.set_qform(None, code=0)
  codes0.set_sform(None, code=0)
  nib.save(codes0, str(tmp_path / "nocodes.nii.gz"))
  assert nib.load(str(tmp_path / "nocodes.nii.gz")).header["sform_code"] == 0
  with pytest.raises(DataError, match=r"nocodes.nii.gz: orientation unknown: qform_code and "
                                      r"sform_code are both 0") as e:
    scans_lib.load_scan(str(tmp_path / "nocodes.nii.gz"))
  assert "\n" not in str(e.value)
  flat = np.eye(4)
  flat[2, 2] = 0.0
  singular = nib.Nifti1Image(data, np.eye(4))
  singular.set_sform(flat, code=1)
  nib.save(singular, str(tmp_path / "singular.nii.gz"))
  with pytest.raises(DataError, match="singular.nii.gz: orientation unknown: the header affine is "
                                      "singular"):
    scans_lib.load_scan(str(tmp_path / "singular.nii.gz"))


def test_csv_input_predicts_each_scan_and_reports_the_bad_one(tiny_cddpm_dir, scan, tmp_path):
  """A CSV of (image, mask): good scans are written per scan; a scan without orientation fails.
  Two scans with the same file name in different folders (`p1/sub-01_T1w.nii.gz`,
  `p2/sub-01_T1w.nii.gz`, as in per-subject folders) are named by their folders, and each gets
  its own outputs (they were refused: 'two scans named ...; rename one')."""
  data = nib.load(scan["image"]).get_fdata().astype(np.float32)
  bad = nib.Nifti1Image(data, np.eye(4))
  bad.set_qform(None, code=0)
  bad.set_sform(None, code=0)
  nib.save(bad, str(tmp_path / "unoriented.nii.gz"))
  for folder in ("p1", "p2"):
    (tmp_path / folder).mkdir()
    for key in ("image", "mask"):
      shutil.copy(scan[key], tmp_path / folder)
  csv_path = tmp_path / "scans.csv"
  csv_path.write_text("image,mask\np1/sub-01_T1w.nii.gz,p1/sub-01_mask.nii.gz\n"
                      "unoriented.nii.gz,\np2/sub-01_T1w.nii.gz,p2/sub-01_mask.nii.gz\n")
  c = scan_config(tiny_cddpm_dir, {"image": str(csv_path)}, tmp_path / "out", threshold=0.5)
  with pytest.raises(DataError, match=r"^predict: 1 of 3 scan\(s\) failed: unoriented \(.*"
                                      r"unoriented.nii.gz: orientation unknown") as e:
    main_lib.run_stage(c, str(tmp_path))
  summary = e.value.summary
  with open(tmp_path / "out" / "predict_summary.json") as f:
    assert json.load(f)["scans"] == json.loads(json.dumps(summary["scans"]))
  good, failed, other = summary["scans"]
  assert [(r["scan"], r["status"]) for r in (good, failed, other)] == [
      ("p1_sub-01_T1w", "ok"), ("unoriented", "failed"), ("p2_sub-01_T1w", "ok")]
  assert good["mask"] == str(tmp_path / "p1" / "sub-01_mask.nii.gz")
  assert failed["output_dir"] == ""
  maps = []
  for rec, name in ((good, "p1_sub-01_T1w"), (other, "p2_sub-01_T1w")):
    out_dir = tmp_path / "out" / name
    assert rec["output_dir"] == str(out_dir)
    assert sorted(os.listdir(out_dir)) == [f"{name}_{k}" for k in (
        "anomaly_map.nii.gz", "anomaly_mask.nii.gz", "prediction.json")]
    for k in ("anomaly_map", "anomaly_mask"):
      assert nib.load(str(out_dir / f"{name}_{k}.nii.gz")).shape == nib.load(scan["image"]).shape
    maps.append(np.asarray(nib.load(str(out_dir / f"{name}_anomaly_map.nii.gz")).dataobj))
  np.testing.assert_array_equal(*maps)  # the same file: the same map, written twice
  assert not os.path.exists(tmp_path / "out" / "unoriented")


def test_list_scans_rules(tmp_path):
  """Folder, list and CSV inputs; the mask naming rule; specification errors in one line."""
  for name in ("b_T1w.nii.gz", "b_mask.nii.gz", "a.nii", "a_mask.nii.gz", "c_T1w.nii.gz",
               "notes.txt"):
    (tmp_path / name).write_bytes(b"")
  scans, batch = listing.list_scans(str(tmp_path))
  assert batch and [(s.name, s.mask and os.path.basename(s.mask)) for s in scans] == [
      ("a", "a_mask.nii.gz"), ("b_T1w", "b_mask.nii.gz"), ("c_T1w", None)]
  scans, batch = listing.list_scans("x/s.nii.gz")
  assert not batch and scans == [listing.Scan("s", "x/s.nii.gz", None)]
  scans, batch = listing.list_scans("p.nii.gz, q.nii", "pm.nii.gz,qm.nii.gz")
  assert batch and [(s.name, s.mask) for s in scans] == [("p", "pm.nii.gz"), ("q", "qm.nii.gz")]
  with pytest.raises(ValueError, match="lists 1 masks for 2 scans"):
    listing.list_scans("p.nii.gz,q.nii", "pm.nii.gz")
  with pytest.raises(ValueError, match="two scans named 'p'"):
    listing.list_scans("x/p.nii.gz,x/P.nii.gz")
  (tmp_path / "bad.csv").write_text("img,msk\nx,y\n")
  with pytest.raises(ValueError, match="columns image"):
    listing.list_scans(str(tmp_path / "bad.csv"))

