"""Warnings for `--config.k=v` settings a stage and its modes never read (sadm_jax.ignored)."""

import os
import subprocess
import sys

import pytest

from configs import default
from sadm_jax import config as config_lib, ignored
from sadm_jax.sweeps import members as members_lib
from sadm_jax.sweeps.members import Member
from tests.helpers import REPO


def _config(stage, **values):
  c = default.get_config()
  c.stage = stage
  for key, value in values.items():
    section, field = key.rsplit(".", 1)
    config_lib.at(c, section)[field] = value
  return c


def test_every_rule_names_settings_of_the_base_config():
  c = default.get_config()
  for rule in ignored.RULES:
    for key in rule.keys:
      config_lib.at(c, key)  # a KeyError here: a misspelt rule that would never fire


@pytest.mark.parametrize("stage, values, given, expected", [
    ("sadm", {"sadm.weak_train_rows": (0, 4)}, ["sadm.weak_train_rows"],
     ["--config.sadm.weak_train_rows=(0, 4) has no effect: sadm.mode='draem' trains on IXI with "
      "synthetic anomalies; only the weak-supervision modes 'brats' and 'atlas' read the rows"]),
    ("sadm", {"sadm.mode": "brats", "anomaly.p_anomalous": 0.5,
              "anomaly.restrict_to_brain": True},
     ["sadm.mode", "anomaly.p_anomalous", "anomaly.restrict_to_brain"],
     ["--config.anomaly.p_anomalous=0.5 has no effect: sadm.mode='brats' trains on annotated "
      "lesions; only sadm.mode='draem' synthesises anomalies",
      "--config.anomaly.restrict_to_brain=True has no effect: sadm.mode='brats' trains on "
      "annotated lesions; only sadm.mode='draem' synthesises anomalies"]),
    ("sadm", {"sadm.use_cddpm": False, "sadm.cddpm_workdir": "runs/cddpm"},
     ["sadm.use_cddpm", "sadm.cddpm_workdir"],
     ["--config.sadm.cddpm_workdir='runs/cddpm' has no effect: sadm.use_cddpm=False trains a "
      "plain UNet on the input, with no cDDPM"]),
    ("sadm", {"sadm.use_residual": False, "sadm.frozen_train_mode": True},
     ["sadm.use_residual", "sadm.frozen_train_mode"],
     ["--config.sadm.frozen_train_mode=True has no effect: sadm.use_residual=False: the SegUnet "
      "sees the input only and the cDDPM never runs"]),
    ("evaluate", {"evaluate.lam": 0.3}, ["evaluate.lam"],
     ["--config.evaluate.lam=0.3 has no effect: evaluate.combination='sum'; only 'weighted' "
      "reads λ"]),
    ("evaluate", {"anomaly.faithful_uint8_wrap": True}, ["anomaly.faithful_uint8_wrap"],
     ["--config.anomaly.faithful_uint8_wrap=True has no effect: evaluate.test_sets has no "
      "'DRAEM' set, the only one with synthetic anomalies"]),
    ("spark", {"model.encoder.pretrained_workdir": "runs/spark"},
     ["model.encoder.pretrained_workdir"],
     ["--config.model.encoder.pretrained_workdir='runs/spark' has no effect: stage spark "
      "pretrains the encoder from scratch; stage cddpm reads this setting"]),
    # the demo and the reproduction give each run its own: was taken without a word
    ("demo", {"train.num_steps": 50, "data.data_dir": "/data"},
     ["train.num_steps", "data.data_dir", "demo.cddpm_steps"],
     [f"--config.{k}={v!r} has no effect: stage demo sets it for each of its runs (data: its "
      "synthetic cohort, demo.root; steps and learning rates: demo.<stage>_steps, "
      "demo.<stage>_learning_rate)" for k, v in (("data.data_dir", "/data"),
                                                 ("train.num_steps", 50))]),
    ("reproduce", {"sadm.mode": "brats"}, ["sadm.mode", "model.encoder.pretrained_workdir"],
     ["--config.sadm.mode='brats' has no effect: stage reproduce sets it for each of its runs "
      "(data: its synthetic cohort, demo.root; steps and learning rates: demo.<stage>_steps, "
      "demo.<stage>_learning_rate)"]),
])
def test_an_ignored_setting_is_named_with_its_reason(stage, values, given, expected):
  assert ignored.ignored(_config(stage, **values), given) == expected


