"""The per-volume result store: a val map that no longer opens counts as not computed."""

import types

import numpy as np
import pytest

from sadm_jax.evaluate.store import Store


def test_a_damaged_val_map_is_computed_again(tmp_path):
  store = Store(str(tmp_path))
  run = types.SimpleNamespace(method="cddpm", train_anomalies="none", fold="fold0")
  maps = {"anomaly": np.ones((2, 4, 4), np.float32), "gt": np.zeros((2, 4, 4), np.uint8),
          "mask": np.ones((2, 4, 4), np.uint8)}
  store.write(run, "Brats21", "val", {"name": "v0", "fingerprint": "fp"}, maps)
  assert store.read(run, "Brats21", "val", "v0", "fp", with_map=True)["name"] == "v0"
  _, npz = store.paths(run, "Brats21", "val", "v0")
  with open(npz, "r+b") as f:  # a disk fault cut the file short
    f.truncate(100)
  assert store.read(run, "Brats21", "val", "v0", "fp", with_map=True) is None
  assert store.read(run, "Brats21", "val", "v0", "fp")["name"] == "v0"  # test passes keep no map
  store.write(run, "Brats21", "val", {"name": "v0", "fingerprint": "fp"}, maps)
  (anomaly, _, _), = store.volumes(run, "Brats21", "val", ["v0"])
  np.testing.assert_array_equal(anomaly, maps["anomaly"])


def test_two_volumes_with_one_result_file_are_refused(tiny_data_dir, tmp_path, capsys):
  """'Brats21_test 000' and 'Brats21_test_000' share one result file: the later volume's record
  would replace the earlier one's and be counted twice (which one by process and batch order).
  The evaluation refuses before writing anything: one line naming the CSV, exit code 2."""
  import os

  from sadm_jax import main as main_lib
  from tests.evaluate.conftest import copy_data, threshold_only

  data = copy_data(tiny_data_dir, str(tmp_path / "data"), {
      "Brats21_test.csv": lambda t: t.replace("1,Brats21_test_001,", "1,Brats21_test 000,")})
  csv = os.path.join(data, "Data", "splits", "Brats21_test.csv")
  c = threshold_only(data)
  work = str(tmp_path / "work")
  assert main_lib.run_checked(c, work) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"error: {csv}: volumes 'Brats21_test_000'"), err
  assert "'Brats21_test 000'" in err[0] and "Brats21_test_000.json" in err[0]
  assert not os.path.exists(os.path.join(work, "eval"))


def test_volume_names_differing_only_in_case_are_refused_too():
  """'Sub01' and 'sub01' are two result files on Linux but one on macOS and Windows (and on a
  share mounted from them): refused on every system, as predict refuses such scans."""
  from sadm_jax.evaluate import passes as passes_lib
  row = lambda name, img: types.SimpleNamespace(name=name, img=img, csv="/d/Brats21_test.csv",
                                                split="Brats21_test")
  passes = lambda *names: [passes_lib.Pass("Brats21", "test", "test", {
      "cddpm/none/fold0": [row(n, f"/d/{i}.nii.gz") for i, n in enumerate(names)]})]
  passes_lib.check_volume_names(passes("Sub01", "Sub02"))  # distinct: fine
  with pytest.raises(ValueError, match=r"volumes 'Sub01' \(/d/0.nii.gz\) and 'sub01' "
                                       r"\(/d/1.nii.gz\) of Brats21_test would share one result"):
    passes_lib.check_volume_names(passes("Sub01", "sub01"))


def test_a_map_left_by_an_interrupted_write_of_other_settings_is_not_reused(tmp_path):
  """The map is written before its record: a run with other settings killed in between leaves
  its map next to the record of the first settings. Going back to those, the record must not
  be reused with that map (τ would come from the other settings' maps)."""
  store = Store(str(tmp_path))
  run = types.SimpleNamespace(method="cddpm", train_anomalies="none", fold="fold0")
  arrays = lambda v: {"anomaly": np.full((2, 4, 4), v, np.float32),
                      "gt": np.zeros((2, 4, 4), np.uint8), "mask": np.ones((2, 4, 4), np.uint8)}
  store.write(run, "Brats21", "val", {"name": "v0", "fingerprint": "A"}, arrays(1.0))
  path, _ = store.paths(run, "Brats21", "val", "v0")
  with open(path) as f:
    record_a = f.read()
  store.write(run, "Brats21", "val", {"name": "v0", "fingerprint": "B"}, arrays(2.0))
  with open(path, "w") as f:  # as if killed after the map of B, before its record
    f.write(record_a)
  assert store.read(run, "Brats21", "val", "v0", "A", with_map=True) is None
  store.write(run, "Brats21", "val", {"name": "v0", "fingerprint": "A"}, arrays(1.0))
  assert store.read(run, "Brats21", "val", "v0", "A", with_map=True)["name"] == "v0"
  assert next(store.volumes(run, "Brats21", "val", ["v0"]))[0].max() == 1.0


