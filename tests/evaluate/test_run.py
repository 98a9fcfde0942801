"""The evaluate stage end to end on fake data (tiny cDDPM + tiny SADM): report, files, resume."""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import types

import nibabel as nib
import numpy as np
import pytest

from sadm_jax import config as config_lib
from sadm_jax import main as main_lib
from sadm_jax.data import cache as cache_lib
from sadm_jax.data.resample import affine_spacing
from sadm_jax.evaluate import inference, metrics, scoring
from tests.evaluate.conftest import evaluate_tiny_config

REQUIRED = ("method", "train_anomalies", "test_set", "fold", "n_volumes", "dice", "best_dice",
            "auprc", "auroc")


def _csv(workdir):
  with open(os.path.join(workdir, "report", "metrics.csv")) as f:
    return list(csv.DictReader(f))


def test_metrics_csv_has_every_method_set_and_valid_values(evaluation):
  workdir, summary = evaluation
  rows = _csv(workdir)
  assert list(rows[0])[:len(REQUIRED)] == list(REQUIRED)
  got = {(r["method"], r["train_anomalies"], r["test_set"], r["fold"]) for r in rows}
  for method, anomalies in (("threshold", "none"), ("cddpm", "none"), ("sadm", "draem")):
    for s in ("Brats21", "ATLAS_v2", "DRAEM", "IXI"):
      assert (method, anomalies, s, "fold0") in got
  for r in rows:
    if r["test_set"] == "IXI":
      assert int(r["n_volumes"]) == 2 and r["dice"] == "" and 0 <= float(r["volume_score"])
      continue
    assert int(r["n_volumes"]) == (2 if r["test_set"] == "DRAEM" else 3)
    for k in ("dice", "best_dice", "auprc", "auroc", "auroc_grid", "auprc_grid", "detection_auroc"):
      assert 0.0 <= float(r[k]) <= 1.0, (k, r[k])
    assert float(r["best_dice"]) >= float(r["dice"]) - 1e-12  # oracle ≥ validation threshold
    assert r["tau_rows"] == "all" and float(r["tau"]) >= 0
  assert summary["volumes_cached"] == 0 and summary["volumes_computed"] == 3 * (1 + 2 + 6 + 6 + 3)
  with open(os.path.join(workdir, "report", "metrics.json")) as f:
    assert len(json.load(f)["rows"]) == len(rows)


def test_eval_config_json_is_the_config_as_given(evaluation):
  """Like a training run's, placeholders unresolved (predict resolves them when it reads it)."""
  workdir, _ = evaluation
  with open(os.path.join(workdir, "eval", "config.json")) as f:
    saved = json.load(f)
  assert saved["stage"] == "evaluate" and saved["faithful"] is False
  assert saved["evaluate"]["threshold_method"] is None and saved["data"]["clean_splits"] is None


def test_report_markdown_is_a_paper_style_table(evaluation):
  workdir, _ = evaluation
  with open(os.path.join(workdir, "report", "report.md")) as f:
    text = f.read()
  assert ("Protocol: metrics on the 64×64×8 working grid (2 mm voxels), inside the brain mask"
          in text)
  assert "exact Dice optimum" in text and "t ∈ {249, 499, 749}" in text and "'sum'" in text
  header = next(line for line in text.splitlines() if line.startswith("| Model"))
  for col in ("BraTS21 Dice", "BraTS21 ⌈Dice⌉", "BraTS21 AUPRC", "ATLAS v2 AUPRC",
              "DRAEM (IXI test) Dice"):
    assert col in header
  for name in ("| Intensity threshold | — | 1 |", "| cDDPM | — | 1 |", "| SADM | draem | 1 |"):
    assert name in text


