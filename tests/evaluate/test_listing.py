"""Predict's input listing: glob patterns, scans of the same file name in different folders, and
a folder whose scans are in its subfolders (no models, empty files: nothing is read)."""

from __future__ import annotations

import os

import pytest

from sadm_jax.evaluate import listing
from tests.cli_common import one_error, run_main


def _touch(root, *names):
  for name in names:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def _listed(scans):
  return [(s.name, s.image, s.mask) for s in scans]


def test_same_file_names_in_different_folders_are_named_by_their_folders(tmp_path):
  """Per-subject folders (`patient1/T1.nii.gz`; WMH's `<site>/<id>/pre/T1.nii.gz`) were refused
  as 'two scans named 'T1' ...; rename one': the folders below the one they share now tell them
  apart, and a scan whose name was unique keeps its plain stem."""
  _touch(tmp_path, "patient1/T1.nii.gz", "patient2/T1.nii.gz", "other/FLAIR.nii.gz")
  (tmp_path / "scans.csv").write_text(
      "image\npatient1/T1.nii.gz\npatient2/T1.nii.gz\nother/FLAIR.nii.gz\n")
  scans, batch = listing.list_scans(str(tmp_path / "scans.csv"))
  assert batch and [s.name for s in scans] == ["patient1_T1", "patient2_T1", "FLAIR"]
  assert listing.unique_names(["wmh/Utrecht/0/pre/T1.nii.gz", "wmh/Singapore/50/pre/T1.nii.gz",
                               "wmh/Utrecht/2/pre/t1.nii"]) == [
      "Utrecht_0_pre_T1", "Singapore_50_pre_T1", "Utrecht_2_pre_t1"]
  assert listing.unique_names(["a/x.nii.gz", "a/b/x.nii.gz"]) == ["x", "b_x"]


def test_names_that_still_collide_and_a_file_listed_twice_are_refused(tmp_path):
  """Two names for one file are still one file listed twice; a folder-derived name equal to
  another scan's, or two names differing in case in one folder, would write the same files."""
  _touch(tmp_path, "p1/T1.nii.gz", "p2/T1.nii.gz", "p1_T1.nii.gz")
  with pytest.raises(ValueError, match=r"^predict.input lists .*p1/\./T1.nii.gz twice; list "
                                       r"each scan once$"):
    listing.list_scans(f"{tmp_path}/p1/T1.nii.gz,{tmp_path}/p1/./T1.nii.gz")
  with pytest.raises(ValueError, match=r"^predict.input: two scans named 'p1_T1' \(.*/p1/T1.nii.gz"
                                       r", .*/p1_T1.nii.gz\); outputs are named by scan"):
    listing.list_scans(f"{tmp_path}/p1/T1.nii.gz,{tmp_path}/p2/T1.nii.gz,{tmp_path}/p1_T1.nii.gz")


def test_a_mask_folder_cannot_serve_scans_of_the_same_file_name(tmp_path):
  """`predict.mask=<folder>` finds masks by the scan's file name: both `p1/T1` and `p2/T1` would
  have taken `masks/T1_mask.nii.gz`, one of them another subject's brain."""
  _touch(tmp_path, "p1/T1.nii.gz", "p2/T1.nii.gz", "masks/T1_mask.nii.gz")
  with pytest.raises(ValueError) as e:
    listing.list_scans(f"{tmp_path}/p1/T1.nii.gz,{tmp_path}/p2/T1.nii.gz", str(tmp_path / "masks"))
  assert str(e.value) == (
      f"predict.mask={tmp_path / 'masks'}: scans in different folders share the file name 'T1' "
      f"({tmp_path}/p1/T1.nii.gz, {tmp_path}/p2/T1.nii.gz), so one folder cannot hold a mask for "
      "each by name; put each mask next to its scan (predict.mask empty) or list the pairs in a "
      "CSV (columns image,mask)")


