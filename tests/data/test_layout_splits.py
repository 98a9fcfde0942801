"""Tests for DATA_DIR resolution, split CSV parsing and split hygiene."""

import os
import shutil

import pytest

from sadm_jax.data import layout, splits
from sadm_jax.data.errors import DataError
from tests.data import fake_data


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("dd"))
  fake_data.write_data_dir(root, data_level=True, n_ixi=8, n_patho=2)
  return root


def test_resolves_authors_layout_and_flat_layout(data_dir, tmp_path):
  root = layout.resolve_data_root(data_dir)
  assert root.layout == "authors" and root.base == os.path.join(data_dir, "Data")
  assert "Data/ level" in root.describe()
  assert set(root.available_splits()) == {*(f"IXI_{t}_fold{k}" for t in ("train", "val")
                                            for k in range(5)), "IXI_test", "Brats21_val",
                                          "Brats21_test", "ATLAS_v2_val", "ATLAS_v2_test"}
  flat = str(tmp_path / "flat")
  shutil.copytree(os.path.join(data_dir, "Data"), flat)
  root2 = layout.resolve_data_root(flat)
  assert root2.layout == "flat" and root2.base == flat
  rows = splits.read_split(root2, "Brats21_val")
  assert all(os.path.isfile(r.img) for r in rows)