def test_metrics_csv_equals_the_plain_per_volume_path(evaluation, eval_data_dir, tiny_cddpm_dir,
                                                     tiny_sadm_dir):
  """The sharded, batched, resumable evaluation writes the numbers of the plain path the stage ran
  before its rework (one volume at a time on the host: `infer_volume`, `anomaly_for` in NIfTI
  order, `volume_metrics` at the row's τ, the mean over volumes): same rows, values within 1e-6."""
  workdir, _ = evaluation
  rows = {(r["method"], r["test_set"]): r for r in _csv(workdir) if r["fold"] == "fold0"}
  c = config_lib.resolve(evaluate_tiny_config(eval_data_dir, tiny_cddpm_dir, [tiny_sadm_dir]))
  _, splits, _, _ = config_lib.load_valid_splits(c, ["Brats21_test", "ATLAS_v2_test"])
  cache = cache_lib.VolumeCache(config_lib.cache_dir(c), config_lib.preprocess_config(c))
  run = inference.load_cddpm(tiny_cddpm_dir)
  cddpm = inference.cddpm_inference(run.config, inference.cddpm_variables(run), c)
  sadm = inference.load_sadm(tiny_sadm_dir, opened=(run,))
  segnet = inference.segnet_inference(sadm, c)
  settings = scoring.map_settings(c)
  hwd = lambda a: np.transpose(np.asarray(a), (1, 2, 0))  # slice-major cache -> NIfTI order
  keys = ("dice", "best_dice", "auprc", "auroc", "precision", "recall", "hd95_mm")
  checked = 0
  for set_name in ("Brats21", "ATLAS_v2"):
    per_method: dict[str, list[dict]] = {"cddpm": [], "sadm": []}
    for row in splits[f"{set_name}_test"]:
      vol = cache.load(row)
      x, mask, gt = hwd(vol.image).astype(np.float32), hwd(vol.mask) > 0, hwd(vol.seg) > 0
      index = inference.volume_index(f"{set_name}/{row.name}")
      outs = inference.infer_volume(np.asarray(vol.image, np.float32), index, cddpm, segnet)
      for method, combination in (("cddpm", "residual"), ("sadm", str(c.evaluate.combination))):
        a = scoring.anomaly_for(method, combination, x, mask, outs, settings)
        tau = float(rows[(method, set_name)]["tau"])
        per_method[method].append(metrics.volume_metrics(a, gt, mask, tau,
                                                         spacing=affine_spacing(vol.affine)))
    for method, recs in per_method.items():
      got = rows[(method, set_name)]
      assert int(got["n_volumes"]) == len(recs)
      for k in keys:
        v = np.asarray([r[k] for r in recs], np.float64)
        want = float(v[np.isfinite(v)].mean())  # the report's mean ignores NaN / inf
        assert float(got[k]) == pytest.approx(want, abs=1e-6), (method, set_name, k)
        checked += 1
  assert checked == 2 * 2 * len(keys)