def test_a_glob_pattern_lists_the_scans_it_matches_with_the_masks_next_to_them(tmp_path):
  """A BIDS tree: `*/anat/*_T1w.nii.gz` lists each subject's T1w, sorted, with the mask next to it
  (`<base>_mask`, as in a folder); masks, predict's outputs, hidden files and other modalities are
  not scans. `**` matches any depth; a file two patterns match is listed once; a pattern (like a
  list) gets one output folder per scan even when it matches one file."""
  _touch(tmp_path, "sub-02/anat/sub-02_T1w.nii.gz", "sub-01/anat/sub-01_T1w.nii.gz",
         "sub-01/anat/sub-01_mask.nii.gz", "sub-01/anat/sub-01_FLAIR.nii.gz",
         "sub-01/anat/._sub-01_T1w.nii.gz", "sub-02/anat/sub-02_T1w_anomaly_map.nii.gz",
         "sub-03/ses-1/anat/sub-03_ses-1_T1w.nii.gz")
  root = str(tmp_path)
  scans, batch = listing.list_scans(f"{root}/*/anat/*_T1w.nii.gz")
  assert batch and _listed(scans) == [
      ("sub-01_T1w", f"{root}/sub-01/anat/sub-01_T1w.nii.gz",
       f"{root}/sub-01/anat/sub-01_mask.nii.gz"),
      ("sub-02_T1w", f"{root}/sub-02/anat/sub-02_T1w.nii.gz", None)]
  scans, _ = listing.list_scans(f" {root}/**/*_T1w.nii.gz , {root}/sub-01/anat/*.nii.gz")
  assert [s.name for s in scans] == ["sub-01_T1w", "sub-02_T1w", "sub-03_ses-1_T1w",
                                     "sub-01_FLAIR"]
  scans, batch = listing.list_scans(f"{root}/sub-02/*/*_T1w.nii.gz")
  assert batch and [s.name for s in scans] == ["sub-02_T1w"]
  _touch(tmp_path, "masks/sub-02_mask.nii.gz")  # a mask folder: masks found there by name
  scans, _ = listing.list_scans(f"{root}/sub-0[12]/anat/*_T1w.nii.gz", f"{root}/masks")
  assert [s.mask for s in scans] == [f"{root}/masks/sub-01_mask.nii.gz",
                                     f"{root}/masks/sub-02_mask.nii.gz"]


def test_pattern_mistakes_are_one_line_each(tmp_path):
  """A pattern matching nothing names itself and the folder it was taken relative to; one
  matching only masks says so; masks given as a list, or no mask suffix without a mask folder,
  cannot go with a pattern's unknown number of scans."""
  _touch(tmp_path, "s1/a_mask.nii.gz")
  root = str(tmp_path)
  with pytest.raises(ValueError) as e:
    listing.list_scans(f"{root}/*/*.nii")
  assert str(e.value) == (f"predict.input: the pattern '{root}/*/*.nii' matches no file (relative "
                          f"to {os.getcwd()}; quote the pattern so that the shell passes it on "
                          "as is)")
  with pytest.raises(ValueError, match=r"matches 1 file\(s\), none a scan \(masks, predict's "
                                       r"outputs, hidden or not NIfTI: a_mask.nii.gz, ...\)"):
    listing.list_scans(f"{root}/*/*.nii.gz")
  with pytest.raises(ValueError, match=r"^predict.mask=m.nii.gz: with a folder or pattern input "
                                       r"it must be a folder"):
    listing.list_scans(f"{root}/*/*.nii.gz", "m.nii.gz")
  with pytest.raises(ValueError, match=r"^predict.mask_suffix is empty: the masks next to the "
                                       r"scans matched by .* cannot be told from the scans"):
    listing.list_scans(f"{root}/*/*.nii.gz", "", "")


def test_a_file_whose_name_looks_like_a_pattern_is_that_file(tmp_path):
  """`scan[1].nii.gz` exists: it is one scan (flat layout), not a pattern for `scan1.nii.gz`."""
  _touch(tmp_path, "scan[1].nii.gz", "scan1.nii.gz")
  scans, batch = listing.list_scans(str(tmp_path / "scan[1].nii.gz"))
  assert not batch and _listed(scans) == [("scan[1]", str(tmp_path / "scan[1].nii.gz"), None)]