def test_draem_volume_is_drawn_for_its_row_not_for_whoever_filled_the_cache(tiny_data_dir,
                                                                             tmp_path):
  """A DRAEM validation volume's anomalies are seeded by the row's name: the same IXI file cached
  first under another name (listed twice, or renamed in the CSV) gives the same volume."""
  import dataclasses

  from configs import evaluate as evaluate_config
  from sadm_jax import config as config_lib
  from sadm_jax.data import cache as cache_lib, layout, splits
  from sadm_jax.evaluate import execute, passes as passes_lib, planning

  row = splits.read_split(layout.resolve_data_root(tiny_data_dir), "IXI_val_fold0")[0]
  config = config_lib.resolve(evaluate_config.get_config("tiny"))
  pre = config_lib.preprocess_config(config)
  draem_pass = passes_lib.Pass(planning.DRAEM_SET, "val", "val", {})
  images = []
  for first in (row, dataclasses.replace(row, name=row.name + "_renamed")):
    cache_dir = str(tmp_path / first.name)
    cache_lib.ensure_cached([first], cache_dir, pre)
    ev = execute.Evaluation.__new__(execute.Evaluation)
    ev.config, ev.cache = config, cache_lib.VolumeCache(cache_dir, pre)
    case = ev.case(draem_pass, row)
    assert case.name == row.name + "_draem"
    images.append((case.image, case.seg))
  np.testing.assert_array_equal(images[0][0], images[1][0])
  np.testing.assert_array_equal(images[0][1], images[1][1])


def test_an_evaluation_start_removes_what_killed_writes_left_hours_ago(tmp_path):
  """A write killed with SIGKILL left its hidden temporary file in the store for good."""
  import os
  import time
  split = tmp_path / "eval" / "cddpm" / "none" / "fold0" / "Brats21" / "val"
  split.mkdir(parents=True)
  old, young = split / ".v0.npz.k3j2.tmp.npz", split / ".v1.json.x8q1.tmp"
  for p in (old, young):
    p.write_text("partial")
  t = time.time() - 7 * 3600
  os.utime(old, (t, t))
  Store(str(tmp_path))
  assert not old.exists() and young.exists()  # a young one may be another host's, writing


def _counting_loads(monkeypatch, store_module):
  """Wraps the store's `np.load` so that each val map read is watched: returns a list whose one
  number becomes the most maps alive at once (held by the caller) when a map is read."""
  import weakref
  alive, most = [], [0]
  real = store_module.np.load

  class Watched:
    def __init__(self, z):
      self.z = z

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.z.close()

    @property
    def files(self):
      return self.z.files

    def __getitem__(self, key):
      a = self.z[key]
      if key == "anomaly":
        alive[:] = [r for r in alive if r() is not None]
        most[0] = max(most[0], len(alive))
        alive.append(weakref.ref(a))
      return a

  monkeypatch.setattr(store_module.np, "load", lambda path, *a, **k: Watched(real(path, *a, **k)))
  return most