def test_volume_outputs_are_aligned_with_the_cached_input(evaluation, eval_data_dir):
  workdir, _ = evaluation
  c = evaluate_tiny_config(eval_data_dir, "")
  _, splits, _, _ = config_lib.load_valid_splits(c, ["Brats21_test"])
  row = splits["Brats21_test"][0]
  cached = cache_lib.VolumeCache(config_lib.cache_dir(c), config_lib.preprocess_config(c)).load(row)
  out = os.path.join(workdir, "report", "volumes", "sadm", "draem", "fold0", "Brats21")
  for suffix in ("anomaly", "recon", "pred"):
    img = nib.load(os.path.join(out, f"{row.name}_{suffix}.nii.gz"))
    np.testing.assert_allclose(img.affine, cached.affine, atol=1e-6)
    assert img.shape == cached.volume("image").shape
  anomaly = nib.load(os.path.join(out, f"{row.name}_anomaly.nii.gz")).get_fdata()
  assert np.all(anomaly[cached.volume("mask") == 0] == 0)  # A is 0 outside the brain: aligned
  pngs = glob.glob(os.path.join(workdir, "report", "volumes", "*", "*", "*", "*", "*.png"))
  assert len(pngs) == 3 * (3 + 3 + 2)  # first PNG_VOLUMES volumes per run and data set
  with open(pngs[0], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_writes_the_volume_outputs_that_are_missing(evaluation, eval_data_dir,
                                                            tiny_cddpm_dir, tiny_sadm_dir, tmp_path):
  """A test volume counts as done only with the files the config asks for: a rerun after the
  volume outputs were removed (or were off: write_nifti=False) writes them again, the same maps.
  A rerun that asks for fewer files removes the earlier evaluation's others (they would pass
  for this evaluation's), and only those."""
  workdir = str(tmp_path / "again")
  shutil.copytree(evaluation[0], workdir)
  root = os.path.join(workdir, "report", "volumes")
  files = lambda ext: sorted(glob.glob(os.path.join(root, "**", f"*{ext}"), recursive=True))
  niftis = files(".nii.gz")
  assert files(".png") and niftis
  out = os.path.join(root, "sadm", "draem", "fold0", "Brats21")
  gone = os.path.join(out, "Brats21_test_001_anomaly.nii.gz")
  want = nib.load(gone).get_fdata()
  os.remove(gone)
  notes = os.path.join(out, "notes.txt")  # a user's file: kept
  with open(notes, "w") as f:
    f.write("mine")
  c = evaluate_tiny_config(eval_data_dir, tiny_cddpm_dir, [tiny_sadm_dir])
  c.evaluate.write_png = False
  again = main_lib.run_stage(c, workdir)
  assert again["volumes_computed"] == 1, again
  np.testing.assert_array_equal(nib.load(gone).get_fdata(), want)
  assert files(".nii.gz") == niftis and files(".png") == []  # the PNGs were the first run's
  c.evaluate.write_nifti = False  # no files asked for: nothing to compute
  os.remove(gone)
  assert main_lib.run_stage(c, workdir)["volumes_computed"] == 0
  assert files(".nii.gz") == [] and os.listdir(root) == ["sadm"] and os.listdir(out) == [
      "notes.txt"]


def test_intensity_median_is_the_median_of_healthy_training_brains(evaluation, eval_data_dir):
  workdir, _ = evaluation
  c = evaluate_tiny_config(eval_data_dir, "")
  _, splits, _, _ = config_lib.load_valid_splits(c, ["IXI_train_fold0", "IXI_val_fold0", "IXI_test"])
  cache = cache_lib.VolumeCache(config_lib.cache_dir(c), config_lib.preprocess_config(c))
  vols = [cache.load(r) for r in splits["IXI_train_fold0"]]
  expected = np.median(np.concatenate([v.image[v.mask > 0] for v in vols]))
  with open(os.path.join(workdir, "eval", "threshold", "intensity_median_fold0.json")) as f:
    assert json.load(f)["median"] == pytest.approx(float(expected), rel=0, abs=1e-7)


def test_second_run_recomputes_nothing_and_changed_settings_recompute(evaluation, eval_data_dir,
                                                                      tiny_cddpm_dir, tiny_sadm_dir,
                                                                      tmp_path):
  first = evaluation[1]
  workdir = str(tmp_path / "again")  # a copy: tests that change a run copy it first (conftest)
  shutil.copytree(evaluation[0], workdir)
  jsons = sorted(glob.glob(os.path.join(workdir, "eval", "*", "**", "*.json"), recursive=True))
  assert len(jsons) == first["volumes_computed"] + 1  # per-volume results + the intensity median
  mtimes = {p: os.stat(p).st_mtime_ns for p in jsons}
  before = _csv(workdir)
  c = evaluate_tiny_config(eval_data_dir, tiny_cddpm_dir, [tiny_sadm_dir])
  again = main_lib.run_stage(c, workdir)
  assert again["volumes_computed"] == 0 and again["volumes_cached"] == first["volumes_computed"]
  with open(os.path.join(workdir, "eval", "summary.json")) as f:
    assert json.load(f) == again  # each run's summary replaces the last one's
  assert {p: os.stat(p).st_mtime_ns for p in jsons} == mtimes
  assert _csv(workdir) == before
  # Another protocol invalidates the cached per-volume results (threshold baseline only: no models).
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  c = evaluate_tiny_config(eval_data_dir, "")
  c.evaluate.methods = ("threshold",)
  c.evaluate.threshold_method = "bisection"
  res = main_lib.run_stage(c, copy)  # τ may change: only test passes depend on it
  assert res["volumes_cached"] >= 3 + 7 and res["volumes_cached"] + res["volumes_computed"] == 18
  assert {r["method"] for r in _csv(copy)} == {"threshold"}
  c.seed = 1  # the noise seed is part of every result's fingerprint
  assert main_lib.run_stage(c, copy)["volumes_computed"] == 18


def test_the_host_work_in_threads_stores_what_one_thread_stores(eval_data_dir, tmp_path,
                                                               monkeypatch):
  """Behind accelerators a batch's host work (maps, metrics, records, report files) runs in one
  thread per volume (`execute.host_threads`): one thread finished 8 GPUs' batch one volume
  after the other. The threshold baseline (host work only) in 3 threads, the DRAEM set's anomalies
  drawn in 3 worker processes, stores the same records, report files and report as in one."""
  from sadm_jax.evaluate import execute
  used = []
  monkeypatch.setattr(execute, "futures",
                      types.SimpleNamespace(ThreadPoolExecutor=_recording(used)))
  pools, process_pool = [], execute.workers_lib.process_pool

  def recorded_pool(n):  # the DRAEM set's anomalies drawn in worker processes
    pools.append(n)
    return process_pool(n)
  monkeypatch.setattr(execute.workers_lib, "process_pool", recorded_pool)
  out = {}
  for threads in (1, 3):
    monkeypatch.setattr(execute, "host_threads", lambda platform, n=threads: n)
    c = evaluate_tiny_config(eval_data_dir, "")
    c.evaluate.methods = ("threshold",)
    workdir = str(tmp_path / f"threads{threads}")
    res = main_lib.run_stage(c, workdir)
    assert res["volumes_computed"] == 18
    files = sorted(glob.glob(os.path.join(workdir, "eval", "threshold", "**", "*.json"),
                             recursive=True))
    records = {os.path.relpath(f, workdir): json.load(open(f)) for f in files}
    volumes = sorted(glob.glob(os.path.join(workdir, "report", "volumes", "**", "*.nii.gz"),
                               recursive=True))
    maps = {os.path.relpath(f, workdir): np.asarray(nib.load(f).dataobj) for f in volumes}
    out[threads] = records, maps, _csv(workdir)
  assert used and max(used) == 3  # batches of 8 volumes on the tests' 8 devices, 3 at once
  assert pools == [3, 3]  # the val and the test passes (DRAEM's anomalies in 3 processes)
  assert out[1][0] == out[3][0] and len(out[1][0]) == 18 + 1  # + the intensity median
  assert out[1][1].keys() == out[3][1].keys() and out[1][1]
  for k, v in out[1][1].items():
    np.testing.assert_array_equal(v, out[3][1][k])
  assert out[1][2] == out[3][2]


def _recording(used: list):
  """`ThreadPoolExecutor` that records its number of threads."""
  from concurrent.futures import ThreadPoolExecutor

  def make(n, *args, **kwargs):
    used.append(n)
    return ThreadPoolExecutor(n, *args, **kwargs)
  return make


def test_a_data_dir_without_any_requested_set_is_refused(tiny_data_dir, tmp_path, capsys):
  """evaluate.test_sets=('Brats21',) without IXI on a data dir with no Brats21 splits: one error
  line naming the setting and the splits folder, exit code 2, nothing written (it wrote an empty
  report and exited 0)."""
  from tests.evaluate.conftest import copy_data, threshold_only
  data = copy_data(tiny_data_dir, str(tmp_path / "data"))
  for name in ("Brats21_val.csv", "Brats21_test.csv"):
    os.remove(os.path.join(data, "Data", "splits", name))
  work = str(tmp_path / "work")
  assert main_lib.run_checked(threshold_only(data), work) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: evaluate.test_sets=('Brats21',)"), err
  assert os.path.join(data, "Data", "splits") in err[0] and "include_ixi" in err[0]
  assert not os.path.exists(os.path.join(work, "eval")) and not os.path.exists(
      os.path.join(work, "report"))


def test_a_split_emptied_by_data_hygiene_is_refused(tiny_data_dir, tmp_path, capsys):
  """Brats21_val.csv listing the test images only: data hygiene keeps them in the test split
  (Q17) and leaves val empty, so τ cannot be tuned. One error line naming the CSV and why,
  exit code 2, nothing written (it failed with 'within_brain=True needs mask_list' after
  writing the intensity median; on several processes, the others waited for process 0)."""
  import shutil

  from tests.evaluate.conftest import copy_data, threshold_only
  data = copy_data(tiny_data_dir, str(tmp_path / "data"))
  splits = os.path.join(data, "Data", "splits")
  shutil.copyfile(os.path.join(splits, "Brats21_test.csv"), os.path.join(splits, "Brats21_val.csv"))
  work = str(tmp_path / "work")
  assert main_lib.run_checked(threshold_only(data), work) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f"error: {os.path.join(splits, 'Brats21_val.csv')}: no volume left to evaluate: "
                 "3 of its 3 rows are in Brats21_test too and were kept there only (test > val > "
                 "train, Q17)"], err
  assert not os.path.exists(os.path.join(work, "eval"))