def test_a_folder_whose_name_looks_like_a_pattern_is_read_literally_when_nothing_matches(
    tmp_path):
  """`data[1]/*.nii.gz` with a folder named `data[1]` matched no file (glob reads `[1]` as a
  character class, for a folder `data1`); as the shell does, the pattern's own matches come first
  and the folder's literal name is the fallback."""
  _touch(tmp_path, "data[1]/a.nii.gz", "data[1]/a_mask.nii.gz", "x?y/b.nii.gz")
  scans, batch = listing.list_scans(str(tmp_path / "data[1]" / "*.nii.gz"))
  assert batch and _listed(scans) == [("a", str(tmp_path / "data[1]" / "a.nii.gz"),
                                       str(tmp_path / "data[1]" / "a_mask.nii.gz"))]
  scans, _ = listing.list_scans(str(tmp_path / "x?y" / "*.nii.gz"))  # matches itself: x?y
  assert [s.name for s in scans] == ["b"]
  _touch(tmp_path, "data1/c.nii.gz")  # the pattern's own match wins, as in a shell
  scans, _ = listing.list_scans(str(tmp_path / "data[1]" / "*.nii.gz"))
  assert [s.name for s in scans] == ["c"]


def test_nested_folders_whose_names_look_like_patterns_are_read_literally(tmp_path):
  """`a[1]/b[2]/*.nii.gz` through two such folders: the second was looked up under the first's
  escaped name (`a[[]1]/b[2]`, no such folder), left a character class, and matched no file."""
  _touch(tmp_path, "a[1]/b[2]/s.nii.gz")
  scans, _ = listing.list_scans(str(tmp_path / "a[1]" / "b[2]" / "*.nii.gz"))
  assert _listed(scans) == [("s", str(tmp_path / "a[1]" / "b[2]" / "s.nii.gz"), None)]


def test_a_folder_with_its_scans_in_subfolders_suggests_a_pattern_that_lists_them(tmp_path):
  """BraTS-style per-subject folders given as the input folder were 'no .nii/.nii.gz scans in this
  folder'; the error now shows a scan found below and a pattern, which lists exactly the scans of
  that kind; a DICOM tree is told to be converted first."""
  _touch(tmp_path, "BraTS_001/BraTS_001_t1.nii.gz", "BraTS_001/BraTS_001_flair.nii.gz",
         "BraTS_002/BraTS_002_t1.nii.gz", "BraTS_002/BraTS_002_flair.nii.gz")
  root = str(tmp_path)
  with pytest.raises(ValueError) as e:
    listing.list_scans(root)
  pattern = f"{root}/*/*_flair.nii.gz"
  assert str(e.value) == (
      f"predict.input={root}: no .nii/.nii.gz scans in this folder itself, but in its subfolders "
      f"(e.g. {root}/BraTS_001/BraTS_001_flair.nii.gz): give a glob pattern, e.g. "
      f"--config.predict.input='{pattern}' (quoted; '**' matches any depth), or a CSV listing them")
  assert [s.name for s in listing.list_scans(pattern)[0]] == ["BraTS_001_flair",
                                                               "BraTS_002_flair"]
  dicom = tmp_path / "dicom"
  _touch(dicom, "series1/IM0001.dcm")
  with pytest.raises(ValueError, match=r"no .nii/.nii.gz scans in this folder or its subfolders; "
                                       r"it holds DICOM files \(.dcm\): convert them to NIfTI"):
    listing.list_scans(str(dicom))


def test_each_folder_is_listed_once_for_a_whole_input(tmp_path, monkeypatch):
  """Each scan's mask lookup listed its folder again: 5,000 scans without masks took 121 s to list
  (every process lists them), quadratic in the folder's size. Now one listing per folder."""
  _touch(tmp_path, *[f"s{k:03d}_T1w.nii.gz" for k in range(50)], "s007_mask.NII.GZ",
         "masks/s001_mask.nii.gz")
  calls = []
  real = os.listdir
  monkeypatch.setattr(os, "listdir", lambda path=".": calls.append(path) or real(path))
  for spec, masks, listed in ((str(tmp_path), "", 2), (f"{tmp_path}/*.nii.gz", "", 1),
                              (f"{tmp_path}/*.nii.gz", str(tmp_path / "masks"), 1)):
    calls.clear()
    scans, _ = listing.list_scans(spec, masks)
    assert len(scans) == 50 and len(calls) == listed, calls  # (a folder input: its scans, then
    # the masks' index)
    found = {s.name: s.mask for s in scans}
    if masks:  # in the mask folder, or the path it was expected at (that scan fails, naming it)
      assert (found["s001_T1w"], found["s007_T1w"]) == (f"{masks}/s001_mask.nii.gz",
                                                        f"{masks}/s007_mask.nii.gz")
    else:
      assert (found["s001_T1w"], found["s007_T1w"]) == (None, f"{tmp_path}/s007_mask.NII.GZ")


