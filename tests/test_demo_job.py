"""The demo main job end to end (`configs/demo.py:tiny`): every stage, the report, rerun skips all."""

from __future__ import annotations

import csv
import json
import math
import os

import nibabel as nib
import numpy as np
import pytest

from configs import demo as demo_config
from sadm_jax import demo_job
from sadm_jax import main as main_lib
from tests.helpers import metric_series


@pytest.fixture(scope="module")
def demo_run(demo_tiny_run):
  """(workdir, output) of `configs/demo.py:tiny` run by the CLI (started in the background with
  the session, tests/conftest.py)."""
  return demo_tiny_run


def _csv(workdir):
  with open(os.path.join(workdir, "report", "metrics.csv")) as f:
    return list(csv.DictReader(f))


def test_every_stage_ran_and_the_report_has_every_method_and_set(demo_run):
  workdir, output = demo_run
  for stage in ("cddpm", "sadm", "evaluate"):
    assert f"--- demo stage {stage}" in output
  for stage in ("cddpm", "sadm_draem"):  # 4 steps each, validated at steps 2 and 4
    assert metric_series(os.path.join(workdir, stage), "train/loss")[-1][0] == 4
    val = metric_series(os.path.join(workdir, stage), "val/loss")
    assert [s for s, _ in val] == [2, 4] and all(math.isfinite(v) for _, v in val)
  rows = _csv(workdir)
  got = {(r["method"], r["train_anomalies"], r["test_set"]) for r in rows}
  for method, anomalies in (("threshold", "none"), ("cddpm", "none"), ("sadm", "draem")):
    for s in ("Brats21", "ATLAS_v2", "WMH", "IXI"):
      assert (method, anomalies, s) in got
  for r in rows:
    assert int(r["n_volumes"]) == 1  # the tiny cohort: one test volume per set
    if r["test_set"] != "IXI":
      assert 0.0 <= float(r["dice"]) <= float(r["best_dice"]) + 1e-12 <= 1.0 + 1e-12
  with open(os.path.join(workdir, "report", "report.md")) as f:
    text = f.read()
  assert "| SADM | draem |" in text and "| cDDPM |" in text and "| Intensity threshold |" in text
  # The stages used the demo's own sub-workdirs and the cDDPM SADM froze is the evaluated one.
  with open(os.path.join(workdir, "eval", "models.json")) as f:
    runs = json.load(f)["runs"]
  sadm = [r for r in runs if r["method"] == "sadm"][0]
  cddpm = [r for r in runs if r["method"] == "cddpm"][0]
  assert sadm["cddpm_key"] == cddpm["cddpm_key"]
  assert cddpm["cddpm_workdir"] == os.path.join(os.path.abspath(workdir), "cddpm")


def test_summary_states_the_ordering_check_and_stage_times(demo_run):
  workdir, _ = demo_run
  with open(os.path.join(workdir, "demo_summary.json")) as f:
    summary = json.load(f)
  assert summary["ordering"]["test_set"] == "Brats21"
  assert set(summary["ordering"]["dice"]) == {"sadm", "cddpm", "threshold"}
  d = summary["ordering"]["dice"]
  assert summary["ordering"]["holds"] == (d["sadm"] > d["cddpm"] > d["threshold"])
  v = summary["ordering"]["val_dice"]
  assert set(v) == {"sadm", "cddpm", "threshold"}
  assert summary["ordering"]["holds_on_validation"] == (v["sadm"] > v["cddpm"] > v["threshold"])
  assert set(summary["seconds"]) >= {"cohort", "prepare", "cddpm", "sadm", "evaluate", "total"}


def test_volume_outputs_are_nifti_on_the_working_grid(demo_run):
  workdir, _ = demo_run
  out = os.path.join(workdir, "report", "volumes", "sadm", "draem", "fold0", "Brats21")
  files = sorted(os.listdir(out))
  nii = [f for f in files if f.endswith(".nii.gz")]
  assert nii and any(f.endswith(".png") for f in files)
  img = nib.load(os.path.join(out, nii[0]))
  assert img.shape == (64, 64, 8)
  assert np.allclose(np.linalg.norm(img.affine[:3, :3], axis=0), 2.0)  # 2 mm working grid


def test_rerun_skips_every_finished_stage(demo_run, capsys):
  workdir, _ = demo_run
  c = demo_config.get_config("tiny")
  result = main_lib.run_stage(c, workdir)
  assert set(result) == {"prepare", "cddpm", "sadm", "evaluate", "summary"}
  assert result["cddpm"]["step"] == 4 and result["sadm"]["step"] == 4
  assert math.isfinite(result["cddpm"]["best_val_loss"])
  assert math.isfinite(result["sadm"]["best_val_loss"])
  assert result["evaluate"]["volumes_computed"] == 0 and result["evaluate"]["volumes_cached"] > 0
  assert "step 1/4" not in capsys.readouterr().out  # no training step ran again