def test_one_image_with_other_labels_in_two_splits_is_preprocessed_for_each(tiny_data_dir,
                                                                             tmp_path, capsys):
  """Without data hygiene (data.clean_splits=False, faithful), a Brats21_test row may name a val
  image with another lesion map: a cache entry is made by its image, mask and labels, so both
  rows are preprocessed and evaluated (the second was skipped as a duplicate image and the test
  pass stopped with 'not in the preprocessing cache; run the prepare stage first')."""
  import io as io_lib

  from tests.evaluate.conftest import copy_data, edit_split, threshold_only

  def add_row(text: str) -> str:
    rows = list(csv.reader(io_lib.StringIO(text)))
    with open(os.path.join(data, "Data", "splits", "Brats21_val.csv")) as f:
      val = list(csv.reader(f))[1]
    head = rows[0]
    new = list(rows[1])  # a test row's labels, the val row's image and mask
    for col in ("img_path", "mask_path"):
      new[head.index(col)] = val[head.index(col)]
    new[head.index("img_name")], new[0] = "BraTS_relabelled", str(len(rows) - 1)
    out = io_lib.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows + [new])
    return out.getvalue()

  data = str(tmp_path / "data")
  copy_data(tiny_data_dir, data)
  edit_split(data, "Brats21_test.csv", add_row)
  c = threshold_only(data)
  c.data.clean_splits = False
  work = str(tmp_path / "work")
  assert main_lib.run_checked(c, work) == 0, capsys.readouterr().err
  with open(os.path.join(work, "report", "metrics.json")) as f:
    rows = json.load(f)["rows"]
  brats = [r for r in rows if r["test_set"] == "Brats21"]
  assert len(brats) == 1 and brats[0]["n_volumes"] == 4, brats