def test_missing_data_dir_and_split_dir(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    layout.resolve_data_root(str(tmp_path / "nope"))
  with pytest.raises(DataError, match="no split directory"):
    layout.resolve_data_root(str(tmp_path))
  with pytest.raises(DataError, match="data_dir is empty"):
    layout.resolve_data_root("")


def test_missing_split_file(data_dir):
  root = layout.resolve_data_root(data_dir)
  os.rename(root.split_csv("ATLAS_v2_test"), root.split_csv("ATLAS_v2_test") + ".bak")
  try:
    with pytest.raises(DataError, match=r"ATLAS_v2_test\.csv: split file not found"):
      splits.read_split(root, "ATLAS_v2_test")
  finally:
    os.rename(root.split_csv("ATLAS_v2_test") + ".bak", root.split_csv("ATLAS_v2_test"))


def test_read_split_rows(data_dir):
  root = layout.resolve_data_root(data_dir)
  rows = splits.read_split(root, "Brats21_test")
  r = rows[0]
  assert (r.dataset, r.split_type, r.label, r.index) == ("Brats21", "test", 1, 0)
  assert r.img == os.path.join(data_dir, "Data", "Test", "Brats21", "t1", f"{r.name}_t1.nii.gz")
  ixi = splits.read_split(root, "IXI_train_fold0")
  assert all(x.seg is None and x.label == 0 for x in ixi)


def test_csv_without_required_columns(tmp_path):
  base = tmp_path / "Data"
  fake_data.write_csv(str(base / "splits" / "IXI_test.csv"), [["a", "/x.nii.gz"]],
                      header=["", "img_name", "img_path"])
  root = layout.resolve_data_root(str(tmp_path))
  with pytest.raises(DataError, match=r"IXI_test\.csv: missing required column\(s\) label, age, "
                                      r"mask_path, seg_path"):
    splits.read_split(root, "IXI_test")


def test_path_leaving_data_dir_is_refused(tmp_path):
  base = tmp_path / "Data"
  fake_data.write_csv(str(base / "splits" / "IXI_test.csv"),
                      [["a", "F", 0, 30, "/../../etc/passwd", "/m.nii.gz", ""]])
  root = layout.resolve_data_root(str(tmp_path))
  with pytest.raises(DataError, match=r"IXI_test\.csv: line 2: path '/\.\./\.\./etc/passwd' "
                                      "leaves DATA_DIR"):
    splits.read_split(root, "IXI_test")
  assert layout.resolve_csv_path("/d", "/Train/x.nii.gz") == "/d/Train/x.nii.gz"
  assert layout.resolve_csv_path("/d", "") is None


def test_modality_replaced_in_file_name_only():
  # Q19: the reference replaced every 't1' in the whole path, breaking e.g. '/data/t1study/'.
  p = "/data/t1study/Test/Brats21/t1/BraTS2021_00001_t1.nii.gz"
  assert layout.with_modality(p, "t2") == "/data/t1study/Test/Brats21/t2/BraTS2021_00001_t2.nii.gz"
  assert layout.with_modality(p, "t1") == p
  assert layout.with_modality("/x/IXI002-Guys-0828_t1.nii.gz", "t2") == "/x/IXI002-Guys-0828_t2.nii.gz"


def test_parse_split_names():
  assert layout.parse_split_name("IXI_val_fold3") == layout.SplitName("IXI_val_fold3", "IXI", "val", 3)
  assert layout.parse_split_name("WMH_test").fold is None
  with pytest.raises(ValueError, match="unknown split name"):
    layout.parse_split_name("IXI_training")


def _row(name, split, img):
  info = layout.parse_split_name(split)
  return splits.Row(name, split, info.dataset, info.split_type, 0, 0, 30.0, img, img + "m", None, "x")


def test_clean_splits_removes_duplicates_and_overlaps():
  s = {
      "IXI_train_fold0": [_row(n, "IXI_train_fold0", f"/{n}") for n in ["a", "b", "b", "c", "t"]],
      "IXI_val_fold0": [_row(n, "IXI_val_fold0", f"/{n}") for n in ["c", "d"]],
      "IXI_val_fold1": [_row(n, "IXI_val_fold1", f"/{n}") for n in ["a"]],  # other fold: no clash
      "IXI_test": [_row(n, "IXI_test", f"/{n}") for n in ["t", "u"]],
  }
  out, rep = splits.clean_splits(s, apply=True)
  assert [r.name for r in out["IXI_train_fold0"]] == ["a", "b"]
  assert [r.name for r in out["IXI_val_fold0"]] == ["c", "d"]  # val outranks train
  assert [r.name for r in out["IXI_val_fold1"]] == ["a"]
  assert [r.name for r in out["IXI_test"]] == ["t", "u"]
  assert rep.summary("IXI_train_fold0") == {"duplicate_rows": 1, "dropped": 3,
                                            "overlaps": {"IXI_val_fold0": 1, "IXI_test": 1}}
  assert rep.summary("IXI_val_fold0")["overlaps"] == {"IXI_train_fold0": 1}
  # Faithful: everything reported, nothing changed (duplicates kept too).
  same, rep2 = splits.clean_splits(s, apply=False)
  assert [r.name for r in same["IXI_train_fold0"]] == ["a", "b", "b", "c", "t"]
  assert rep2.summary("IXI_train_fold0")["duplicate_rows"] == 1
  assert rep2.summary("IXI_train_fold0")["dropped"] == 0



def test_loading_some_splits_still_keeps_them_disjoint_from_the_others(data_dir, tmp_path):
  """A stage loads only the splits it trains on (IXI_train/val_fold0, or Brats21_val for weak
  supervision); an image also listed in the data set's test split must still leave them (Q17),
  as when every split is loaded (prepare, evaluation). Faithful (clean=False): rows unchanged."""
  base = os.path.join(str(tmp_path), "Data")
  shutil.copytree(os.path.join(data_dir, "Data", "splits"), os.path.join(base, "splits"))
  _, test = fake_data.read_csv(f"{base}/splits/IXI_test.csv")
  _, train = fake_data.read_csv(f"{base}/splits/IXI_train_fold0.csv")
  fake_data.write_csv(f"{base}/splits/IXI_train_fold0.csv", [r[1:] for r in train + test[:1]])
  _, btest = fake_data.read_csv(f"{base}/splits/Brats21_test.csv")
  _, bval = fake_data.read_csv(f"{base}/splits/Brats21_val.csv")
  fake_data.write_csv(f"{base}/splits/Brats21_val.csv", [r[1:] for r in btest[:1] + bval])
  root = layout.resolve_data_root(str(tmp_path))
  names = lambda s, n: [r.name for r in s[n]]
  every, _ = splits.load_splits(root)
  some, rep = splits.load_splits(root, ["IXI_train_fold0", "IXI_val_fold0"])
  assert list(some) == ["IXI_train_fold0", "IXI_val_fold0"]
  assert test[0][1] not in names(some, "IXI_train_fold0")
  assert names(some, "IXI_train_fold0") == names(every, "IXI_train_fold0")
  assert rep.summary("IXI_train_fold0")["overlaps"] == {"IXI_test": 1}
  weak, _ = splits.load_splits(root, ["Brats21_val"])
  assert names(weak, "Brats21_val") == names(every, "Brats21_val") == [r[1] for r in bval]
  kept, _ = splits.load_splits(root, ["Brats21_val"], clean=False)
  assert names(kept, "Brats21_val") == [r[1] for r in btest[:1] + bval]

def _write_bytes(path, text, encoding):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding=encoding, newline="") as f:
    f.write(text)