def test_a_pattern_lists_a_scan_whose_symlink_is_broken(tmp_path):
  """A DataLad / git-annex tree whose content is not fetched: its scans are broken symlinks. A
  pattern dropped them without a word (a folder listed them): the others were predicted as if
  those subjects did not exist, and a pattern matching only such files 'matched no file'. They
  are listed now and fail when predicted, each named ('a broken symbolic link'), as in a folder."""
  _touch(tmp_path, "sub-02/anat/sub-02_T1w.nii.gz")
  (tmp_path / "sub-01" / "anat").mkdir(parents=True)
  (tmp_path / "sub-01/anat/sub-01_T1w.nii.gz").symlink_to(
      "../../.git/annex/objects/Xk/MD5E-s1--0a.nii.gz")
  (tmp_path / "sub-03.nii.gz").mkdir()  # a folder named like a scan is still not one
  scans, _ = listing.list_scans(f"{tmp_path}/*/anat/*_T1w.nii.gz")
  assert [s.name for s in scans] == ["sub-01_T1w", "sub-02_T1w"]
  with pytest.raises(ValueError, match=r"the pattern '.*/\*.nii.gz' matches 1 folder\(s\) and "
                                       r"no file"):
    listing.list_scans(f"{tmp_path}/*.nii.gz")


def test_a_folder_of_linked_subject_folders_suggests_a_pattern_listing_scans_not_masks(tmp_path):
  """Per-subject folders that are symlinks (a study folder linking subjects from a store) were
  'no .nii/.nii.gz scans in this folder or its subfolders'; and the example scan could be a mask
  (`brain_mask.nii.gz` sorts before `t1.nii.gz`), suggesting a pattern that lists no scan."""
  _touch(tmp_path, "store/s1/t1.nii.gz", "store/s1/brain_mask.nii.gz", "store/s2/t1.nii.gz")
  study = tmp_path / "study"
  study.mkdir()
  for s in ("s1", "s2"):
    (study / s).symlink_to(tmp_path / "store" / s)
  with pytest.raises(ValueError) as e:
    listing.list_scans(str(study))
  assert str(e.value).startswith(
      f"predict.input={study}: no .nii/.nii.gz scans in this folder itself, but in its subfolders "
      f"(e.g. {study}/s1/t1.nii.gz): give a glob pattern, e.g. "
      f"--config.predict.input='{study}/*/t1.nii.gz'")
  assert [s.name for s in listing.list_scans(f"{study}/*/t1.nii.gz")[0]] == ["s1_t1", "s2_t1"]


def test_a_name_too_long_for_the_outputs_is_refused_when_listed(tmp_path):
  """A scan's outputs are `<name>_anomaly_map.nii.gz`, written through two temporary names of 21
  bytes more each: a name of more than 194 bytes (a long file name, or folders prefixed to it)
  failed only after the scan was computed, with '[Errno 36] File name too long' and a 300-byte
  path. It is refused when listed, naming the scan; 194 bytes (UTF-8) are fine."""
  fits, long = "é" * 97, "x" * 190  # 194 bytes; a_<long>_T1: 195
  _touch(tmp_path, f"{fits}.nii.gz", f"a/{long}/T1.nii.gz", f"b/{long}/T1.nii.gz")
  assert [s.name for s in listing.list_scans(str(tmp_path / f"{fits}.nii.gz"))[0]] == [fits]
  with pytest.raises(ValueError) as e:
    listing.list_scans(f"{tmp_path}/*/{long}/T1.nii.gz")
  assert str(e.value) == (
      f"predict.input: the scan {tmp_path}/a/{long}/T1.nii.gz would be named "
      f"'{('a_' + long)[:40]}...' "
      "(195 bytes, with the folders that tell it from another scan of its file name; at most "
      "194): its outputs' file names would exceed the file system's 255-byte limit; shorten its "
      "file name or folders (or list links with shorter paths)")


