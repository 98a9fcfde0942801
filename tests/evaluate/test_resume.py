"""Resuming an evaluation: a stored result is reused only while everything it depends on is unchanged."""

from __future__ import annotations

import csv
import json
import os

import pytest

from sadm_jax import main as main_lib
from tests.evaluate.conftest import copy_data, edit_split, threshold_only


def _csv(workdir):
  with open(os.path.join(workdir, "report", "metrics.csv")) as f:
    return list(csv.DictReader(f))


def _median(workdir):
  with open(os.path.join(workdir, "eval", "threshold", "intensity_median_fold0.json")) as f:
    return json.load(f)["median"]


def test_the_threshold_baseline_is_recomputed_when_its_median_changes(tiny_data_dir, tmp_path):
  """The intensity baseline's maps |x − m|·M depend on m, the median of the IXI training brains:
  after IXI_train_fold0.csv lost two volumes, a rerun recomputes every threshold result and
  writes the metrics of a fresh evaluation (it reused the results of the old m)."""
  data = copy_data(tiny_data_dir, str(tmp_path / "data"))
  c = threshold_only(data)
  work = str(tmp_path / "work")
  assert main_lib.run_stage(c, work)["volumes_computed"] == 6
  before = _median(work)
  edit_split(data, "IXI_train_fold0.csv", lambda t: "".join(t.splitlines(True)[:-2]))
  again = main_lib.run_stage(c, work)
  assert _median(work) != before
  fresh = str(tmp_path / "fresh")
  main_lib.run_stage(c, fresh)
  assert _median(fresh) == _median(work)
  assert again["volumes_computed"] == 6 and again["volumes_cached"] == 0, again
  assert _csv(work) == _csv(fresh)


def test_the_threshold_baseline_uses_the_eroded_brain_mask_like_the_models(tiny_data_dir,
                                                                           tmp_path):
  """With `evaluate.erode_mask` the models' maps are 0 outside the eroded brain mask M; the
  intensity baseline's |x − m|·M used the un-eroded mask, so at the brain's rim it alone could
  score. Its stored val maps are now 0 outside the eroded mask too (and nonzero inside it)."""
  import glob

  import numpy as np

  from sadm_jax.evaluate import scoring
  data = copy_data(tiny_data_dir, str(tmp_path / "data"))
  c = threshold_only(data)
  c.evaluate.erode_mask = 1
  work = str(tmp_path / "work")
  main_lib.run_stage(c, work)
  maps = glob.glob(os.path.join(work, "eval", "threshold", "none", "*", "Brats21", "val", "*.npz"))
  assert maps
  for path in maps:
    with np.load(path) as z:
      a, mask = z["anomaly"], z["mask"] > 0
    eroded = scoring.erode_slice_major(mask, 1)
    assert (mask & ~eroded).any()  # the rim exists
    assert not a[~eroded].any() and a[eroded].any(), path


def test_a_volume_whose_files_changed_is_recomputed(tiny_data_dir, tmp_path):
  """A corrected label file (same path, new content) gives the volume a new cache entry: its
  stored results are not reused, and the metrics are those of a fresh evaluation."""
  import shutil
  data = copy_data(tiny_data_dir, str(tmp_path / "data"))
  c = threshold_only(data)
  work = str(tmp_path / "work")
  main_lib.run_stage(c, work)
  seg = os.path.join(data, "Data", "Test", "Brats21", "seg", "Brats21_test_000_seg.nii.gz")
  shutil.copyfile(seg.replace("_000_", "_001_"), seg)
  again = main_lib.run_stage(c, work)
  fresh = str(tmp_path / "fresh")
  main_lib.run_stage(c, fresh)
  assert (again["volumes_computed"], again["volumes_cached"]) == (1, 5), again
  assert _csv(work) == _csv(fresh)