def test_excel_csv_with_bom_and_crlf(tmp_path):
  """Excel's 'CSV UTF-8' starts with a BOM (and writes CRLF): the first header cell is still the
  index column / `img_name`, not '\\ufeff…' (which lost the index or reported img_name missing)."""
  root_dir = tmp_path / "Data" / "splits"
  row = "a,F,0,30,/t1/a_t1.nii.gz,/mask/a_mask.nii.gz,"
  _write_bytes(str(root_dir / "IXI_test.csv"),
               "\r\n".join([",img_name,sex,label,age,img_path,mask_path,seg_path", "7," + row]),
               "utf-8-sig")
  _write_bytes(str(root_dir / "IXI_val_fold0.csv"),
               "\r\n".join(["img_name,sex,label,age,img_path,mask_path,seg_path", row]), "utf-8-sig")
  root = layout.resolve_data_root(str(tmp_path))
  (r,) = splits.read_split(root, "IXI_test")
  assert (r.index, r.name, r.label) == (7, "a", 0)
  (r,) = splits.read_split(root, "IXI_val_fold0")
  assert (r.index, r.name) == (0, "a")


def test_csv_not_utf8_or_semicolons_is_one_clear_error(tmp_path):
  root_dir = tmp_path / "Data" / "splits"
  _write_bytes(str(root_dir / "IXI_test.csv"),
               ",img_name,sex,label,age,img_path,mask_path,seg_path\n0,M\xfcller,F,0,30,/a,/b,\n",
               "cp1252")
  _write_bytes(str(root_dir / "IXI_val_fold0.csv"),
               ";img_name;sex;label;age;img_path;mask_path;seg_path\n0;a;F;0;30;/a;/b;\n", "utf-8")
  root = layout.resolve_data_root(str(tmp_path))
  with pytest.raises(DataError, match=r"IXI_test\.csv: not UTF-8 text"):
    splits.read_split(root, "IXI_test")
  with pytest.raises(DataError, match=r"IXI_val_fold0\.csv: .*separated by ';'"):
    splits.read_split(root, "IXI_val_fold0")


def test_absolute_and_windows_csv_paths(tmp_path):
  """Users' own CSVs: an absolute path inside DATA_DIR and a Windows path ('\\Train\\x') resolve to
  the file; an absolute path outside DATA_DIR says so (it was reported as a missing file under
  DATA_DIR, e.g. '<base>/data/mri/x.nii.gz: file not found', a path nobody wrote)."""
  base = tmp_path / "Data"
  (base / "Train").mkdir(parents=True)
  (base / "Train" / "x.nii.gz").write_bytes(b"")
  outside = tmp_path / "elsewhere.nii.gz"
  outside.write_bytes(b"")
  b = str(base)
  assert layout.resolve_csv_path(b, "/Train/x.nii.gz") == f"{b}/Train/x.nii.gz"  # authors' form
  assert layout.resolve_csv_path(b, f"{b}/Train/x.nii.gz") == f"{b}/Train/x.nii.gz"
  assert layout.resolve_csv_path(b, "\\Train\\x.nii.gz") == f"{b}/Train/x.nii.gz"
  assert layout.resolve_csv_path(b, "Train/x.nii.gz") == f"{b}/Train/x.nii.gz"
  # not there either way: the base-relative path, which validation reports as missing
  assert layout.resolve_csv_path(b, "/Train/y.nii.gz") == f"{b}/Train/y.nii.gz"
  with pytest.raises(DataError, match=f"line 2: path '{outside}' is an absolute path outside "
                                      f"DATA_DIR"):
    layout.resolve_csv_path(b, str(outside), "line 2")
  with pytest.raises(DataError, match="leaves DATA_DIR"):
    layout.resolve_csv_path(b, "\\..\\..\\etc\\passwd")