def test_one_file_whose_path_holds_a_comma_is_one_scan(tmp_path):
  """`predict.input` is split at commas into a list: a single scan in a folder named `Smith, J`
  became two files that do not exist (both failed after the models loaded). An existing file (or
  a pattern that matches files as a whole) is that one input."""
  _touch(tmp_path, "Smith, J/T1.nii.gz", "Smith, J/FLAIR.nii.gz")
  path = str(tmp_path / "Smith, J" / "T1.nii.gz")
  scans, batch = listing.list_scans(path)
  assert not batch and _listed(scans) == [("T1", path, None)]
  scans, batch = listing.list_scans(f"{tmp_path}/Smith, J/*.nii.gz")
  assert batch and [s.name for s in scans] == ["FLAIR", "T1"]


def test_a_file_listed_again_through_a_symlink_is_named_as_listed_twice(tmp_path):
  """`p1/T1`, `p2/T1` and `p1link/T1` (a link to p1): the third was reported as 'two scans named
  'T1' (p1/T1, p2/T1) ...; rename one', a collision that renaming cannot fix; it is p1/T1 listed
  twice. A pattern matching only folders says so, not 'matches no file'."""
  _touch(tmp_path, "p1/T1.nii.gz", "p2/T1.nii.gz")
  (tmp_path / "p1link").symlink_to(tmp_path / "p1")
  with pytest.raises(ValueError, match=r"^predict.input lists .*/p1link/T1.nii.gz twice; list "
                                       r"each scan once$"):
    listing.list_scans(",".join(f"{tmp_path}/{p}/T1.nii.gz" for p in ("p1", "p2", "p1link")))
  with pytest.raises(ValueError, match=r"the pattern '.*/p\*' matches 3 folder\(s\) and no file "
                                       r"\('.*/p\*/\*.nii.gz' would list the scans in them\)"):
    listing.list_scans(f"{tmp_path}/p*")


def test_patterns_and_listing_mistakes_through_the_command_line(tmp_path):
  """The CLI as users run it. Its up-front path check refused every glob pattern ('no such file
  or folder: data/*/...') and split a path holding a comma into two missing files, so neither
  reached predict; they now pass it (and fail here only at the model: this folder is not a run).
  A pattern matching nothing and a folder whose scans are in subfolders end in their one line,
  exit 2, before any model is loaded, nothing written."""
  _touch(tmp_path, "scans/p1/T1.nii.gz", "scans/Smith, J/T1.nii.gz")
  args = (f"--workdir={tmp_path / 'w'}", f"--config.predict.checkpoint_dir={tmp_path}",
          f"--config.predict.output={tmp_path / 'out'}")
  not_a_run = (f"error: {tmp_path}: neither an evaluation workdir (eval/models.json) nor a "
               "training workdir with a best checkpoint (best/)")
  for given in (f"{tmp_path}/scans/*/T1.nii.gz", f"{tmp_path}/scans/Smith, J/T1.nii.gz",
                f"{tmp_path}/scans/p1/T1.nii.gz,{tmp_path}/**/Smith*/T1.nii.gz"):
    res = run_main(*args, f"--config.predict.input={given}", config="configs/predict.py:tiny")
    assert one_error(res) == not_a_run, given
  res = run_main(*args, f"--config.predict.input={tmp_path}/*/*.nii",
                 config="configs/predict.py:tiny")
  assert one_error(res).startswith(f"error: predict.input: the pattern '{tmp_path}/*/*.nii' "
                                   "matches no file (relative to ")
  res = run_main(*args, f"--config.predict.input={tmp_path / 'scans'}",
                 config="configs/predict.py:tiny")
  assert one_error(res) == (
      f"error: predict.input={tmp_path / 'scans'}: no .nii/.nii.gz scans in this folder itself, "
      f"but in its subfolders (e.g. {tmp_path}/scans/Smith, J/T1.nii.gz): give a glob pattern, "
      f"e.g. --config.predict.input='{tmp_path}/scans/*/T1.nii.gz' (quoted; '**' matches any "
      "depth), or a CSV listing them")
  assert not os.path.exists(tmp_path / "out" / "predict_summary.json")