def test_outputs_of_a_killed_run_with_other_settings_are_not_kept(tiny_data_dir, tmp_path,
                                                                  monkeypatch):
  """A volume's NIfTI files are written before its record. A run with another τ (bisection
  instead of the exact search) killed right after writing a volume's files left them next to the
  record of the first settings; back on those, the files must be the first settings' again."""
  import nibabel as nib
  import numpy as np

  from sadm_jax.evaluate import store as store_lib
  data = copy_data(tiny_data_dir, str(tmp_path / "data"))
  c = threshold_only(data)
  c.evaluate.write_png = False
  work = str(tmp_path / "work")
  main_lib.run_stage(c, work)
  pred = os.path.join(work, "report", "volumes", "threshold", "none", "fold0", "Brats21",
                      "Brats21_test_000_pred.nii.gz")
  want = np.asarray(nib.load(pred).dataobj)
  write = store_lib.Store.write

  def killed_after_the_outputs(self, run, set_name, split, rec, arrays=None):
    if split == "test":
      raise KeyboardInterrupt  # SIGKILL: nothing after this point happens
    return write(self, run, set_name, split, rec, arrays)

  other = threshold_only(data)
  other.evaluate.write_png, other.evaluate.threshold_method = False, "bisection"
  monkeypatch.setattr(store_lib.Store, "write", killed_after_the_outputs)
  with pytest.raises(KeyboardInterrupt):
    main_lib.run_stage(other, work)
  assert not np.array_equal(np.asarray(nib.load(pred).dataobj), want)  # the other τ's prediction
  monkeypatch.setattr(store_lib.Store, "write", write)
  main_lib.run_stage(c, work)
  np.testing.assert_array_equal(np.asarray(nib.load(pred).dataobj), want)


def test_results_of_a_program_compiled_otherwise_are_not_reused(tiny_data_dir, tiny_cddpm_dir,
                                                               tiny_sadm_dir, tmp_path):
  """A second SADM run in the evaluation puts a second SegUnet into the cDDPM's program, which
  then compiles with other XLA options on CPU (`VolumeProgram.compiler_options`: YNNPACK
  convolutions); its values differ in the last float32 bits (up to 4.7e-6 in the tiny runs'
  metrics, the cDDPM rows too). The cDDPM and first SADM run's stored results must then not be
  reused: a resumed evaluation would mix both programs' numbers, unlike a fresh one."""
  import shutil

  from sadm_jax import config as config_lib
  from sadm_jax.data import cache as cache_lib
  from sadm_jax.evaluate import execute, planning
  from tests.evaluate.conftest import evaluate_tiny_config

  copy = str(tmp_path / "sadm_copy")  # the same weights: a second SegUnet all the same
  shutil.copytree(tiny_sadm_dir, copy)

  def settings(sadm_dirs):
    c = config_lib.resolve(evaluate_tiny_config(tiny_data_dir, tiny_cddpm_dir, sadm_dirs))
    models = planning.Models(c)
    ev = execute.Evaluation(c, str(tmp_path / "w"), models, planning.plan_runs(c, models), {},
                            cache_lib.VolumeCache(config_lib.cache_dir(c),
                                                  config_lib.preprocess_config(c)))
    (program,) = [p for k, p in ev.programs.items() if k]
    return ev.run_settings, program.compiler_options

  one, options_one = settings([tiny_sadm_dir])
  two, options_two = settings([tiny_sadm_dir, copy])
  assert options_one is None and options_two  # CPU, the package's XLA defaults
  for rid in ("cddpm/none/fold0", "sadm/draem/fold0"):
    assert one[rid] != two[rid], rid


def test_results_of_another_machine_or_jax_release_are_not_reused(tiny_data_dir, tiny_cddpm_dir,
                                                                  tmp_path, monkeypatch):
  """An evaluation store resumed on another platform, device kind or JAX release recomputes its
  results (they differ in their last bits there) instead of mixing two machines' numbers."""
  from sadm_jax import config as config_lib
  from sadm_jax.data import cache as cache_lib
  from sadm_jax.evaluate import execute, planning
  from tests.evaluate.conftest import evaluate_tiny_config

  c = config_lib.resolve(evaluate_tiny_config(tiny_data_dir, tiny_cddpm_dir))
  models = planning.Models(c)
  runs = planning.plan_runs(c, models)
  cache = cache_lib.VolumeCache(config_lib.cache_dir(c), config_lib.preprocess_config(c))
  settings = lambda: execute.Evaluation(c, str(tmp_path / "w"), models, runs, {},
                                        cache).run_settings
  here = settings()
  assert settings() == here  # the same machine and release: the same fingerprints
  monkeypatch.setattr(execute.jax, "__version__", "0.0.1")
  other = settings()
  assert all(other[rid] != here[rid] for rid in here)
  assert {rid: {**s, "backend": None} for rid, s in other.items()} == \
      {rid: {**s, "backend": None} for rid, s in here.items()}