def test_ordering_check():
  rows = [{"method": "sadm", "test_set": "Brats21", "dice": 0.5},
          {"method": "cddpm", "test_set": "Brats21", "dice": 0.3},
          {"method": "threshold", "test_set": "Brats21", "dice": 0.1},
          {"method": "threshold", "test_set": "WMH", "dice": 0.9}]
  check = demo_job.ordering(rows)
  assert check["holds"] and check["dice"] == {"sadm": 0.5, "cddpm": 0.3, "threshold": 0.1}
  rows[1]["dice"] = 0.05
  assert not demo_job.ordering(rows)["holds"]
  assert not demo_job.ordering(rows[:1])["holds"]  # a missing method never "holds"
  # Two folds of SADM: their mean is compared.
  rows2 = rows + [{"method": "sadm", "test_set": "Brats21", "dice": 0.0}]
  assert demo_job.ordering(rows2)["dice"]["sadm"] == pytest.approx(0.25)


def test_ordering_check_on_validation():
  rows = [{"method": m, "test_set": "Brats21", "dice": d, "val_pooled_dice": v}
          for m, d, v in (("sadm", 0.5, 0.2), ("cddpm", 0.3, 0.25), ("threshold", 0.1, 0.05))]
  check = demo_job.ordering(rows)
  assert check["holds"] and not check["holds_on_validation"]  # a test-only win is flagged
  assert check["val_dice"] == {"sadm": 0.2, "cddpm": 0.25, "threshold": 0.05}
  rows[0]["val_pooled_dice"] = 0.3
  assert demo_job.ordering(rows)["holds_on_validation"]
  rows[2]["val_pooled_dice"] = ""  # a CSV row without the value: missing, never "holds"
  assert not demo_job.ordering(rows)["holds_on_validation"]


def test_stage_configs_share_everything_but_the_budget(tmp_path):
  c = demo_config.get_config()
  w = str(tmp_path)
  cd = demo_job.stage_config(c, "cddpm", w)
  sa = demo_job.stage_config(c, "sadm", w)
  ev = demo_job.stage_config(c, "evaluate", w)
  assert cd.stage == "cddpm" and cd.train.num_steps == c.demo.cddpm_steps
  assert cd.optimizer.learning_rate == c.demo.cddpm_learning_rate
  assert cd.model.encoder.pretrained_workdir == ""  # SparK off by default
  assert sa.sadm.cddpm_workdir == os.path.join(w, "cddpm") and sa.sadm.mode == "draem"
  assert sa.train.num_steps == c.demo.sadm_steps
  assert ev.evaluate.sadm_workdirs == (os.path.join(w, "sadm_draem"),)
  assert cd.model.unet.to_dict() == sa.model.unet.to_dict() == c.model.unet.to_dict()
  assert c.stage == "demo" and c.train.num_steps == 0  # the job's config is not modified
  c.demo.spark_steps = 3
  assert demo_job.stage_config(c, "cddpm", w).model.encoder.pretrained_workdir == \
      os.path.join(w, "spark")
  c.demo.sadm_steps = 0
  with pytest.raises(ValueError, match="demo.sadm_steps=0 must be >= 1"):
    demo_job.stage_config(c, "sadm", w)
  c.demo.sadm_steps = 1
  with pytest.raises(ValueError, match="unknown demo stage"):
    demo_job.stage_config(c, "nope", w)


def test_run_leaves_the_job_config_as_given(tmp_path, monkeypatch):
  """The generated cohort's DATA_DIR reaches the stages through their own configs; the config the
  user gave (locked, as the CLI passes it) is not changed by the run."""
  from sadm_jax import config as config_lib
  from sadm_jax.evaluate import run as evaluate_run
  from sadm_jax.train import cddpm, sadm
  c = demo_config.get_config()
  c.lock()
  before = c.to_json()
  seen = {}
  cohort = str(tmp_path / "cohort")
  monkeypatch.setattr(demo_job, "build_cohort", lambda config, workdir: cohort)
  monkeypatch.setattr(config_lib, "run_prepare",
                      lambda config, workdir: seen.setdefault("prepare", config.data.data_dir))
  for module, name in ((cddpm, "run_cddpm"), (sadm, "run_sadm"), (evaluate_run, "run")):
    monkeypatch.setattr(module, name, lambda config, workdir: seen.setdefault(
        config.stage, config.data.data_dir))
  monkeypatch.setattr(demo_job, "_read_rows", lambda workdir: [])
  demo_job.run(c, str(tmp_path / "w"))
  assert seen == {"prepare": cohort, "cddpm": cohort, "sadm": cohort, "evaluate": cohort}
  assert c.to_json() == before


class _Killed(BaseException):
  """Stands for a SIGKILL: nothing after it runs."""


def test_a_killed_rerun_leaves_no_summary_of_the_earlier_run(tmp_path, monkeypatch):
  """A rerun (e.g. with more steps) killed in a stage left the earlier run's demo_summary.json,
  whose ordering and stage times are not those of the models now in the workdir; it is removed
  when the run starts and written again at its end."""
  from sadm_jax import config as config_lib
  from sadm_jax.train import cddpm
  work = tmp_path / "w"
  work.mkdir()
  (work / "demo_summary.json").write_text('{"ordering": {"holds": true}}')
  monkeypatch.setattr(demo_job, "build_cohort", lambda config, workdir: str(tmp_path / "cohort"))
  monkeypatch.setattr(config_lib, "run_prepare", lambda config, workdir: {})

  def killed(config, workdir):
    raise _Killed()

  monkeypatch.setattr(cddpm, "run_cddpm", killed)
  with pytest.raises(_Killed):
    demo_job.run(demo_config.get_config(), str(work))
  assert not (work / "demo_summary.json").exists()