def test_img_name_must_identify_one_image_per_split(tmp_path):
  """Evaluation stores each volume's result under its img_name: two images listed under one name
  (e.g. two sessions of 'sub-01') made the second read the first's stored result, silently.
  The same image listed twice stays a duplicate row (removed by clean_splits)."""
  base = tmp_path / "Data"
  row = lambda name, img: [name, "F", 0, 30, f"/t1/{img}_t1.nii.gz", f"/mask/{img}.nii.gz", ""]
  fake_data.write_csv(str(base / "splits" / "IXI_test.csv"),
                      [row("sub-01", "a"), row("sub-02", "b"), row("sub-01", "a")])
  fake_data.write_csv(str(base / "splits" / "IXI_val_fold0.csv"),
                      [row("sub-01", "a"), row("sub-02", "b"), row("sub-01", "c")])
  fake_data.write_csv(str(base / "splits" / "IXI_val_fold1.csv"), [row(" ", "a")])
  root = layout.resolve_data_root(str(tmp_path))
  assert len(splits.read_split(root, "IXI_test")) == 3
  with pytest.raises(DataError, match=r"IXI_val_fold0\.csv: line 4: img_name 'sub-01' also names "
                                      r"another image on line 2"):
    splits.read_split(root, "IXI_val_fold0")
  with pytest.raises(DataError, match=r"IXI_val_fold1\.csv: line 2: img_name is empty"):
    splits.read_split(root, "IXI_val_fold1")


def test_missing_value_markers_are_empty_cells_as_in_pandas(tmp_path):
  """The reference reads split CSVs with pandas, where 'NA', 'N/A', 'NULL', 'None', '#N/A'... are
  missing values; R's write.csv writes NA. An IXI seg_path 'NA' was read as the file '<base>/NA'
  (reported missing) and an age 'NA' stopped the split."""
  base = tmp_path / "Data"
  fake_data.write_csv(str(base / "splits" / "IXI_test.csv"),
                      [["a", "F", 0, "NA", "/t1/a_t1.nii.gz", "/mask/a.nii.gz", "NA"],
                       ["b", "F", 0, "#N/A", "/t1/b_t1.nii.gz", "/mask/b.nii.gz", "None"]])
  root = layout.resolve_data_root(str(tmp_path))
  a, b = splits.read_split(root, "IXI_test")
  assert a.seg is None and b.seg is None
  assert a.age != a.age and b.age != b.age  # NaN
  for cell in ("NA", "N/A", "NULL", "null", "None", "nan", "NaN", "<NA>", "#N/A"):
    assert layout.resolve_csv_path("/d", cell) is None


def test_a_data_dir_inside_the_data_names_the_folder_meant(tmp_path):
  """--config.data.data_dir=<...>/Data/splits (or Train/, Train/ixi/): the folder holding splits/
  is named, not only where splits/ was looked for."""
  base = fake_data.write_data_dir(str(tmp_path), n_ixi=3, n_patho=1)  # <tmp>/Data
  for inner in ("splits", "Train", os.path.join("Train", "ixi")):
    with pytest.raises(DataError, match=rf"; DATA_DIR is the folder holding splits/: {base}$"):
      layout.resolve_data_root(os.path.join(base, inner))
  with pytest.raises(DataError, match=r"/splits\)$"):  # nothing to point at
    layout.resolve_data_root(str(tmp_path / "Data" / "Train" / "ixi" / "t1"))


def test_a_required_column_twice_is_refused(tmp_path):
  """Two img_path columns (a column pasted at the end in Excel): the last one was read silently."""
  base = tmp_path / "Data"
  fake_data.write_csv(str(base / "splits" / "IXI_test.csv"),
                      [["a", "F", 0, 30, "/a.nii.gz", "/m.nii.gz", "", "/b.nii.gz"]],
                      header=fake_data.HEADER + ["img_path"])
  root = layout.resolve_data_root(str(tmp_path))
  with pytest.raises(DataError, match=r"IXI_test\.csv: column\(s\) img_path appear more than once "
                                      r"in the header$"):
    splits.read_split(root, "IXI_test")