@pytest.mark.parametrize("stage, values, given", [
    # read: the weak modes read their rows, DRAEM its anomalies, 'weighted' reads λ, ...
    ("sadm", {"sadm.mode": "atlas", "sadm.weak_train_rows": (0, 4)}, ["sadm.weak_train_rows"]),
    ("sadm", {"anomaly.p_anomalous": 0.5}, ["anomaly.p_anomalous"]),
    ("sadm", {"sadm.use_residual": False}, ["sadm.use_residual", "sadm.cddpm_workdir"]),
    ("sadm", {"sadm.frozen_train_mode": True}, ["sadm.frozen_train_mode"]),
    ("evaluate", {"evaluate.combination": "weighted", "evaluate.lam": 0.3}, ["evaluate.lam"]),
    ("evaluate", {"evaluate.test_sets": ("DRAEM",), "anomaly.faithful_uint8_wrap": True},
     ["anomaly.faithful_uint8_wrap"]),
    ("cddpm", {"model.encoder.pretrained_workdir": "runs/spark"},
     ["model.encoder.pretrained_workdir"]),
    # ignored, but set by a config file rather than by the user's flags: no warning
    ("sadm", {"sadm.weak_train_rows": (0, 4)}, []),
    ("evaluate", {"evaluate.lam": 0.3}, ["evaluate.combination"]),
])
def test_a_setting_that_is_read_or_not_given_gives_no_warning(stage, values, given):
  assert ignored.ignored(_config(stage, **values), given) == []


def test_override_keys_of_a_members_arguments():
  match = members_lib.OVERRIDE_RE.match
  assert [match(a).group(1) for a in ("--config.evaluate.lam=0.3", "--config.sadm.mode=brats")] \
      == ["evaluate.lam", "sadm.mode"]
  assert match("--workdir=w") is None


def test_a_sweep_member_is_warned_about_before_it_runs(capsys):
  """About its own overrides; the sweep's extra arguments go to every member, for those that
  read them (configs/sweeps/sadm_ablation.py: `-- --config.sadm.cddpm_workdir=C`)."""
  m = Member("no-cddpm", "configs/sadm_draem.py",
             ("--config.sadm.use_cddpm=False", "--config.evaluate.lam=0.3"))
  extra = ["--config.sadm.cddpm_workdir=runs/c"]
  members_lib.check_member_config(m, members_lib.member_config(m, "w", extra))
  assert capsys.readouterr().err == ""  # lam: a stage-sadm member does not evaluate
  m = Member("no-cddpm", "configs/sadm_draem.py",
             ("--config.sadm.use_cddpm=False", "--config.sadm.cddpm_workdir=runs/c"))
  members_lib.check_member_config(m, members_lib.member_config(m, "w", extra))
  assert capsys.readouterr().err == (
      "warning: member no-cddpm: --config.sadm.cddpm_workdir='runs/c' has no effect: "
      "sadm.use_cddpm=False trains a plain UNet on the input, with no cDDPM\n")


def test_the_command_line_warns_once_and_still_runs_the_stage(tmp_path):
  """The warning comes before the stage starts (here it stops at the empty data directory)."""
  (tmp_path / "data").mkdir()
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  res = subprocess.run(
      [sys.executable, "-m", "sadm_jax.main", "--config=configs/cddpm.py:tiny",
       f"--workdir={tmp_path / 'w'}", "--config.stage=evaluate", "--config.evaluate.lam=0.3",
       f"--config.data.data_dir={tmp_path / 'data'}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  lines = [l for l in res.stderr.splitlines() if l.startswith(("warning:", "error:"))]
  assert res.returncode == 2, res.stderr[-2000:]
  assert lines[0] == ("warning: --config.evaluate.lam=0.3 has no effect: "
                      "evaluate.combination='sum'; only 'weighted' reads λ")
  assert lines[1].startswith("error: ") and "no split directory found" in lines[1]
  assert len(lines) == 2


def test_stage_spark_does_not_check_the_pretrained_workdir_it_never_reads(tmp_path):
  from sadm_jax import validate_paths as validate
  c = _config("spark", **{"data.data_dir": str(tmp_path),
                          "model.encoder.pretrained_workdir": str(tmp_path / "gone")})
  validate.check_paths(c)  # stage cddpm refuses it (tests/test_cli_errors.py)
  c.stage = "cddpm"
  with pytest.raises(validate.ConfigError, match="pretrained_workdir=.*gone: no such directory"):
    validate.check_paths(c)