class _Killed(BaseException):
  """Stands for a SIGKILL: nothing after it runs."""


def test_a_killed_rerun_leaves_no_report_of_the_earlier_evaluation(tmp_path, monkeypatch):
  """An evaluation rerun (other models or settings) killed once it had started replacing results
  and volume files left the earlier evaluation's metrics.csv, report.md and summary beside them
  as if they described them; they are removed before the passes start replacing results."""
  import types
  from sadm_jax.evaluate import hosts, run as run_lib
  work = str(tmp_path)
  earlier = [os.path.join(work, "report", n) for n in ("metrics.csv", "metrics.json", "report.md")
             ] + [os.path.join(work, "eval", "summary.json")]
  for path in earlier:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()
  def killed(*args):
    raise _Killed()

  evaluation = types.SimpleNamespace(cache=types.SimpleNamespace(cfg=None), splits=None, runs=[],
                                     run_passes=killed,
                                     models=types.SimpleNamespace(sadm_data=None))
  monkeypatch.setattr(run_lib, "_start", lambda config, workdir: (evaluation, [], [], [], [], [], []))
  for name in ("volume_plan", "check_same_plan", "check_same_settings", "cache_seen"):
    monkeypatch.setattr(hosts, name, lambda *a: None)
  monkeypatch.setattr(run_lib.weak_rows, "verify", lambda *a: {})
  monkeypatch.setattr(run_lib, "_cache_share", lambda *a: None)  # then killed in the passes
  c = evaluate_tiny_config(work, "")
  with pytest.raises(_Killed):
    run_lib.run(c, work)
  assert [p for p in earlier if os.path.exists(p)] == []
