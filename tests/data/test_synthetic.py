"""Tests for the synthetic cohort: layout, CSVs, folds, volumes, lesions, determinism, montage."""

from __future__ import annotations

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest

from sadm_jax.data import layout, synthetic
from sadm_jax.data.synthetic import cohort as cohort_lib

TINY = synthetic.CohortConfig.tiny(seed=0, num_workers=2)


@pytest.fixture(scope="module")
def cohort(tiny_cohort):
  """The tiny cohort (TINY), built once per session with 2 spawn workers (tests/data/conftest.py;
  test_marker_skips_regeneration checks its config is TINY's): (root, data_dir, summary)."""
  root, data_dir, summary, _ = tiny_cohort
  return root, data_dir, summary


def _read_csv(data_dir: str, split: str) -> tuple[list[str], list[list[str]]]:
  with open(os.path.join(data_dir, "splits", f"{split}.csv"), newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  return rows[0], rows[1:]


def _rows(data_dir: str, split: str) -> list[dict[str, str]]:
  header, body = _read_csv(data_dir, split)
  return [dict(zip(header, r)) for r in body]


def _load(data_dir: str, rel: str) -> nib.Nifti1Image:
  return nib.load(data_dir + "/" + rel)  # the authors' plain string join (double slash is fine)


def _all_rows(data_dir: str):
  for split in synthetic.split_indices(TINY):
    for row in _rows(data_dir, split):
      yield split, row


def test_layout_and_split_files(cohort):
  root, data_dir, summary = cohort
  assert not summary["skipped"]
  for sub in ("Train/ixi/t1", "Train/ixi/mask"):
    assert os.listdir(os.path.join(data_dir, sub))
  for ds in layout.PATHOLOGICAL:
    for kind in ("t1", "mask", "seg"):
      assert os.listdir(os.path.join(data_dir, "Test", ds, kind)), (ds, kind)
  expected = ([f"IXI_{t}_fold{k}" for t in ("train", "val") for k in range(5)] + ["IXI_test"] +
              [f"{d}_{s}" for d in layout.PATHOLOGICAL for s in ("val", "test")])
  written = sorted(os.listdir(os.path.join(data_dir, "splits")))
  assert written == sorted(f"{n}.csv" for n in expected)
  assert sorted(summary["splits"]) == sorted(expected)
  assert os.path.isfile(os.path.join(data_dir, cohort_lib.MARKER_NAME))
  no_temp = [f for _, _, files in os.walk(root) for f in files if ".tmp" in f]
  assert not no_temp


def test_csv_header_index_and_paths(cohort):
  _, data_dir, _ = cohort
  for split, (dataset, indices) in synthetic.split_indices(TINY).items():
    header, body = _read_csv(data_dir, split)
    meta = {"IXI": ["sex", "site"], "Brats21": ["grade"], "ATLAS_v2": ["site", "lesion_volume_ml"],
            "MSLUB": ["scanner"], "WMH": ["scanner"]}[dataset]
    assert header == ["", "img_name", *meta, "label", "age", "img_path", "mask_path", "seg_path"]
    assert [int(r[0]) for r in body] == list(range(len(indices)))
    for row in (dict(zip(header, r)) for r in body):
      float(row["age"])
      for col in ("img_path", "mask_path") + (() if dataset == "IXI" else ("seg_path",)):
        assert row[col].startswith("/"), row[col]
        assert os.path.isfile(data_dir + "/" + row[col]), row[col]
      stem = {"IXI": "/Train/ixi/", "Brats21": "/Test/Brats21/"}.get(dataset, f"/Test/{dataset}/")
      assert row["img_path"] == f"{stem}t1/{row['img_name']}_t1.nii.gz"


def test_ids_follow_dataset_styles(cohort):
  _, data_dir, _ = cohort
  names = {split: [r["img_name"] for r in _rows(data_dir, split)] for split in ("IXI_test",
           "Brats21_val", "ATLAS_v2_val", "MSLUB_val", "WMH_val")}
  assert names["IXI_test"] == ["IXI006-Demo-0006"]
  assert names["Brats21_val"] == ["BraTS2021_00001"]
  assert names["ATLAS_v2_val"][0].startswith("sub-r") and names["ATLAS_v2_val"][0].endswith("s001")
  assert names["MSLUB_val"] == ["MSLUB_patient001"]
  assert names["WMH_val"] == ["WMH_001"]


def test_labels_and_seg_paths(cohort):
  _, data_dir, _ = cohort
  for split, row in _all_rows(data_dir):
    if split.startswith("IXI"):
      assert row["label"] == "0" and row["seg_path"] == ""
    else:
      assert row["label"] == "1" and row["seg_path"].endswith("_seg.nii.gz")


def test_ixi_folds_are_a_kfold_with_disjoint_test(cohort):
  _, data_dir, _ = cohort
  names = lambda split: {r["img_name"] for r in _rows(data_dir, split)}  # noqa: E731
  pool = set()
  for k in range(layout.NUM_FOLDS):
    train, val = names(f"IXI_train_fold{k}"), names(f"IXI_val_fold{k}")
    assert val and train and not train & val
    assert not pool & val  # val folds are pairwise disjoint
    pool |= val
  for k in range(layout.NUM_FOLDS):
    assert names(f"IXI_train_fold{k}") | names(f"IXI_val_fold{k}") == pool
  assert len(pool) == TINY.n_ixi_trainval
  assert names("IXI_test") and not names("IXI_test") & pool
  for ds in layout.PATHOLOGICAL:
    assert not names(f"{ds}_val") & names(f"{ds}_test")


def test_volumes_are_valid_and_lesions_inside_the_brain(cohort):
  _, data_dir, summary = cohort
  seen = set()
  for split, row in _all_rows(data_dir):
    if row["img_name"] in seen:
      continue
    seen.add(row["img_name"])
    dataset = "IXI" if split.startswith("IXI") else split.rsplit("_", 1)[0]
    t1_img, mask_img = _load(data_dir, row["img_path"]), _load(data_dir, row["mask_path"])
    t1 = np.asarray(t1_img.dataobj)
    mask = np.asarray(mask_img.dataobj)
    assert t1.ndim == 3 and t1.dtype == np.float32 and mask.dtype == np.uint8
    assert np.allclose(t1_img.header.get_zooms(), 1.0)
    assert np.allclose(mask_img.affine, t1_img.affine)
    assert set(np.unique(mask)) == {0, 1}
    assert np.all(t1[mask == 0] == 0) and np.all(t1 >= 0)  # skull-stripped
    assert 100 < np.percentile(t1[mask > 0], 50) < 3000  # scanner-like range
    if dataset == "IXI":
      continue
    seg_img = _load(data_dir, row["seg_path"])
    seg = np.asarray(seg_img.dataobj)
    assert seg.dtype == np.uint8 and seg.shape == t1.shape
    assert np.allclose(seg_img.affine, t1_img.affine)
    allowed = {0, 1, 2, 4} if dataset == "Brats21" else {0, 1}
    assert set(np.unique(seg)) <= allowed and np.any(seg > 0), (row["img_name"], np.unique(seg))
    assert not np.any((seg > 0) & (mask == 0)), row["img_name"]
    if dataset == "Brats21":
      assert 2 in np.unique(seg)  # edema is always present
  assert len(seen) == sum(summary["subjects"].values())
  assert all(v["min"] > 0 for v in summary["lesion_voxels"].values())


def test_lesions_are_darker_than_healthy_white_matter(cohort):
  _, data_dir, _ = cohort
  for dataset in layout.PATHOLOGICAL:
    row = _rows(data_dir, f"{dataset}_val")[0]
    t1, mask, seg = (np.asarray(_load(data_dir, row[c]).dataobj)
                     for c in ("img_path", "mask_path", "seg_path"))
    lesion = np.median(t1[seg > 0])
    brain = np.percentile(t1[(mask > 0) & (seg == 0)], 90)  # ~white matter
    assert lesion < 0.95 * brain, dataset


def test_same_seed_reproduces_files_and_rows_in_process(cohort):
  """The 2-worker build equals an in-process re-synthesis: byte-identical arrays, same CSV rows."""
  _, data_dir, _ = cohort
  for split, dataset, position in (("IXI_test", "IXI", 0), ("Brats21_val", "Brats21", 0),
                                   ("ATLAS_v2_test", "ATLAS_v2", 0)):
    row = _rows(data_dir, split)[position]
    subject_index = synthetic.split_indices(TINY)[split][1][position]
    s = synthetic.make_subject(TINY.seed, dataset, subject_index)
    assert {k: str(v) for k, v in synthetic.subject_row(s).items()} == {
        k: v for k, v in row.items() if k}
    files = {"t1": row["img_path"], "mask": row["mask_path"], "seg": row["seg_path"]}
    for kind, rel in files.items():
      if rel:
        stored = np.asarray(_load(data_dir, rel).dataobj)
        assert stored.tobytes() == getattr(s, kind).tobytes(), (split, kind)


def test_different_seed_differs_and_splits_are_deterministic(cohort):
  _, data_dir, _ = cohort
  row = _rows(data_dir, "WMH_val")[0]
  other = synthetic.make_subject(TINY.seed + 1, "WMH", 0)
  assert np.asarray(_load(data_dir, row["img_path"]).dataobj).tobytes() != other.t1.tobytes()
  assert np.asarray(_load(data_dir, row["seg_path"]).dataobj).tobytes() != other.seg.tobytes()
  assert synthetic.split_indices(TINY) == synthetic.split_indices(synthetic.CohortConfig.tiny(num_workers=1))
  big = synthetic.CohortConfig.default()
  other = synthetic.split_indices(synthetic.CohortConfig.default(seed=1))
  assert synthetic.split_indices(big)["IXI_val_fold0"] != other["IXI_val_fold0"]


@pytest.mark.skipif(not os.environ.get("SADM_SLOW_TESTS"), reason="set SADM_SLOW_TESTS=1 (~30 s)")
def test_full_rebuild_is_byte_identical(cohort, tmp_path):
  """A second build (1 process) equals the 2-worker build: every CSV and every NIfTI array."""
  _, data_dir, _ = cohort
  synthetic.generate_cohort(tmp_path, synthetic.CohortConfig.tiny(seed=0, num_workers=1))
  other = os.path.join(tmp_path, "Data")
  for split in synthetic.split_indices(TINY):
    path = os.path.join("splits", f"{split}.csv")
    with open(os.path.join(data_dir, path), "rb") as f1:
      with open(os.path.join(other, path), "rb") as f2:
        assert f1.read() == f2.read(), split
  for _, row in _all_rows(data_dir):
    for col in ("img_path", "mask_path", "seg_path"):
      if row[col]:
        a = np.asarray(_load(data_dir, row[col]).dataobj)
        b = np.asarray(_load(other, row[col]).dataobj)
        assert a.tobytes() == b.tobytes(), row[col]


def test_marker_skips_regeneration(cohort):
  root, data_dir, summary = cohort
  csv_path = os.path.join(data_dir, "splits", "IXI_test.csv")
  before = os.stat(csv_path).st_mtime_ns
  again = synthetic.generate_cohort(root, synthetic.CohortConfig.tiny(seed=0, num_workers=1))
  assert again["skipped"] and again["splits"] == summary["splits"]
  assert os.stat(csv_path).st_mtime_ns == before
  with open(os.path.join(data_dir, cohort_lib.MARKER_NAME), encoding="utf-8") as f:
    marker = json.load(f)
  assert marker["config"] == TINY.identity() and "num_workers" not in marker["config"]


def test_config_validation():
  with pytest.raises(ValueError, match="n_ixi_trainval"):
    synthetic.CohortConfig(n_ixi_trainval=4)
  with pytest.raises(ValueError, match="n_wmh_test"):
    synthetic.CohortConfig.tiny(n_wmh_test=0)
  with pytest.raises(ValueError, match="unknown data set"):
    synthetic.make_subject(0, "BraTS", 0)


def test_montage_png(cohort, tmp_path):
  from PIL import Image

  root, _, _ = cohort
  out = synthetic.write_montage(root, tmp_path / "montage.png")
  with Image.open(out) as im:
    assert im.mode == "RGB"
    width, height = im.size
    pixels = np.asarray(im)
  assert height >= 5 * 150 and width >= 3 * 150  # 5 data sets x 3 views
  red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
  assert red.sum() > 50  # lesion contours were drawn


def test_a_folder_with_split_files_but_no_marker_is_refused_untouched(tmp_path):
  """Was: `--config.demo.root=<a real DATA_DIR>` overwrote its split CSVs with the synthetic
  cohort's."""
  from sadm_jax.data.errors import DataError
  csv = tmp_path / "Data" / "splits" / "IXI_test.csv"
  csv.parent.mkdir(parents=True)
  csv.write_text("real\n")
  with pytest.raises(DataError, match=r"holds split files .* but no \.cohort_complete\.json: not "
                     "a demo cohort; give a new or empty folder"):
    synthetic.generate_cohort(tmp_path, synthetic.CohortConfig.tiny(seed=0, num_workers=1))
  assert sorted(p.name for p in tmp_path.rglob("*")) == ["Data", "IXI_test.csv", "splits"]
  assert csv.read_text() == "real\n"
