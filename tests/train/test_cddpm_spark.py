"""Stage I at the tiny config: the session's cDDPM and SparK runs, describe, encoder transfer, SIGKILL resume."""

import json
import os
import signal

import jax
import numpy as np
import pytest

from configs import cddpm as cddpm_config
from sadm_jax import main as main_lib
from tests.helpers import assert_same_run, largest_constant, metric_series, with_data


def test_tiny_cddpm_trains_and_validation_loss_falls(cddpm_8_dir):
  """The session's 8-step tiny cDDPM (tests/conftest.py, run by the CLI)."""
  workdir = cddpm_8_dir
  val = metric_series(workdir, "val/loss")
  assert [s for s, _ in val] == [4, 8]
  assert val[-1][1] < 0.8 * val[0][1], val
  train = metric_series(workdir)
  assert [s for s, _ in train] == list(range(1, 9)) and all(np.isfinite(v) for _, v in train)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]


def test_tiny_spark_pretrain_then_cddpm_from_it(tiny_data_dir, tiny_spark_dir, tmp_path):
  """The session's SparK run (4 steps, bf16 compute, tests/conftest.py) initialises a cDDPM."""
  losses = metric_series(tiny_spark_dir)
  assert losses[-1][0] == 4 and all(np.isfinite(v) for _, v in losses)
  c = with_data(cddpm_config.get_config("tiny"), tiny_data_dir)
  c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = 2
  c.model.encoder.pretrained_workdir = tiny_spark_dir
  from sadm_jax.train import cddpm, loop, sharding
  from sadm_jax.train.checkpoint import RunError
  from sadm_jax.train.runs import open_run
  task = cddpm.cddpm_task(c)
  trainer = loop.Trainer(c, task, sharding.make_mesh(c))
  v = jax.device_get(trainer.init_state())  # the training run's own initial state
  spark_run = open_run(tiny_spark_dir, expect="spark")
  assert spark_run.config.model.dtype == "bfloat16"
  sp = {"params": spark_run.variables["params"], "batch_stats": spark_run.variables["model_state"]}
  assert task.meta["pretrained_encoder"]["workdir"] == spark_run.workdir
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(sp["params"]))
  np.testing.assert_array_equal(v.params["encoder"]["backbone"]["conv1"]["kernel"],
                                sp["params"]["backbone"]["conv1"]["kernel"])
  np.testing.assert_array_equal(v.model_state["encoder"]["backbone"]["bn1"]["mean"],
                                sp["batch_stats"]["backbone"]["bn1"]["mean"])
  # The SparK weights are an argument of the init program, not constants baked into it.
  largest = max(a.size for a in jax.tree.leaves(sp["params"]["backbone"]))
  assert largest > 1000  # bigger than the schedule tables (1000 steps), which are constants
  hlo = trainer.init_program.lower(trainer.init_key, trainer.init_inputs).as_text()
  assert largest_constant(hlo) < largest
  # A workdir that is not a SparK run is an error, never a silently random encoder (Q8).
  c.model.encoder.pretrained_workdir = str(tmp_path / "nope")
  with pytest.raises(RunError, match="pretrained_workdir=.*nope: not a trained spark run"):
    cddpm.cddpm_task(c)
  # A resuming run never builds its initial state: the SparK run is not opened (it may have moved
  # or gone), and the state it restores into has the same structure.
  resumed = cddpm.cddpm_task(c, fresh=False)
  assert "pretrained_encoder" not in resumed.meta and resumed.init_inputs == ()
  shapes = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)
  assert shapes(loop.Trainer(c, resumed, sharding.make_mesh(c)).abstract_state.params) == \
      shapes(trainer.abstract_state.params)