@pytest.mark.parametrize("kind", ["val", "healthy_val"])
def test_tau_and_fpr_thresholds_read_one_val_map_at_a_time(tmp_path, monkeypatch, kind):
  """τ (and the healthy FPR thresholds) pool every val volume's voxels; the whole maps, labels
  and masks were all held at once too (2.6 times the maps' size at the peak: 24 GB for 5,000
  volumes of 96×96×50). They are read one at a time now, with the same thresholds."""
  import types

  import ml_collections

  from sadm_jax.evaluate import passes as passes_lib, run as run_lib, store as store_lib
  from sadm_jax.evaluate import thresholds

  store = Store(str(tmp_path))
  run = types.SimpleNamespace(method="cddpm", train_anomalies="none", fold="fold0", id="c")
  rng = np.random.default_rng(0)
  names = [f"v{i}" for i in range(8)]
  maps, gts, masks = [], [], []
  for n in names:
    maps.append(rng.random((2, 6, 6), dtype=np.float32))
    gts.append(rng.random((2, 6, 6)) > 0.7)
    masks.append(rng.random((2, 6, 6)) > 0.2)
    store.write(run, "Brats21", "val", {"name": n, "fingerprint": "fp"},
                {"anomaly": maps[-1], "gt": gts[-1], "mask": masks[-1]})
  ev = types.SimpleNamespace(
      runs=[run], store=store, faithful=False, fingerprint=lambda *a: "fp",
      config=ml_collections.ConfigDict({"evaluate": {"threshold_method": "exact"}}))
  p = passes_lib.Pass("Brats21", "val", kind,
                      {"c": [types.SimpleNamespace(name=n) for n in names]}, {"c": "all"})
  most = _counting_loads(monkeypatch, store_lib)
  got = run_lib.select_thresholds(ev, [p])["c"]
  assert most[0] <= 2, f"{most[0]} val maps held at once"
  if kind == "val":
    dice, tau = thresholds.select_threshold(maps, gts, masks)
    assert got["tau"] == {"Brats21": tau} and got["val_dice"] == {"Brats21": dice}
  else:
    want = thresholds.healthy_fpr_thresholds(maps, masks, [f for f, _ in run_lib.FPRS])
    assert got["fpr_thresholds"] == {name: want[f] for f, name in run_lib.FPRS}


def test_each_process_reads_its_share_of_the_stored_results(tmp_path, monkeypatch):
  """Before a pass, every process looked up every volume's stored results (each record, and each
  val map's fingerprint): the store's reads grew with volumes × processes (every host over the
  shared file system, each as long as one process alone). Each reads its share now, and the
  shares' answers are gathered in one collective: the same volumes to compute everywhere."""
  import types

  import jax
  import ml_collections

  from sadm_jax import distributed
  from sadm_jax.data.splits import Row
  from sadm_jax.evaluate import execute, passes as passes_lib, planning

  monkeypatch.setattr(execute.cache_lib, "entry_key", lambda row, cfg: row.img)
  runs = [planning.EvalRun("cddpm", "none", "fold0", 0, cddpm_key="k"),
          planning.EvalRun("sadm", "draem", "fold0", 0, cddpm_key="k", sadm_workdir="/s")]
  ev = execute.Evaluation.__new__(execute.Evaluation)
  ev.config = ml_collections.ConfigDict({"evaluate": {"write_nifti": False, "write_png": False}})
  ev.workdir, ev.runs, ev.store = str(tmp_path), runs, Store(str(tmp_path))
  ev.run_settings = {r.id: {"run": r.id} for r in runs}
  ev.medians, ev._volume_keys, ev.cache = {}, {}, types.SimpleNamespace(cfg=None)
  rows = [Row(f"v{i}", "Brats21_val", "Brats21", "val", i, 1, 0.0, f"/d/{i}.nii.gz",
              f"/d/{i}_m.nii.gz", f"/d/{i}_s.nii.gz", "/d/Brats21_val.csv") for i in range(10)]
  p = passes_lib.Pass("Brats21", "val", "val", {r.id: rows for r in runs})
  arrays = {"anomaly": np.zeros((1, 2, 2), np.float32), "gt": np.zeros((1, 2, 2), bool),
            "mask": np.ones((1, 2, 2), bool)}
  for i, row in enumerate(rows):  # some results stored (val: with their maps)
    for r in runs[:1 + i % 2] if i % 3 else ():
      ev.store.write(r, "Brats21", "val", {"name": row.name,
                                           "fingerprint": ev.fingerprint(r, "val", None, row)},
                     arrays)
  want = ev.scan([p], {}, "val")  # one process
  assert want[1] == 9 and len(want[0]) == 7

  reads = []
  real = Store.read
  monkeypatch.setattr(Store, "read", lambda self, *a, **k: reads.append(a) or real(self, *a, **k))
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  monkeypatch.setattr(jax, "process_index", lambda: 1)

  def gather(mine):  # processes 0 and 2 answer for their own shares
    what, obj = mine
    if what != "the val scan's results":
      return [mine] * 3
    seen = len(reads)
    shares = [[ev._missing(*v, {}) for v in volumes[k::3]] for k in (0, 2)]
    del reads[seen:]  # (their reads)
    return [[what, shares[0]], mine, [what, shares[1]]]
  volumes = [(p, pos, row, rs) for pos, row, rs in ev._volumes(p)]
  monkeypatch.setattr(distributed, "allgather_json", gather)
  reads.clear()
  items, cached = ev.scan([p], {}, "val")
  mine = [a for a in reads if a[3] in {row.name for row in rows[1::3]}]
  assert len(reads) == len(mine) == 2 * len(rows[1::3])  # its share only: 3 volumes × 2 runs
  assert cached == want[1]
  assert [(it.row.name, [r.id for r in it.runs]) for it in items] == [
      (it.row.name, [r.id for r in it.runs]) for it in want[0]]


