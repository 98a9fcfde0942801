"""sadm_jax.utils.gc_tuning: the collector's threshold raised and import-time objects frozen, unless switched off."""

import gc
import os
import subprocess
import sys

import pytest

from benchmarks import gc_settings
from sadm_jax.utils import gc_tuning

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def collector():
  """Restores the collector's threshold after the test, and its frozen objects where the session
  had frozen them (it runs with the package's settings; gc_settings.measure unfreezes)."""
  before, frozen = gc.get_threshold(), gc.get_freeze_count() > 0
  yield
  gc.set_threshold(*before)
  if frozen:
    gc.freeze()


def test_switched_off_changes_nothing(collector):
  gc.set_threshold(700, 10, 10)
  assert gc_tuning.apply({"SADM_GC_DEFAULTS": "0"}) is False
  assert gc.get_threshold() == (700, 10, 10)


def test_raises_generation_0_threshold_and_freezes(collector):
  gc.set_threshold(700, 10, 10)
  alive = [[i] for i in range(1000)]  # objects alive now end up in the permanent generation
  assert gc_tuning.apply({}) is True
  assert gc.get_threshold() == (gc_tuning.GEN0_THRESHOLD, 10, 10)
  assert gc.get_freeze_count() >= len(alive)
  gc.set_threshold(10 * gc_tuning.GEN0_THRESHOLD, 5, 5)  # a higher setting is kept
  gc_tuning.apply({})
  assert gc.get_threshold() == (10 * gc_tuning.GEN0_THRESHOLD, 5, 5)


def test_benchmark_counts_fewer_collections_with_the_package_settings(collector, monkeypatch):
  def allocate():  # reference cycles, as tracing makes them
    for _ in range(60_000):
      a = []
      a.append(a)
  monkeypatch.setattr(gc_settings, "_trace_and_lower", allocate)
  res = gc_settings.measure(1)
  assert res["python"]["collections"] >= 60_000 // 700 // 2  # ≈ one per 700 new cycles
  assert res["package"]["collections"] <= 60_000 // gc_tuning.GEN0_THRESHOLD + 1
  assert gc.get_threshold() == gc_settings.DEFAULT_THRESHOLD  # measure() leaves Python's


def test_benchmark_refuses_bad_repeats_in_one_line_with_exit_2(tmp_path):
  out = tmp_path / "result.json"
  p = subprocess.run([sys.executable, "-m", "benchmarks.gc_settings", "--repeats", "0",
                      "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert (p.returncode, p.stdout, p.stderr) == (2, "", "error: --repeats=0 must be >= 1\n")
  assert not out.exists()


def test_the_cli_sets_the_collector_after_validation_only(collector, monkeypatch, tmp_path):
  """`python -m sadm_jax.main` runs `run_checked(..., tune_gc=True)`: the stage runs with the
  package's settings; in-process callers that do not ask keep theirs."""
  from configs import cddpm as cddpm_config
  from sadm_jax import main as main_lib, validate
  seen = []
  monkeypatch.setattr(validate, "validate", lambda *a: None)
  monkeypatch.setattr(main_lib, "run_stage", lambda c, w: seen.append(gc.get_threshold()))
  config = cddpm_config.get_config("tiny")
  gc.set_threshold(700, 10, 10)
  assert main_lib.run_checked(config, str(tmp_path)) == 0
  assert main_lib.run_checked(config, str(tmp_path), tune_gc=True) == 0
  assert seen == [(700, 10, 10), (gc_tuning.GEN0_THRESHOLD, 10, 10)]
  monkeypatch.setattr(validate, "validate", lambda *a: (_ for _ in ()).throw(ValueError("bad")))
  gc.set_threshold(700, 10, 10)
  assert main_lib.run_checked(config, str(tmp_path), tune_gc=True) == 2  # refused: not touched
  assert gc.get_threshold() == (700, 10, 10)