def test_spark_stopped_and_resumed_is_the_run_never_stopped(tiny_data_dir, tiny_spark_dir,
                                                           tmp_path):
  """The session's SparK run (4 steps) trained here in two starts, 2 steps then 2 more: every
  metrics line, the final train state (random masks, BatchNorm statistics, AdamW state, bf16
  compute) and the best checkpoint are those of the run never stopped."""
  from configs import spark_pretrain
  c = with_data(spark_pretrain.get_config("tiny"), tiny_data_dir)  # the session run's config
  c.train.eval_every, c.train.checkpoint_every, c.model.dtype = 2, 4, "bfloat16"
  work = str(tmp_path / "spark")
  for steps in (2, 4):
    c.train.num_steps = steps
    assert main_lib.run_stage(c, work)["step"] == steps
  assert_same_run(work, tiny_spark_dir, 4)


def test_describe_writes_json(tmp_path):
  c = cddpm_config.get_config("tiny")
  c.stage = "describe"
  table = main_lib.run_stage(c, str(tmp_path))
  with open(tmp_path / "describe.json") as f:
    on_disk = json.load(f)
  assert set(on_disk) == {"encoder", "unet"}
  for name in ("encoder", "unet"):
    assert on_disk[name]["params"] == table[name]["params"] > 0
    assert on_disk[name]["gflops_per_slice"] > 0


def test_sigkill_and_resume_gives_identical_losses(killed_and_resumed, cddpm_8_dir):
  """Killed at step 5 and restarted, the run gives the losses of a run that was never
  interrupted: the session's 8-step run (same data, seed, learning rate and validation cadence;
  the checkpoints' cadence and synchronous/asynchronous writing change no number). The killed
  process was started for 16 steps and the restart asks for 8: the step count, which may change
  on resume, changes neither the schedule nor the data order. (The CLI runs are a background job
  of the session, tests/train/resume_jobs.py: the test process's 8 fake devices, so the restore
  is sharded, and the session's tiny train-step program.)"""
  work, outcome = killed_and_resumed
  assert outcome["killed_at"] == 5, outcome["killed_output_tail"]
  assert outcome["killed_returncode"] == -signal.SIGKILL, outcome["killed_output_tail"]
  assert outcome["returncode"] == 0, outcome["stderr"][-3000:]
  assert "resumed from checkpoint step" in outcome["stdout"]
  reference, resumed = cddpm_8_dir, os.path.join(work, "run")
  assert [s for s, _ in metric_series(resumed)] == list(range(1, 9))
  assert metric_series(resumed) == metric_series(reference)  # bit-identical on CPU
  assert metric_series(resumed, "val/loss") == metric_series(reference, "val/loss")
  # Every logged line (gradient norms too), the final train state (parameters, BatchNorm
  # statistics, Adam moments and count) and the best checkpoint are those of the run never killed.
  assert_same_run(resumed, reference, 8)


def test_a_spark_run_of_another_encoder_size_is_one_line_before_anything_compiles(monkeypatch):
  """Was: the cDDPM's init program raised the strict transfer's list of every mismatched leaf (87
  lines for encoder.width 8 -> 16), naming no setting."""
  import ml_collections
  from sadm_jax.train import cddpm as cddpm_lib, runs
  from configs import spark_pretrain
  spark_cfg = ml_collections.ConfigDict(spark_pretrain.get_config("tiny").to_dict())
  fake = runs.Run(workdir="/runs/spark", task="spark", config=spark_cfg, meta={}, step=4,
                  which="best", variables={"params": {}, "model_state": {}})
  monkeypatch.setattr(runs, "open_run", lambda *a, **k: fake)
  config = cddpm_config.get_config("tiny")
  config.model.encoder.pretrained_workdir = "/runs/spark"
  cddpm_lib._with_pretrained_encoder(config, None)  # the same encoder: accepted
  config.model.encoder.width = 16
  config.model.encoder.stage_sizes = (1, 1, 2, 1)
  with pytest.raises(ValueError) as e:
    cddpm_lib._with_pretrained_encoder(config, None)
  assert str(e.value) == (
      "--config.model.encoder.pretrained_workdir=/runs/spark: its SparK encoder does not fit this "
      "cDDPM's (model.encoder.width 8 there, 16 here; model.encoder.stage_sizes (1, 1, 1, 1) "
      "there, (1, 1, 2, 1) here); give the SparK run's encoder settings, or another SparK run")