def test_the_intensity_median_holds_the_training_brains_twice_at_most(tmp_path, monkeypatch):
  """The threshold baseline's median pooled every training volume's brain voxels, concatenated
  them, and np.median copied that again: three times the pooled voxels at the peak (10 GB for
  5,000 volumes of 96×96×50). The concatenation is the median's work array now."""
  import tracemalloc
  import types

  from configs import evaluate as evaluate_config
  from sadm_jax import config as config_lib
  from sadm_jax.evaluate import execute

  rng = np.random.default_rng(0)
  volumes = {f"/d/{i}.nii.gz": types.SimpleNamespace(
      image=rng.random((4, 30, 30), dtype=np.float32), mask=np.ones((4, 30, 30), np.uint8))
      for i in range(16)}
  rows = [types.SimpleNamespace(img=k, mask="m", seg=None) for k in volumes]
  monkeypatch.setattr(execute.cache_lib, "entry_key", lambda row, cfg: row.img)
  ev = execute.Evaluation.__new__(execute.Evaluation)
  ev.config = config_lib.resolve(evaluate_config.get_config("tiny"))
  ev.splits, ev.store, ev.medians = {"IXI_train_fold0": rows}, Store(str(tmp_path)), {}
  ev.cache = types.SimpleNamespace(load=lambda row: volumes[row.img])
  pooled = sum(v.image.nbytes for v in volumes.values())
  tracemalloc.start()
  try:
    median = ev.intensity_median(0)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert median == float(np.median(np.concatenate([v.image.ravel() for v in volumes.values()])))
  assert peak < 2.5 * pooled, peak / pooled


def test_a_dead_draem_worker_is_one_line_naming_the_volume(tiny_data_dir, tmp_path):
  """Behind accelerators the DRAEM set's anomalies are drawn in worker processes: one killed
  (the OOM killer) fails the evaluation with one line naming the volume, not the pool's
  traceback."""
  from concurrent.futures import Future
  from concurrent.futures.process import BrokenProcessPool

  from configs import evaluate as evaluate_config
  from sadm_jax import config as config_lib
  from sadm_jax.data import cache as cache_lib, layout, splits
  from sadm_jax.evaluate import execute, passes as passes_lib, planning
  from sadm_jax.utils.workers import WorkerDied

  row = splits.read_split(layout.resolve_data_root(tiny_data_dir), "IXI_val_fold0")[0]
  config = config_lib.resolve(evaluate_config.get_config("tiny"))
  pre = config_lib.preprocess_config(config)
  cache_lib.ensure_cached([row], str(tmp_path), pre)
  ev = execute.Evaluation.__new__(execute.Evaluation)
  ev.config, ev.cache = config, cache_lib.VolumeCache(str(tmp_path), pre)
  draem_pass = passes_lib.Pass(planning.DRAEM_SET, "val", "val", {})

  class DeadPool:
    def submit(self, fn, *args):
      f = Future()
      f.set_exception(BrokenProcessPool("a child process terminated abruptly"))
      return f
  ev._draem_pool = DeadPool()
  with pytest.raises(WorkerDied, match=rf"^DRAEM/{row.name}: the worker process drawing "
                                       r"its anomalies died"):
    ev.case(draem_pass, row)
