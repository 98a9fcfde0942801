"""Stage I end to end at the tiny config: cDDPM and SparK train, describe, encoder transfer, SIGKILL resume."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import cddpm as cddpm_config, spark_pretrain
from sadm_jax import main as main_lib
from tests.data import fake_data
from tests.helpers import REPO, largest_constant, metric_series


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("dd"))
  fake_data.write_data_dir(root, n_ixi=12, n_patho=1)
  return root


def _tiny(module, data_dir, **train):
  c = module.get_config("tiny")
  c.data.data_dir = data_dir
  c.data.cache_dir = os.path.join(data_dir, "cache")
  for k, v in train.items():
    c.train[k] = v
  return c


@pytest.fixture(scope="module")
def cddpm_16(data_dir, tmp_path_factory):
  """(workdir, result) of a tiny cDDPM trained 16 steps in this process (validation every 4)."""
  workdir = str(tmp_path_factory.mktemp("cddpm_16"))
  c = _tiny(cddpm_config, data_dir, num_steps=16, eval_every=4, checkpoint_every=8)
  c.optimizer.learning_rate = 2e-3
  return workdir, main_lib.run_stage(c, workdir)


def test_tiny_cddpm_trains_and_validation_loss_falls(cddpm_16):
  workdir, res = cddpm_16
  val = metric_series(workdir, "val/loss")
  assert [s for s, _ in val] == [4, 8, 12, 16]
  assert val[-1][1] < 0.8 * val[0][1], val
  assert np.isfinite(res["train_loss"])
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["16", "8"]


def test_tiny_spark_pretrain_then_cddpm_from_it(data_dir, tmp_path):
  s = _tiny(spark_pretrain, data_dir, num_steps=4, eval_every=2, checkpoint_every=4)
  s.model.dtype = "bfloat16"  # mixed precision: bf16 compute, f32 parameters and optimiser state
  main_lib.run_stage(s, str(tmp_path / "spark"))
  losses = metric_series(str(tmp_path / "spark"))
  assert losses[-1][0] == 4 and all(np.isfinite(v) for _, v in losses)
  c = _tiny(cddpm_config, data_dir, num_steps=2, eval_every=2, checkpoint_every=2)
  c.model.encoder.pretrained_workdir = str(tmp_path / "spark")
  from sadm_jax.train import cddpm, loop, sharding
  from sadm_jax.train.checkpoint import RunError, open_run
  task = cddpm.cddpm_task(c)
  trainer = loop.Trainer(c, task, sharding.make_mesh(c))
  v = jax.device_get(trainer.init_state())  # the training run's own initial state
  spark_run = open_run(str(tmp_path / "spark"), expect="spark")
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


def _cmd(data_dir, workdir, steps=8):
  return [sys.executable, "-m", "sadm_jax.main", "--config=configs/cddpm.py:tiny",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          f"--config.data.cache_dir={os.path.join(data_dir, 'cache')}",
          f"--config.train.num_steps={steps}", "--config.train.checkpoint_every=2",
          "--config.train.eval_every=4", "--config.optimizer.learning_rate=0.002"]


def test_sigkill_and_resume_gives_identical_losses(data_dir, cddpm_16, tmp_path):
  """Killed at step 5 and restarted with the same command, the run gives the losses of a run that
  was never interrupted: the in-process 16-step run, whose first 8 steps are those of an 8-step
  run (same data, seed, learning rate and validation cadence; the step count changes neither the
  schedule nor the data order, and the checkpoint cadence changes no number)."""
  # The test process's 8 fake devices (the restore is sharded) and the session's tiny learning
  # rate: the in-process tiny runs' train-step program, so the compilation cache hits.
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  proc = None
  try:
    work = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(data_dir, work), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, process_group=0)
    killed_at = None
    deadline = time.time() + 600
    for line in proc.stdout:
      if line.startswith("step 5/8"):
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: grain workers too
        killed_at = 5
        break
      assert time.time() < deadline
    proc.wait(timeout=60)
    assert killed_at == 5 and proc.returncode == -signal.SIGKILL
    res = subprocess.run(_cmd(data_dir, work), cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from checkpoint step" in res.stdout
  finally:  # a failed test leaves no run (nor its workers) behind
    if proc is not None and proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  reference, resumed = cddpm_16[0], str(work)
  assert [s for s, _ in metric_series(resumed)] == list(range(1, 9))
  assert metric_series(resumed) == metric_series(reference)[:8]  # bit-identical on CPU
  assert metric_series(resumed, "val/loss") == metric_series(reference, "val/loss")[:2]
